"""Operator operations on the shared queue (``mtaserver queue`` with backend = "postgresql").

The same operations as :mod:`mtaserver.storage.sqlite.queue.operator`, over every node's
mail: the summary and listings are the cluster's, and a retry, hold, release or delete
acts wherever the message was accepted (a leased recipient finishes its attempt first).
"""

from __future__ import annotations

from typing import Any

from mtaserver.clock import Clock
from mtaserver.model import FINAL_STATES_SQL, Event
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.events import insert_events
from mtaserver.storage.sqlite.queue.values import AGE_BUCKETS, QueueEntry, QueueSummary


def _rows(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


class PgOperatorOps:
    """Mixed into :class:`~mtaserver.storage.postgres.queue.PgQueue`."""

    db: PgDatabase
    _clock: Clock

    async def summary(self, now: float | None = None, top: int = 50) -> QueueSummary:
        t = self._clock.now() if now is None else now
        async with self.db.connection() as conn:
            by_state = await conn.fetch(
                "SELECT state, count(*) FROM recipients GROUP BY state ORDER BY state"
            )
            rows = await conn.fetch(
                "SELECT r.domain, $1 - m.received_at FROM recipients r JOIN messages m "
                f"ON m.id = r.queue_id WHERE r.state NOT IN {FINAL_STATES_SQL}",
                t,
            )
        per: dict[str, list[int]] = {}
        for domain, age in rows:
            counts = per.setdefault(domain, [0] * len(AGE_BUCKETS))
            for i, (limit, _) in enumerate(AGE_BUCKETS):
                if age < limit:
                    counts[i] += 1
                    break
        ordered = sorted(per.items(), key=lambda kv: (-sum(kv[1]), kv[0]))[:top]
        return QueueSummary(
            buckets=tuple(label for _, label in AGE_BUCKETS),
            rows=tuple((d, sum(c), tuple(c)) for d, c in ordered),
            by_state=tuple((str(r[0]), int(r[1])) for r in by_state),
        )

    async def list(
        self, *, domain: str | None = None, state: str | None = None, limit: int = 100,
        after: tuple[str, int] | None = None,
    ) -> list[QueueEntry]:  # fmt: skip
        """Recipients in queue order; by default only those not yet final."""
        clauses: list[str] = []
        params: list[Any] = []
        if domain:
            params.append(domain.lower())
            clauses.append(f"r.domain = ${len(params)}")
        if state:
            params.append(state)
            clauses.append(f"r.state = ${len(params)}")
        else:
            clauses.append(f"r.state NOT IN {FINAL_STATES_SQL}")
        if after:
            params.extend(after)
            clauses.append(
                f'(r.queue_id COLLATE "C", r.idx) > (${len(params) - 1}, ${len(params)})'
            )
        params.append(limit)
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT r.queue_id, r.idx, r.address, r.domain, r.state, r.attempts, "
                "r.next_attempt, r.last_reply, m.received_at, m.sender FROM recipients r "
                f"JOIN messages m ON m.id = r.queue_id WHERE {' AND '.join(clauses)} "
                f'ORDER BY r.queue_id COLLATE "C", r.idx LIMIT ${len(params)}',
                *params,
            )
        return [
            QueueEntry(r[0], int(r[1]), r[2], r[3], r[4], int(r[5]), r[6], r[7], r[8], r[9])
            for r in rows
        ]

    async def retry(self, queue_id: str | None, now: float | None = None) -> int:
        """Make queued recipients due now (one message, or all with ``None``)."""
        t = self._clock.now() if now is None else now
        async with self.db.transaction() as conn:
            if queue_id is None:
                status = await conn.execute(
                    "UPDATE recipients SET next_attempt=$1 WHERE state='queued'", t
                )
            else:
                status = await conn.execute(
                    "UPDATE recipients SET next_attempt=$1 WHERE state='queued' AND queue_id=$2",
                    t,
                    queue_id,
                )
        return _rows(status)

    async def delete(self, queue_id: str) -> int:
        """Remove a message and all its recipients; returns recipients removed."""
        now = self._clock.now()
        async with self.db.transaction() as conn:
            n = _rows(await conn.execute("DELETE FROM recipients WHERE queue_id=$1", queue_id))
            await conn.execute("DELETE FROM messages WHERE id=$1", queue_id)
            await insert_events(conn, [Event(type="deleted", at=now, queue_id=queue_id)])
        return n

    async def hold(self, queue_id: str) -> int:
        return await self._move(queue_id, "queued", "held")

    async def release(self, queue_id: str, now: float | None = None) -> int:
        return await self._move(
            queue_id, "held", "queued", self._clock.now() if now is None else now
        )

    async def _move(self, queue_id: str, src: str, dst: str, due: float | None = None) -> int:
        async with self.db.transaction() as conn:
            return _rows(
                await conn.execute(
                    "UPDATE recipients SET state=$1, next_attempt=coalesce($2, next_attempt) "
                    "WHERE queue_id=$3 AND state=$4",
                    dst,
                    due,
                    queue_id,
                    src,
                )
            )
