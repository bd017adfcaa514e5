"""Send batches (SendGrid's ``batch_id``) on the shared queue: create, cancel, pause, resume.

The same meaning as :mod:`mtaserver.storage.sqlite.queue.batches`, across nodes: a cancel
or pause on one node acts on the batch's recipients whichever node accepted them (a
leased recipient finishes its attempt), and a node queuing later with the id reads the
batch's status in its enqueue transaction.
"""

from __future__ import annotations

from typing import Any

from mtaserver.clock import Clock
from mtaserver.model import FINAL_STATES_SQL, Event
from mtaserver.storage.postgres.db import Connection, PgDatabase
from mtaserver.storage.postgres.events import insert_events
from mtaserver.storage.sqlite.queue.batches import STATUSES, BatchChange, BatchInfo, new_batch_id
from mtaserver.storage.sqlite.queue.intake import CANCELLED

_IN_BATCH = "queue_id IN (SELECT id FROM messages WHERE batch_id=$1)"


def _info(row: Any) -> BatchInfo:
    return BatchInfo(str(row[0]), str(row[1]), float(row[2]), row[3])


class PgBatchOps:
    """Mixed into :class:`~mtaserver.storage.postgres.queue.PgQueue`."""

    db: PgDatabase
    _clock: Clock

    async def create_batch(self, user: str, now: float | None = None) -> BatchInfo:
        t = self._clock.now() if now is None else now
        info = BatchInfo(new_batch_id(), user, t, None)
        async with self.db.transaction() as conn:
            await conn.execute(
                'INSERT INTO batches(id, "user", created_at) VALUES ($1,$2,$3)',
                info.batch_id, user, t,
            )  # fmt: skip
        return info

    async def batch(self, batch_id: str) -> BatchInfo | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                'SELECT id, "user", created_at, status FROM batches WHERE id=$1', batch_id
            )
        return None if row is None else _info(row)

    async def list_batches(self, user: str) -> tuple[BatchInfo, ...]:
        """The user's batches that carry a status (SendGrid's scheduled_sends list)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                'SELECT id, "user", created_at, status FROM batches '
                'WHERE "user"=$1 AND status IS NOT NULL ORDER BY created_at, id',
                user,
            )
        return tuple(_info(r) for r in rows)

    async def set_batch_status(
        self, batch_id: str, status: str | None, now: float | None = None
    ) -> BatchChange | None:
        """Apply ``status`` ("cancel", "pause" or None to resume); None if no such batch."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"batch status must be one of {STATUSES} or None, got {status!r}")
        t = self._clock.now() if now is None else now
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                'SELECT id, "user", created_at, status FROM batches WHERE id=$1 FOR UPDATE',
                batch_id,
            )
            if row is None:
                return None
            await conn.execute(
                "UPDATE batches SET status=$1, status_at=$2 WHERE id=$3", status, t, batch_id
            )
            info = BatchInfo(row[0], row[1], row[2], status)
            if status == "cancel":
                return BatchChange(info, cancelled=await _cancel(conn, batch_id, t))
            if status == "pause":
                return BatchChange(info, held=await _move(conn, batch_id, "queued", "held"))
            return BatchChange(info, released=await _move(conn, batch_id, "held", "queued"))


async def _move(conn: Connection, batch_id: str, src: str, dst: str) -> int:
    status = await conn.execute(
        f"UPDATE recipients SET state=$2 WHERE state=$3 AND {_IN_BATCH}", batch_id, dst, src
    )
    return int(status.split()[-1])


async def _cancel(conn: Connection, batch_id: str, now: float) -> int:
    rows = await conn.fetch(
        "UPDATE recipients SET state='suppressed', body=NULL, last_reply=$2, updated_at=$3 "
        f"WHERE state IN ('queued', 'held') AND {_IN_BATCH} RETURNING queue_id, idx, address",
        batch_id, CANCELLED.format(batch=batch_id), now,
    )  # fmt: skip
    if not rows:
        return 0
    rows = sorted(rows, key=lambda r: (r[0], r[1]))
    await conn.execute(
        "UPDATE messages m SET body = NULL WHERE m.id = ANY($1::text[]) AND m.body IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.queue_id = m.id "
        f"AND r.state NOT IN {FINAL_STATES_SQL})",
        sorted({r[0] for r in rows}),
    )
    await insert_events(
        conn,
        [
            Event(type="cancelled", at=now, queue_id=q, recipient=a,
                  data=(("batch_id", batch_id), ("idx", i)))
            for q, i, a in rows
        ],
    )  # fmt: skip
    return len(rows)
