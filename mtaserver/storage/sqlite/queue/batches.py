"""Send batches (SendGrid's ``batch_id``): create, cancel, pause, resume, list.

A batch groups messages queued with its id. ``cancel`` makes every recipient not yet
delivered final (``suppressed`` with a "cancelled" reply and a ``cancelled`` event) — they
are never sent; ``pause`` holds them (the scheduler never claims held rows); removing the
status puts held rows back, still due at their own ``send_at``. Messages queued later with
the id get the batch's status at intake (see :mod:`.intake`). Leased recipients are in
flight and finish their attempt.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass

from mtaserver.clock import Clock
from mtaserver.model import Event
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import insert_events
from mtaserver.storage.sqlite.queue.intake import CANCELLED
from mtaserver.storage.sqlite.queue.maintenance import drop_body_if_done

STATUSES = ("pause", "cancel")


@dataclass(frozen=True, slots=True)
class BatchInfo:
    batch_id: str
    user: str
    created_at: float
    status: str | None  # None, "pause" or "cancel"


@dataclass(frozen=True, slots=True)
class BatchChange:
    """What a status change did: recipients cancelled, held or released."""

    batch: BatchInfo
    cancelled: int = 0
    held: int = 0
    released: int = 0


def new_batch_id() -> str:
    return secrets.token_urlsafe(24)


class BatchOps:
    """Mixed into :class:`~mtaserver.storage.sqlite.queue.Spool`."""

    db: Database
    _clock: Clock

    async def create_batch(self, user: str, now: float | None = None) -> BatchInfo:
        t = self._clock.now() if now is None else now
        info = BatchInfo(new_batch_id(), user, t, None)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO batches(id, user, created_at) VALUES (?,?,?)",
                (info.batch_id, user, t),
            )

        await self.db.write(op)
        return info

    async def batch(self, batch_id: str) -> BatchInfo | None:
        def fn(conn: sqlite3.Connection) -> BatchInfo | None:
            row = conn.execute(
                "SELECT id, user, created_at, status FROM batches WHERE id=?", (batch_id,)
            ).fetchone()
            return None if row is None else BatchInfo(*row)

        return await self.db.read(fn)

    async def list_batches(self, user: str) -> tuple[BatchInfo, ...]:
        """The user's batches that carry a status (SendGrid's scheduled_sends list)."""

        def fn(conn: sqlite3.Connection) -> tuple[BatchInfo, ...]:
            rows = conn.execute(
                "SELECT id, user, created_at, status FROM batches "
                "WHERE user=? AND status IS NOT NULL ORDER BY created_at, id",
                (user,),
            ).fetchall()
            return tuple(BatchInfo(*r) for r in rows)

        return await self.db.read(fn)

    async def set_batch_status(
        self, batch_id: str, status: str | None, now: float | None = None
    ) -> BatchChange | None:
        """Apply ``status`` ("cancel", "pause" or None to resume); None if no such batch.

        A cancelled batch stays cancelled for what it already cancelled: those recipients
        are final. Clearing the status lets messages queued later with the id go out.
        """
        if status is not None and status not in STATUSES:
            raise ValueError(f"batch status must be one of {STATUSES} or None, got {status!r}")
        t = self._clock.now() if now is None else now

        def op(conn: sqlite3.Connection) -> BatchChange | None:
            row = conn.execute(
                "SELECT id, user, created_at, status FROM batches WHERE id=?", (batch_id,)
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE batches SET status=?, status_at=? WHERE id=?", (status, t, batch_id)
            )
            info = BatchInfo(row[0], row[1], row[2], status)
            if status == "cancel":
                return BatchChange(info, cancelled=_cancel(conn, batch_id, t))
            if status == "pause":
                return BatchChange(info, held=_move(conn, batch_id, "queued", "held"))
            return BatchChange(info, released=_move(conn, batch_id, "held", "queued"))

        return await self.db.write(op)


_IN_BATCH = "queue_id IN (SELECT id FROM messages WHERE batch_id=?)"


def _move(conn: sqlite3.Connection, batch_id: str, src: str, dst: str) -> int:
    cur = conn.execute(
        f"UPDATE recipients SET state=? WHERE state=? AND {_IN_BATCH}", (dst, src, batch_id)
    )
    return cur.rowcount


def _cancel(conn: sqlite3.Connection, batch_id: str, now: float) -> int:
    rows = conn.execute(
        "SELECT queue_id, idx, address FROM recipients "
        f"WHERE state IN ('queued', 'held') AND {_IN_BATCH}",
        (batch_id,),
    ).fetchall()
    if not rows:
        return 0
    conn.executemany(
        "UPDATE recipients SET state='suppressed', body=NULL, last_reply=?, updated_at=? "
        "WHERE queue_id=? AND idx=?",
        [(CANCELLED.format(batch=batch_id), now, q, i) for q, i, _ in rows],
    )
    for qid in {q for q, _, _ in rows}:
        drop_body_if_done(conn, qid)
    insert_events(
        conn,
        [
            Event(type="cancelled", at=now, queue_id=q, recipient=a,
                  data=(("batch_id", batch_id), ("idx", i)))
            for q, i, a in rows
        ],
    )  # fmt: skip
    return len(rows)
