"""The event log: the only writer of the ``events`` table, one row per state change.

``emit`` waits until the events are committed; they ride in the next group commit with
whatever else is being written, so concurrent callers share one fsync. Stages that record
events together with a state change (the spool, the scheduler) write them in the same
transaction instead; the tracking endpoint batches its own hits (``tracking.recorder``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from mtaserver.model import Event, HitRow, Redaction, StoredEvent
from mtaserver.storage.common.events import erased_event, event_data
from mtaserver.storage.sqlite.db import Database


def event_row(event: Event) -> tuple[float, str, str | None, str | None, str]:
    return (event.at, event.type, event.queue_id, event.recipient, json.dumps(dict(event.data)))


def insert_events(conn: sqlite3.Connection, events: Sequence[Event]) -> range:
    """Insert ``events``; their ids, in order. Rows inserted back to back on the one writer
    connection, inside its transaction, get consecutive AUTOINCREMENT ids ending at
    ``last_insert_rowid()`` (rows a trigger inserts elsewhere do not change it)."""
    if not events:
        return range(0)
    conn.executemany(
        "INSERT INTO events(at, type, queue_id, recipient, data) VALUES (?,?,?,?,?)",
        [event_row(e) for e in events],
    )
    last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
    return range(last - len(events) + 1, last + 1)


# A whole batch is handed to SQLite as ONE JSON array bound to ONE statement: the writer
# thread then inserts every row inside a single sqlite3_step with the GIL released, instead
# of binding parameters row by row and fighting the event loop for the GIL each time. The
# recipient (address, then its message's campaign and user) is joined here, not looked up
# in Python; a recipient the queue no longer knows leaves them NULL. json_patch('{}', …)
# drops the null members of ``data``.
INSERT_HITS = """
INSERT INTO events(at, type, queue_id, recipient, data)
SELECT h.value ->> 0, h.value ->> 1, h.value ->> 2, r.address,
       json_patch('{}', json_object(
           'idx', h.value ->> 3, 'campaign', m.campaign, 'user', m.user,
           'user_agent', h.value ->> 4, 'client_ip', h.value ->> 5,
           'machine', json(h.value -> 6), 'reason', h.value ->> 7,
           'proxy', h.value ->> 8, 'url', h.value ->> 9))
FROM json_each(?) AS h
LEFT JOIN recipients r ON r.queue_id = h.value ->> 2 AND r.idx = h.value ->> 3
LEFT JOIN messages m ON m.id = r.queue_id
ORDER BY h.key
"""


def _drop_events(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
    """Old events, except those a webhook has yet to deliver (at least once wins).

    Ids grow with time, so the oldest events come first by id: the sweep walks from the
    lowest id and stops at the first event younger than the cutoff — no index on ``at`` to
    pay for on every insert. Events a webhook still owes are stepped over (at most
    ``10 x limit`` of them per batch).
    """
    ids: list[int] = []
    rows = conn.execute(
        "SELECT e.id, e.at, EXISTS (SELECT 1 FROM webhook_outbox o WHERE o.event_id = e.id "
        "AND o.state IN ('pending', 'waiting')) FROM events e ORDER BY e.id LIMIT ?",
        (limit * 11,),
    )
    for event_id, at, owed in rows:
        if at >= cutoff or len(ids) >= limit:
            break
        if not owed:
            ids.append(event_id)
    conn.executemany("DELETE FROM events WHERE id=?", [(i,) for i in ids])
    return len(ids)


def erase_event(
    conn: sqlite3.Connection, event_id: int, red: Redaction, personal: Sequence[str]
) -> int:
    """Rewrite one event for a privacy erase; the ``personal`` data keys of the erased
    person's own events (user agent, IP) go. 1 if the event exists."""
    row = conn.execute("SELECT recipient, data FROM events WHERE id=?", (event_id,)).fetchone()
    if row is None:
        return 0
    new_recipient, new_data = erased_event(row[0], row[1], red, personal)
    conn.execute(
        "UPDATE events SET recipient=?, data=? WHERE id=?", (new_recipient, new_data, event_id)
    )
    return 1


class EventLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def emit(self, *events: Event) -> None:
        await self.emit_many(events)

    async def emit_many(self, events: Sequence[Event]) -> None:
        batch = list(events)

        def op(conn: sqlite3.Connection) -> None:
            insert_events(conn, batch)

        await self.db.write(op)

    async def page(
        self,
        *,
        after: int = 0,
        limit: int = 100,
        types: Sequence[str] = (),
        queue_id: str | None = None,
    ) -> list[StoredEvent]:
        """The feed: events after the cursor ``after``, in id order (ids only grow)."""
        clauses = ["id > ?"]
        params: list[Any] = [after]
        if types:
            clauses.append(f"type IN ({','.join('?' * len(types))})")
            params.extend(types)
        if queue_id:
            clauses.append("queue_id = ?")
            params.append(queue_id)
        sql = (
            "SELECT id, at, type, queue_id, recipient, data FROM events "
            f"WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?"
        )

        def fn(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute(sql, (*params, limit)).fetchall()
            return [StoredEvent(r[0], r[1], r[2], r[3], r[4], event_data(r[5])) for r in rows]

        return await self.db.read(fn)

    async def last_id(self) -> int:
        """The id of the newest event (0 when there is none)."""

        def fn(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])

        return await self.db.read(fn)

    async def after(self, event_id: int, limit: int) -> list[tuple[int, str, str]]:
        """(id, type, data JSON) of up to ``limit`` events after ``event_id``, oldest first."""

        def fn(conn: sqlite3.Connection) -> list[tuple[int, str, str]]:
            return conn.execute(
                "SELECT id, type, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (event_id, limit),
            ).fetchall()

        return await self.db.read(fn)

    async def prune_events(self, before: float, limit: int) -> int:
        """Retention: delete up to ``limit`` events older than ``before``."""
        return await self.db.write(lambda conn: _drop_events(conn, before, limit))

    async def insert_hits(self, rows: Sequence[HitRow]) -> None:
        """One batch of opens and clicks: one statement, one group-committed write."""
        payload = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(INSERT_HITS, (payload,))

        await self.db.write(op)
