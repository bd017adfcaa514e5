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

from mtaserver.model import Event
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
