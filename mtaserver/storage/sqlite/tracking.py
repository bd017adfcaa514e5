"""What the tracking recorder needs from storage: the recipients hits name, and the log.

Lookups join the queue tables inside SQLite so one statement serves a whole batch of
keys; the hits themselves are written by the event log (``EventLog.insert_hits``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from mtaserver.model import Key, TrackedRecipient
from mtaserver.storage.common.tracking import tracked
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog

# The recipients of a batch of (queue_id, idx) keys, with the time of their first delivery:
# walking the recipient's own events (events_queue_recipient), not the whole message's (a
# campaign message may have a million opens).
LOOKUP_TRACKED = """
SELECT r.queue_id, r.idx, r.address, m.sender, m.campaign, m.user, r.state, r.updated_at,
       (SELECT min(e.at) FROM events e WHERE e.queue_id = r.queue_id
        AND e.recipient = r.address AND +e.type = 'delivered')
FROM json_each(?) AS k
JOIN recipients r ON r.queue_id = k.value ->> 0 AND r.idx = k.value ->> 1
JOIN messages m ON m.id = r.queue_id
"""


class SqlTrackingStore:
    """What the tracking recorder stores and looks up; events ride the group commit."""

    def __init__(self, db: Database) -> None:
        self.db = db
        log = EventLog(db)
        self.emit = log.emit  # single events (unsubscribes), like every stage
        self.write_rows = log.insert_hits

    async def lookup(self, keys: Sequence[Key]) -> dict[Key, TrackedRecipient]:
        # One statement for the whole batch, like the insert: the reader thread then holds
        # the GIL once per batch, not once per recipient.
        wanted = json.dumps(list(dict.fromkeys(keys)), separators=(",", ":"))

        def op(conn: sqlite3.Connection) -> dict[Key, TrackedRecipient]:
            return tracked(conn.execute(LOOKUP_TRACKED, (wanted,)))

        return await self.db.read(op)
