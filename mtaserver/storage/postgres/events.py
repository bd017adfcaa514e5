"""The event log on PostgreSQL: the only writer of ``events``.

Every node appends to the one table; ``id`` is a sequence, so ids are unique across nodes
and increase in commit-ish order (a reader following ``after(last_id)`` may see a gap fill
in late by at most the transactions in flight; metrics counts tolerate that).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from mtaserver.model import Event, HitRow, Redaction, StoredEvent
from mtaserver.storage.common.events import erased_event, event_data
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


# A batch of opens and clicks as ONE statement over one JSON array (the SQLite owner's
# INSERT_HITS): the recipient's address, campaign and user joined in; keys whose value is
# null are left out of ``data``, as SQLite's json_patch does.
INSERT_HITS = """
INSERT INTO events(at, type, queue_id, recipient, data)
SELECT (h.v ->> 0)::float8, h.v ->> 1, h.v ->> 2, r.address,
       jsonb_strip_nulls(jsonb_build_object(
           'idx', (h.v ->> 3)::bigint, 'campaign', m.campaign, 'user', m."user",
           'user_agent', h.v ->> 4, 'client_ip', h.v ->> 5, 'machine', h.v -> 6,
           'reason', h.v ->> 7, 'proxy', h.v ->> 8, 'url', h.v ->> 9))::text
FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS h(v, n)
LEFT JOIN recipients r ON r.queue_id = h.v ->> 2 AND r.idx = (h.v ->> 3)::bigint
LEFT JOIN messages m ON m.id = r.queue_id
ORDER BY h.n
"""


async def erase_event(
    conn: Connection, event_id: int, red: Redaction, personal: Sequence[str]
) -> int:
    """Rewrite one event for a privacy erase (as the SQLite owner's ``erase_event``); the
    ``personal`` data keys of the erased person's own events go. 1 if the event exists."""
    row = await conn.fetchrow("SELECT recipient, data FROM events WHERE id=$1", event_id)
    if row is None:
        return 0
    new_recipient, new_data = erased_event(row[0], row[1], red, personal)
    await conn.execute(
        "UPDATE events SET recipient=$1, data=$2 WHERE id=$3", new_recipient, new_data, event_id
    )
    return 1


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

    async def page(
        self,
        *,
        after: int = 0,
        limit: int = 100,
        types: Sequence[str] = (),
        queue_id: str | None = None,
    ) -> list[StoredEvent]:
        """The feed: events after the cursor ``after``, in id order (ids only grow)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT id, at, type, queue_id, recipient, data FROM events WHERE id > $1 "
                "AND (cardinality($2::text[]) = 0 OR type = ANY($2::text[])) "
                "AND ($3::text IS NULL OR queue_id = $3) ORDER BY id LIMIT $4",
                after, list(types), queue_id or None, limit,
            )  # fmt: skip
        return [StoredEvent(int(r[0]), r[1], r[2], r[3], r[4], event_data(r[5])) for r in rows]

    async def insert_hits(self, rows: Sequence[HitRow]) -> None:
        """One batch of opens and clicks: one statement, one commit."""
        if rows:
            payload = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
            async with self.db.connection() as conn:
                await conn.execute(INSERT_HITS, payload)

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
        """Retention: delete up to ``limit`` events older than ``before``, except those a
        webhook has yet to deliver (at least once wins, as on SQLite: a row whose event is
        gone could never be sent)."""
        async with self.db.transaction() as conn:
            status = await conn.execute(
                "DELETE FROM events WHERE id IN (SELECT e.id FROM events e WHERE e.at < $1 "
                "AND NOT EXISTS (SELECT 1 FROM webhook_outbox o WHERE o.event_id = e.id "
                "AND o.state IN ('pending', 'waiting')) ORDER BY e.id LIMIT $2)",
                before,
                limit,
            )
        return int(status.split()[-1])
