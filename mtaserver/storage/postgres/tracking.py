"""What the tracking recorder needs from storage, on PostgreSQL: the recipients that hits
name (looked up in the cluster's queue, so a link in mail sent by any node is recognised
by every node's tracking endpoint), and the event log for the hits themselves (written by
the events owner, :meth:`PgEventLog.insert_hits`)."""

from __future__ import annotations

from collections.abc import Sequence

from mtaserver.model import Key, TrackedRecipient
from mtaserver.storage.common.tracking import tracked
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.events import PgEventLog

# The recipients of a batch of (queue_id, idx) keys, with the time of their first delivery
# (one statement for the batch, like the SQLite owner's LOOKUP_TRACKED).
LOOKUP_TRACKED = """
SELECT r.queue_id, r.idx, r.address, m.sender, m.campaign, m."user", r.state, r.updated_at,
       (SELECT min(e.at) FROM events e WHERE e.queue_id = r.queue_id
        AND e.recipient = r.address AND e.type = 'delivered')
FROM unnest($1::text[], $2::bigint[]) AS k(queue_id, idx)
JOIN recipients r ON r.queue_id = k.queue_id AND r.idx = k.idx
JOIN messages m ON m.id = r.queue_id
"""


class PgTrackingStore:
    """What the tracking recorder stores and looks up."""

    def __init__(self, db: PgDatabase) -> None:
        self.db = db
        log = PgEventLog(db)
        self.emit = log.emit  # single events (unsubscribes), like every stage
        self.write_rows = log.insert_hits

    async def lookup(self, keys: Sequence[Key]) -> dict[Key, TrackedRecipient]:
        wanted = list(dict.fromkeys(keys))
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                LOOKUP_TRACKED, [k[0] for k in wanted], [int(k[1]) for k in wanted]
            )
        return tracked(rows)
