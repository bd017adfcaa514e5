"""The event log on PostgreSQL: the only writer of ``events``.

Every node appends to the one table; ``id`` is a sequence, so ids are unique across nodes
and increase in commit-ish order (a reader following ``after(last_id)`` may see a gap fill
in late by at most the transactions in flight; metrics counts tolerate that).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from mtaserver.model import Event
from mtaserver.storage.postgres.db import Connection, PgDatabase


def insert_from_arrays(first: int) -> str:
    """The INSERT of events from five array parameters ``$first``…``$first+4`` (at, type,
    queue_id, recipient, data JSON): the last statement of the queue's one-statement
    enqueue, kept here with the table it writes."""
    p = [f"${first + i}" for i in range(5)]
    return (
        "INSERT INTO events(at, type, queue_id, recipient, data) "
        f"SELECT * FROM unnest({p[0]}::float8[], {p[1]}::text[], {p[2]}::text[], "
        f"{p[3]}::text[], {p[4]}::text[])"
    )


async def insert_events(conn: Connection, events: Sequence[Event]) -> list[int]:
    """Insert ``events`` inside the caller's transaction; their ids, in order."""
    if not events:
        return []
    rows = await conn.fetch(
        "INSERT INTO events(at, type, queue_id, recipient, data) "
        "SELECT * FROM unnest($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[]) "
        "RETURNING id",
        [e.at for e in events],
        [e.type for e in events],
        [e.queue_id for e in events],
        [e.recipient for e in events],
        [json.dumps(dict(e.data)) for e in events],
    )
    return [int(r[0]) for r in rows]


class PgEventLog:
    """The cluster's one event log (what metrics and the CLI read)."""

    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    async def emit(self, *events: Event) -> None:
        await self.emit_many(events)

    async def emit_many(self, events: Sequence[Event]) -> None:
        if events:
            async with self.db.transaction() as conn:
                await insert_events(conn, events)

    async def last_id(self) -> int:
        async with self.db.connection() as conn:
            return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM events"))

    async def after(self, event_id: int, limit: int) -> list[tuple[int, str, str]]:
        """(id, type, data JSON) of up to ``limit`` events after ``event_id``, oldest first."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT id, type, data FROM events WHERE id > $1 ORDER BY id LIMIT $2",
                event_id,
                limit,
            )
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def for_queue_id(self, queue_id: str) -> list[tuple[str, str | None, str]]:
        """(type, recipient, data JSON) of a message's events, oldest first."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT type, recipient, data FROM events WHERE queue_id=$1 ORDER BY id", queue_id
            )
        return [(str(r[0]), r[1], str(r[2])) for r in rows]

    async def prune_events(self, before: float, limit: int) -> int:
        """Retention: delete up to ``limit`` events older than ``before``."""
        async with self.db.transaction() as conn:
            status = await conn.execute(
                "DELETE FROM events WHERE id IN "
                "(SELECT id FROM events WHERE at < $1 ORDER BY id LIMIT $2)",
                before,
                limit,
            )
        return int(status.split()[-1])
