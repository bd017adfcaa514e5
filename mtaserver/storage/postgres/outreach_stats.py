"""Per-campaign and per-trigger-step numbers on PostgreSQL: what was queued, and what
became of it — the same reports as :mod:`mtaserver.storage.sqlite.outreach_stats`.

Read-only over tables other owners write. A campaign's or a step's messages are the
``queue_id`` of its rows (``campaign_recipients`` queued, ``journey_steps`` fired), each
written in the transaction that queued the message, whichever node fed it; what happened
to each is read from the cluster's event log by its ``queue_id`` index. ``events.data`` is
JSON text here, read with ``::jsonb``; a ``machine`` flag counts as SQLite's
``json_extract(...) <> 0`` does (absent, ``0``, ``false`` or ``null``: a person).
"""

from __future__ import annotations

from typing import Final

from mtaserver.storage.common import outreach_stats as shared
from mtaserver.storage.common.outreach_stats import CampaignReport, SendStats, TriggerReport
from mtaserver.storage.postgres.db import Connection, PgDatabase

__all__ = ["PgOutreachStats", "campaign_report", "trigger_report"]

# One row per message a campaign's runs (fired since $2) queued: (group, queue id).
_CAMPAIGN_SENDS: Final = """
SELECT cr.run_id AS grp, cr.queue_id AS qid
FROM campaign_runs r JOIN campaign_recipients cr ON cr.run_id = r.id
WHERE r.campaign_id = $1 AND r.fire_at >= $2 AND cr.state = 'queued'
  AND cr.queue_id IS NOT NULL
"""
_TRIGGER_SENDS: Final = """
SELECT s.step AS grp, s.queue_id AS qid
FROM journey_steps s
WHERE s.trigger_id = $1 AND s.updated_at >= $2 AND s.state = 'fired'
  AND s.queue_id IS NOT NULL
"""
_COUNTS: Final = """
ev AS (
    SELECT s.grp AS grp, e.type AS type, e.queue_id AS qid,
           coalesce(e.data::jsonb -> 'machine', '0'::jsonb)
               NOT IN ('0'::jsonb, 'false'::jsonb, 'null'::jsonb) AS machine
    FROM sends s JOIN events e ON e.queue_id = s.qid
    WHERE e.type IN ('suppressed', 'delivered', 'deferred', 'bounced', 'open', 'click',
                     'unsubscribe', 'complaint')
)
SELECT g.grp, g.n,
       coalesce(x.suppressed, 0), coalesce(x.delivered, 0), coalesce(x.deferred, 0),
       coalesce(x.human_o, 0), coalesce(x.machine_o, 0), coalesce(x.uh_o, 0),
       coalesce(x.um_o, 0), coalesce(x.human_c, 0), coalesce(x.machine_c, 0),
       coalesce(x.uh_c, 0), coalesce(x.um_c, 0), coalesce(x.unsub, 0),
       coalesce(x.complaints, 0)
FROM (SELECT grp, count(*) AS n FROM sends GROUP BY grp) g
LEFT JOIN (
    SELECT grp,
        count(DISTINCT qid) FILTER (WHERE type = 'suppressed') AS suppressed,
        count(DISTINCT qid) FILTER (WHERE type = 'delivered') AS delivered,
        count(DISTINCT qid) FILTER (WHERE type = 'deferred') AS deferred,
        count(*) FILTER (WHERE type = 'open' AND NOT machine) AS human_o,
        count(*) FILTER (WHERE type = 'open' AND machine) AS machine_o,
        count(DISTINCT qid) FILTER (WHERE type = 'open' AND NOT machine) AS uh_o,
        count(DISTINCT qid) FILTER (WHERE type = 'open' AND machine) AS um_o,
        count(*) FILTER (WHERE type = 'click' AND NOT machine) AS human_c,
        count(*) FILTER (WHERE type = 'click' AND machine) AS machine_c,
        count(DISTINCT qid) FILTER (WHERE type = 'click' AND NOT machine) AS uh_c,
        count(DISTINCT qid) FILTER (WHERE type = 'click' AND machine) AS um_c,
        count(DISTINCT qid) FILTER (WHERE type = 'unsubscribe') AS unsub,
        count(DISTINCT qid) FILTER (WHERE type = 'complaint') AS complaints
    FROM ev GROUP BY grp
) x ON x.grp = g.grp
"""
# Each bounced message once, by its latest bounce event.
_BOUNCES: Final = """
last AS (
    SELECT s.grp AS grp, max(e.id) AS id
    FROM sends s JOIN events e ON e.queue_id = s.qid
    WHERE e.type = 'bounced'
    GROUP BY s.grp, e.queue_id
)
SELECT l.grp, coalesce(e.data::jsonb ->> 'kind', 'soft'),
       coalesce(e.data::jsonb ->> 'category', 'other'),
       coalesce(e.data::jsonb ->> 'reason', 'undefined'), count(*)
FROM last l JOIN events e ON e.id = l.id
GROUP BY 1, 2, 3, 4
"""
CAMPAIGN_COUNTS: Final = "WITH sends AS (" + _CAMPAIGN_SENDS + ")," + _COUNTS
CAMPAIGN_BOUNCES: Final = "WITH sends AS (" + _CAMPAIGN_SENDS + ")," + _BOUNCES
TRIGGER_COUNTS: Final = "WITH sends AS (" + _TRIGGER_SENDS + ")," + _COUNTS
TRIGGER_BOUNCES: Final = "WITH sends AS (" + _TRIGGER_SENDS + ")," + _BOUNCES
# The rows behind each group that did not (or not yet) send: skipped by reason, pending.
CAMPAIGN_ROWS: Final = """
SELECT r.id, r.fire_at, r.status, r.audience, cr.state,
       CASE WHEN cr.state = 'skipped' THEN coalesce(cr.reason, '') END, count(cr.run_id)
FROM campaign_runs r LEFT JOIN campaign_recipients cr ON cr.run_id = r.id
WHERE r.campaign_id = $1 AND r.fire_at >= $2
GROUP BY 1, 5, 6 ORDER BY r.fire_at, r.id
"""
# A trigger step's reason is free text ("refused: 550 ..."): grouped by its first word.
TRIGGER_ROWS: Final = """
SELECT step, state,
       CASE WHEN state = 'skipped' THEN split_part(coalesce(reason, ''), ':', 1) END,
       count(*)
FROM journey_steps
WHERE trigger_id = $1 AND updated_at >= $2
GROUP BY 1, 2, 3
"""


