"""Idempotent answers of the HTTP send API: the only writer of the ``idempotency`` table.

A request carrying an ``Idempotency-Key`` header is answered once: its answer row is
written in the same transaction as its messages (:meth:`ApiIntake.commit`), so after a
crash either both are stored or neither. A retry finds the row and gets the first answer;
two copies racing each other collide on the primary key, and the loser's messages are
rolled back with it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from mtaserver.model import Event, PreparedMessage
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool


@dataclass(frozen=True, slots=True)
class IdemAnswer:
    """What a request was answered; ``fingerprint`` is a hash of its body."""

    key_id: str
    idem_key: str
    fingerprint: str
    status: int
    message_id: str
    body: str
    created_at: float


class _Duplicate(Exception):
    """Raised inside the write to roll the whole request back."""


def _insert(conn: sqlite3.Connection, a: IdemAnswer, stale_before: float) -> None:
    conn.execute(
        "DELETE FROM idempotency WHERE key_id=? AND idem_key=? AND created_at < ?",
        (a.key_id, a.idem_key, stale_before),
    )
    try:
        conn.execute(
            "INSERT INTO idempotency(key_id, idem_key, fingerprint, status, message_id, body, "
            "created_at) VALUES (?,?,?,?,?,?,?)",
            (a.key_id, a.idem_key, a.fingerprint, a.status, a.message_id, a.body, a.created_at),
        )
    except sqlite3.IntegrityError:
        raise _Duplicate from None


class ApiIntake:
    """Queues a request's messages and records its answer, in one transaction."""

    def __init__(self, db: Database, spool: Spool) -> None:
        self.db = db
        self.spool = spool

    async def lookup(self, key_id: str, idem_key: str, since: float) -> IdemAnswer | None:
        """The stored answer for this key, if it was given after ``since``."""

        def fn(conn: sqlite3.Connection) -> IdemAnswer | None:
            row = conn.execute(
                "SELECT key_id, idem_key, fingerprint, status, message_id, body, created_at "
                "FROM idempotency WHERE key_id=? AND idem_key=? AND created_at >= ?",
                (key_id, idem_key, since),
            ).fetchone()
            return None if row is None else IdemAnswer(*row)

        return await self.db.read(fn)

    async def commit(
        self,
        messages: Sequence[PreparedMessage],
        events: Sequence[Event],
        answer: IdemAnswer | None,
        *,
        stale_before: float = 0.0,
    ) -> IdemAnswer | None:
        """Queue every message (all or none) with ``answer``; returns None when stored.

        If another request with the same key committed first, nothing of this one is stored
        and the answer already on record is returned instead.
        """
        if answer is None:
            await self.spool.enqueue_many(messages, events)
            return None
        a = answer
        try:
            await self.spool.enqueue_many(
                messages, events, also=lambda conn: _insert(conn, a, stale_before)
            )
        except _Duplicate:
            return await self.lookup(a.key_id, a.idem_key, stale_before)
        return None

    async def purge(self, before: float, limit: int = 10_000) -> int:
        """Forget answers older than ``before`` (the idempotency window has passed)."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency "
                "WHERE created_at < ? LIMIT ?)",
                (before, limit),
            ).rowcount

        return await self.db.write(op)
