"""The event log: one row per state change worth keeping.

``emit`` waits until the events are committed; they ride in the next group commit with
whatever else is being written, so concurrent callers share one fsync. Stages that record
events together with a state change (the spool, the scheduler) write them in the same
transaction instead; the tracking endpoint batches its own hits (``tracking.recorder``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mtaserver.db import Database
from mtaserver.model import Event
from mtaserver.spool import insert_events


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