async def _send_stats(
    conn: Connection, counts: str, bounces: str, group: int, since: float
) -> dict[int, SendStats]:
    return shared.send_stats(
        await conn.fetch(bounces, group, since), await conn.fetch(counts, group, since)
    )


async def campaign_report(
    conn: Connection, owner: str, name: str, since: float = 0.0
) -> CampaignReport | None:
    """The numbers of ``owner``'s campaign ``name``, run by run (runs fired since
    ``since``); None when there is no such campaign."""
    found = await conn.fetchrow(
        "SELECT id, status FROM campaigns WHERE owner = $1 AND name = $2", owner, name
    )
    if found is None:
        return None
    cid = int(found[0])
    sends = await _send_stats(conn, CAMPAIGN_COUNTS, CAMPAIGN_BOUNCES, cid, since)
    runs = shared.run_stats(await conn.fetch(CAMPAIGN_ROWS, cid, since), sends)
    return CampaignReport(owner, name, str(found[1]), runs)


async def trigger_report(
    conn: Connection, owner: str, name: str, since: float = 0.0
) -> TriggerReport | None:
    """The numbers of ``owner``'s trigger ``name``, step by step; None when there is none."""
    found = await conn.fetchrow(
        "SELECT id, event, definition, enabled FROM triggers WHERE owner = $1 AND name = $2",
        owner,
        name,
    )
    if found is None:
        return None
    tid = int(found[0])
    sends = await _send_stats(conn, TRIGGER_COUNTS, TRIGGER_BOUNCES, tid, since)
    steps = shared.step_stats(found[2], await conn.fetch(TRIGGER_ROWS, tid, since), sends)
    return TriggerReport(owner, name, str(found[1]), bool(found[3]), steps)


class PgOutreachStats:
    """The reads above, each in one read-only repeatable-read transaction: one snapshot,
    so a report taken while nodes feed a run counts each batch in all of its parts or none."""

    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    async def campaign(self, owner: str, name: str, since: float = 0.0) -> CampaignReport | None:
        async with self.db.transaction() as conn:
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return await campaign_report(conn, owner, name, since)

    async def trigger(self, owner: str, name: str, since: float = 0.0) -> TriggerReport | None:
        async with self.db.transaction() as conn:
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return await trigger_report(conn, owner, name, since)
