"""Operator operations on the queue (the CLI and the admin API share these)."""

from __future__ import annotations

import sqlite3
from typing import Any

from mtaserver.clock import Clock
from mtaserver.model import FINAL_STATES_SQL, Event
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import insert_events
from mtaserver.storage.sqlite.queue.values import (
    AGE_BUCKETS,
    QueueEntry,
    QueueSummary,
)


class OperatorOps:
    """Mixed into :class:`~mtaserver.storage.sqlite.queue.Spool`."""

    db: Database
    _clock: Clock

    async def summary(self, now: float | None = None, top: int = 50) -> QueueSummary:
        t = self._clock.now() if now is None else now

        def fn(conn: sqlite3.Connection) -> QueueSummary:
            by_state = conn.execute(
                "SELECT state, count(*) FROM recipients GROUP BY state ORDER BY state"
            ).fetchall()
            rows = conn.execute(
                "SELECT r.domain, ? - m.received_at FROM recipients r JOIN messages m "
                f"ON m.id = r.queue_id WHERE r.state NOT IN {FINAL_STATES_SQL}",
                (t,),
            ).fetchall()
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
                by_state=tuple((s, n) for s, n in by_state),
            )

        return await self.db.read(fn)

    async def list(
        self, *, domain: str | None = None, state: str | None = None, limit: int = 100,
        after: tuple[str, int] | None = None,
    ) -> list[QueueEntry]:  # fmt: skip
        """Recipients in queue order; by default only those not yet final."""
        clauses: list[str] = []
        params: list[Any] = []
        if domain:
            clauses.append("r.domain = ?")
            params.append(domain.lower())
        if state:
            clauses.append("r.state = ?")
            params.append(state)
        else:
            clauses.append(f"r.state NOT IN {FINAL_STATES_SQL}")
        if after:
            clauses.append("(r.queue_id, r.idx) > (?, ?)")
            params.extend(after)
        where = " AND ".join(clauses)

        def fn(conn: sqlite3.Connection) -> list[QueueEntry]:
            rows = conn.execute(
                "SELECT r.queue_id, r.idx, r.address, r.domain, r.state, r.attempts, "
                "r.next_attempt, r.last_reply, m.received_at, m.sender FROM recipients r "
                f"JOIN messages m ON m.id = r.queue_id WHERE {where} "
                "ORDER BY r.queue_id, r.idx LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [QueueEntry(*row) for row in rows]

        return await self.db.read(fn)

    async def retry(self, queue_id: str | None, now: float | None = None) -> int:
        """Make queued recipients due now (one message, or all with ``None``)."""
        t = self._clock.now() if now is None else now

        def op(conn: sqlite3.Connection) -> int:
            if queue_id is None:
                cur = conn.execute(
                    "UPDATE recipients SET next_attempt=? WHERE state='queued'", (t,)
                )
            else:
                cur = conn.execute(
                    "UPDATE recipients SET next_attempt=? WHERE state='queued' AND queue_id=?",
                    (t, queue_id),
                )
            return cur.rowcount

        return await self.db.write(op)

    async def delete(self, queue_id: str) -> int:
        """Remove a message and all its recipients; returns recipients removed."""
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> int:
            n = conn.execute(
                "SELECT count(*) FROM recipients WHERE queue_id=?", (queue_id,)
            ).fetchone()[0]
            conn.execute("DELETE FROM recipients WHERE queue_id=?", (queue_id,))
            conn.execute("DELETE FROM messages WHERE id=?", (queue_id,))
            insert_events(conn, [Event(type="deleted", at=now, queue_id=queue_id)])
            return int(n)

        return await self.db.write(op)

    async def hold(self, queue_id: str) -> int:
        return await self._move(queue_id, "queued", "held")

    async def release(self, queue_id: str, now: float | None = None) -> int:
        return await self._move(
            queue_id, "held", "queued", self._clock.now() if now is None else now
        )

    async def _move(self, queue_id: str, src: str, dst: str, due: float | None = None) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE recipients SET state=?, next_attempt=coalesce(?, next_attempt) "
                "WHERE queue_id=? AND state=?",
                (dst, due, queue_id, src),
            )
            return cur.rowcount

        return await self.db.write(op)


# A message whose every recipient is final, the last since before the cutoff.
