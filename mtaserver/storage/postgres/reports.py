"""Cohort numbers behind ``stats`` and the admin API's /stats on PostgreSQL: one read over
the cluster's queue and event log, the same numbers as :mod:`mtaserver.storage.sqlite.reports`
(what they mean is :mod:`mtaserver.tracking.stats`'s)."""

from __future__ import annotations

from mtaserver.model import Stats
from mtaserver.storage.common.reports import cohort_from_row, until_bound
from mtaserver.storage.postgres.db import PgDatabase

COHORT_SQL = """
WITH cohort AS (
    SELECT id FROM messages
    WHERE received_at >= $1 AND received_at < $2
      AND ($3::text IS NULL OR campaign = $3) AND ($4::text IS NULL OR "user" = $4)
),
ev AS (
    SELECT e.type AS type,
           e.queue_id || chr(31) ||
               coalesce(e.recipient, '#' || coalesce(e.data::jsonb ->> 'idx', '')) AS who,
           coalesce((e.data::jsonb ->> 'machine')::boolean, false) AS machine,
           e.data::jsonb ->> 'kind' AS kind
    FROM events e JOIN cohort c ON c.id = e.queue_id
    WHERE e.type IN ('delivered', 'deferred', 'bounced', 'complaint', 'unsubscribe',
                     'open', 'click')
)
SELECT
    (SELECT count(*) FROM cohort),
    (SELECT count(*) FROM recipients r JOIN cohort c ON c.id = r.queue_id),
    count(DISTINCT who) FILTER (WHERE type = 'delivered'),
    count(DISTINCT who) FILTER (WHERE type = 'deferred'),
    count(DISTINCT who) FILTER (WHERE type = 'bounced'),
    count(DISTINCT who) FILTER (WHERE type = 'bounced' AND kind = 'hard'),
    count(DISTINCT who) FILTER (WHERE type = 'complaint'),
    count(DISTINCT who) FILTER (WHERE type = 'unsubscribe'),
    count(DISTINCT who) FILTER (WHERE type = 'open' AND NOT machine),
    count(DISTINCT who) FILTER (WHERE type = 'click' AND NOT machine),
    count(*) FILTER (WHERE type = 'open' AND NOT machine),
    count(*) FILTER (WHERE type = 'click' AND NOT machine),
    count(*) FILTER (WHERE type = 'open' AND machine),
    count(*) FILTER (WHERE type = 'click' AND machine)
FROM ev
"""


class PgReports:
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    async def cohort(
        self, since: float, campaign: str | None, user: str | None, until: float
    ) -> Stats:
        """The numbers for messages accepted in ``[since, until)``."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow(COHORT_SQL, since, until_bound(until), campaign, user)
        return cohort_from_row(row)
