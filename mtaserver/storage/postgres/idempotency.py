"""Idempotent answers of the HTTP send API on PostgreSQL: the only writer of ``idempotency``.

As on SQLite (:mod:`mtaserver.storage.sqlite.idempotency`), the answer row is written in
the transaction that queues the request's messages. Two nodes handling retries of one
request at once: the second INSERT waits on the first's row lock, finds the key taken
when the first commits (``ON CONFLICT DO NOTHING`` inserts nothing), and rolls its own
messages back; it then answers with the first node's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtaserver.model import Event, PreparedMessage
from mtaserver.storage.postgres.db import Connection, PgDatabase
from mtaserver.storage.postgres.queue import PgQueue
from mtaserver.storage.sqlite.idempotency import IdemAnswer

_COLUMNS = "key_id, idem_key, fingerprint, status, message_id, body, created_at"


class _Duplicate(Exception):
    """Raised inside the transaction to roll the whole request back."""


def _answer(row: Any) -> IdemAnswer:
    return IdemAnswer(str(row[0]), str(row[1]), str(row[2]), int(row[3]), str(row[4]),
                      str(row[5]), float(row[6]))  # fmt: skip


async def _insert(conn: Connection, a: IdemAnswer, stale_before: float) -> None:
    await conn.execute(
        "DELETE FROM idempotency WHERE key_id=$1 AND idem_key=$2 AND created_at < $3",
        a.key_id, a.idem_key, stale_before,
    )  # fmt: skip
    status = await conn.execute(
        f"INSERT INTO idempotency({_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7) "
        "ON CONFLICT (key_id, idem_key) DO NOTHING",
        a.key_id, a.idem_key, a.fingerprint, a.status, a.message_id, a.body, a.created_at,
    )  # fmt: skip
    if status.endswith(" 0"):
        raise _Duplicate


class PgApiIntake:
    """Queues a request's messages and records its answer, in one transaction."""

    def __init__(self, db: PgDatabase, queue: PgQueue) -> None:
        self.db = db
        self.queue = queue

    async def lookup(self, key_id: str, idem_key: str, since: float) -> IdemAnswer | None:
        """The stored answer for this key, if it was given after ``since``."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM idempotency "
                "WHERE key_id=$1 AND idem_key=$2 AND created_at >= $3",
                key_id, idem_key, since,
            )  # fmt: skip
        return None if row is None else _answer(row)

    async def commit(
        self,
        messages: Sequence[PreparedMessage],
        events: Sequence[Event],
        answer: IdemAnswer | None,
        *,
        stale_before: float = 0.0,
    ) -> IdemAnswer | None:
        """Queue every message (all or none) with ``answer``; returns None when stored, or
        the answer already on record when another request with the key committed first."""
        if answer is None:
            await self.queue.enqueue_many(messages, events)
            return None
        a = answer

        async def also(conn: Connection) -> None:
            await _insert(conn, a, stale_before)

        try:
            await self.queue.enqueue_many(messages, events, also=also)
        except _Duplicate:
            return await self.lookup(a.key_id, a.idem_key, stale_before)
        return None

    async def purge(self, before: float, limit: int = 10_000) -> int:
        """Forget answers older than ``before`` (the idempotency window has passed)."""
        async with self.db.transaction() as conn:
            status = await conn.execute(
                "DELETE FROM idempotency WHERE ctid IN (SELECT ctid FROM idempotency "
                "WHERE created_at < $1 LIMIT $2)",
                before, limit,
            )  # fmt: skip
        return int(status.split()[-1])
