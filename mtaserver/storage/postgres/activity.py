"""A contact's timeline on PostgreSQL: the messages an owner sent to an address and what
happened to each, oldest first, a page at a time (:mod:`mtaserver.storage.sqlite.activity`'s
query and answers, over the cluster's queue and event log, so any node shows every node's
sends). Read-only; the queue's and the event log's owners write those tables.
"""

from __future__ import annotations

from typing import Final

from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.sqlite.activity import PAGE, Activity

__all__ = ["Activity", "PgActivityStore"]

# $1 owner, $2 address, then the cursor (at, id, queue id) and the limit.
_SQL: Final = """
WITH mine AS (
    SELECT m.id, m.received_at, m.message_id, m.campaign, r.address
    FROM recipients r JOIN messages m ON m.id = r.queue_id
    WHERE r.address = $2 AND m."user" = $1
)
SELECT * FROM (
    SELECT received_at AS at, 0::bigint AS id, id AS queue_id, 'queued' AS type, message_id,
           campaign, NULL::text AS data
    FROM mine
    UNION ALL
    SELECT e.at, e.id, e.queue_id, e.type, mine.message_id, mine.campaign, e.data
    FROM mine JOIN events e ON e.queue_id = mine.id AND e.recipient = mine.address
    WHERE e.type <> 'accepted'
) t WHERE (at, id, queue_id COLLATE "C") > ($3::float8, $4::int8, $5::text)
ORDER BY at, id, queue_id COLLATE "C" LIMIT $6
"""


class PgActivityStore:
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    async def timeline(
        self, owner: str, address: str, *, after: tuple[float, int, str] = (-1.0, 0, ""),
        limit: int = 100,
    ) -> list[Activity]:  # fmt: skip
        addr = address.strip().lower()
        n = max(1, min(limit, PAGE))
        async with self.db.connection() as conn:
            rows = await conn.fetch(_SQL, owner, addr, *after, n)
        return [
            Activity(float(r[0]), int(r[1]), str(r[2]), str(r[3]), r[4], r[5], r[6]) for r in rows
        ]
