"""Reads that join the queue and the event log: the cohort numbers behind ``stats``.

One statement on the read connection; what the numbers mean is documented in
:mod:`mtaserver.tracking.stats`.
"""

from __future__ import annotations

import sqlite3

from mtaserver.model import Stats
from mtaserver.storage.common.reports import cohort_from_row, until_bound
from mtaserver.storage.sqlite.db import Database

COHORT_SQL = """
WITH cohort AS (
    SELECT id FROM messages
    WHERE received_at >= :since AND received_at < :until
      AND (:campaign IS NULL OR campaign = :campaign)
      AND (:user IS NULL OR user = :user)
),
ev AS (
    SELECT e.type AS type,
           e.queue_id || char(31) ||
               coalesce(e.recipient, '#' || coalesce(json_extract(e.data, '$.idx'), '')) AS who,
           coalesce(json_extract(e.data, '$.machine'), 0) AS machine,
           json_extract(e.data, '$.kind') AS kind
    FROM events e JOIN cohort c ON c.id = e.queue_id
    WHERE e.type IN ('delivered', 'deferred', 'bounced', 'complaint', 'unsubscribe',
                     'open', 'click')
)
SELECT
    (SELECT count(*) FROM cohort),
    (SELECT count(*) FROM recipients r JOIN cohort c ON c.id = r.queue_id),
    count(DISTINCT CASE WHEN type = 'delivered' THEN who END),
    count(DISTINCT CASE WHEN type = 'deferred' THEN who END),
    count(DISTINCT CASE WHEN type = 'bounced' THEN who END),
    count(DISTINCT CASE WHEN type = 'bounced' AND kind = 'hard' THEN who END),
    count(DISTINCT CASE WHEN type = 'complaint' THEN who END),
    count(DISTINCT CASE WHEN type = 'unsubscribe' THEN who END),
    count(DISTINCT CASE WHEN type = 'open' AND machine = 0 THEN who END),
    count(DISTINCT CASE WHEN type = 'click' AND machine = 0 THEN who END),
    sum(type = 'open' AND machine = 0),
    sum(type = 'click' AND machine = 0),
    sum(type = 'open' AND machine <> 0),
    sum(type = 'click' AND machine <> 0)
FROM ev
"""


def cohort_stats(
    conn: sqlite3.Connection,
    since: float = 0.0,
    campaign: str | None = None,
    user: str | None = None,
    until: float = float("inf"),
) -> Stats:
    row = conn.execute(
        COHORT_SQL,
        {
            "since": since,
            "until": until_bound(until),
            "campaign": campaign,
            "user": user,
        },
    ).fetchone()
    return cohort_from_row(row)


class Reports:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def cohort(
        self, since: float, campaign: str | None, user: str | None, until: float
    ) -> Stats:
        """The numbers for messages accepted in ``[since, until)`` (on a read connection)."""
        return await self.db.read(lambda conn: cohort_stats(conn, since, campaign, user, until))
