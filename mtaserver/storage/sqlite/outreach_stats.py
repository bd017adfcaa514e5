"""Per-campaign and per-trigger-step numbers: what was queued, and what became of it.

Read-only over tables other owners write. Which message a campaign run or a trigger step
sent is not read from the message's ``campaign`` tag but from the rows that queued it:
``campaign_recipients.queue_id`` (state ``queued``) and ``journey_steps.queue_id`` (state
``fired``), each written in the transaction that queued the message. They are exact —
a campaign and a trigger of the same name, two users' campaigns of the same name, or a
tag given by hand never mix — and they already name the run and the step, so no label
has to be parsed. What happened to each message is then read from the event log through
its ``(queue_id, recipient)`` index; marketing mail has one recipient per message, so a
queue id is a recipient.

Counts are of messages (recipients): one opened five times counts once in
``unique_human`` and five times in ``human``. Machine opens and clicks (image proxies,
link scanners, as the tracking endpoint marked them) are counted apart and never enter
the rates. A bounced message is classified by its latest bounce event: ``kind`` (hard,
soft), ``category`` and ``reason`` as :mod:`mtaserver.classify` gave them. ``queued``
includes recipients stored suppressed; ``sent`` does not. Events older than
``[retention]`` are gone, so such numbers can only fall behind ``queued``.

The report values and the steps from these statements' rows to them are
:mod:`mtaserver.storage.common.outreach_stats`'s, shared with the PostgreSQL owner.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from mtaserver.storage.common.outreach_stats import (
    CampaignReport,
    Engagement,
    RunStats,
    SendStats,
    StepStats,
    TriggerReport,
    run_stats,
    send_stats,
    step_stats,
)
from mtaserver.storage.sqlite.db import Database

__all__ = [
    "CampaignReport",
    "Engagement",
    "OutreachStats",
    "RunStats",
    "SendStats",
    "StepStats",
    "TriggerReport",
    "campaign_report",
    "trigger_report",
]

# One row per message a campaign's runs (fired since :since) queued: (group, queue id).
_CAMPAIGN_SENDS: Final = """
SELECT cr.run_id AS grp, cr.queue_id AS qid
FROM campaign_runs r JOIN campaign_recipients cr ON cr.run_id = r.id
WHERE r.campaign_id = :id AND r.fire_at >= :since AND cr.state = 'queued'
  AND cr.queue_id IS NOT NULL
"""
_TRIGGER_SENDS: Final = """
SELECT s.step AS grp, s.queue_id AS qid
FROM journey_steps s
WHERE s.trigger_id = :id AND s.updated_at >= :since AND s.state = 'fired'
  AND s.queue_id IS NOT NULL
"""
_COUNTS: Final = """
ev AS (
    SELECT s.grp AS grp, e.type AS type, e.queue_id AS qid,
           coalesce(json_extract(e.data, '$.machine'), 0) AS machine
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
        count(DISTINCT CASE WHEN type = 'suppressed' THEN qid END) AS suppressed,
        count(DISTINCT CASE WHEN type = 'delivered' THEN qid END) AS delivered,
        count(DISTINCT CASE WHEN type = 'deferred' THEN qid END) AS deferred,
        sum(type = 'open' AND machine = 0) AS human_o,
        sum(type = 'open' AND machine <> 0) AS machine_o,
        count(DISTINCT CASE WHEN type = 'open' AND machine = 0 THEN qid END) AS uh_o,
        count(DISTINCT CASE WHEN type = 'open' AND machine <> 0 THEN qid END) AS um_o,
        sum(type = 'click' AND machine = 0) AS human_c,
        sum(type = 'click' AND machine <> 0) AS machine_c,
        count(DISTINCT CASE WHEN type = 'click' AND machine = 0 THEN qid END) AS uh_c,
        count(DISTINCT CASE WHEN type = 'click' AND machine <> 0 THEN qid END) AS um_c,
        count(DISTINCT CASE WHEN type = 'unsubscribe' THEN qid END) AS unsub,
        count(DISTINCT CASE WHEN type = 'complaint' THEN qid END) AS complaints
    FROM ev GROUP BY grp
) x ON x.grp = g.grp
"""
# Each bounced message once, by its latest bounce event (SQLite takes the bare columns
# of a max() aggregate from the row that holds the max).
_BOUNCES: Final = """
last AS (
    SELECT s.grp AS grp, max(e.id) AS id
    FROM sends s JOIN events e ON e.queue_id = s.qid
    WHERE e.type = 'bounced'
    GROUP BY s.grp, e.queue_id
)
SELECT l.grp, coalesce(json_extract(e.data, '$.kind'), 'soft'),
       coalesce(json_extract(e.data, '$.category'), 'other'),
       coalesce(json_extract(e.data, '$.reason'), 'undefined'), count(*)
FROM last l JOIN events e ON e.id = l.id
GROUP BY 1, 2, 3, 4
"""
CAMPAIGN_COUNTS: Final = "WITH sends AS (" + _CAMPAIGN_SENDS + ")," + _COUNTS
CAMPAIGN_BOUNCES: Final = "WITH sends AS (" + _CAMPAIGN_SENDS + ")," + _BOUNCES
TRIGGER_COUNTS: Final = "WITH sends AS (" + _TRIGGER_SENDS + ")," + _COUNTS
TRIGGER_BOUNCES: Final = "WITH sends AS (" + _TRIGGER_SENDS + ")," + _BOUNCES
# The rows behind each group that did not (or not yet) send: skipped by reason, pending.
# A trigger step's reason is free text ("refused: 550 ..."): grouped by its first word.
CAMPAIGN_ROWS: Final = """
SELECT r.id, r.fire_at, r.status, r.audience, cr.state,
       CASE WHEN cr.state = 'skipped' THEN coalesce(cr.reason, '') END, count(cr.run_id)
FROM campaign_runs r LEFT JOIN campaign_recipients cr ON cr.run_id = r.id
WHERE r.campaign_id = :id AND r.fire_at >= :since
GROUP BY 1, 5, 6 ORDER BY r.fire_at, r.id
"""
TRIGGER_ROWS: Final = """
SELECT step, state,
       CASE WHEN state = 'skipped' THEN
           CASE WHEN instr(coalesce(reason, ''), ':') > 0
                THEN substr(reason, 1, instr(reason, ':') - 1) ELSE coalesce(reason, '') END
       END,
       count(*)
FROM journey_steps
WHERE trigger_id = :id AND updated_at >= :since
GROUP BY 1, 2, 3
"""


def campaign_report(
    conn: sqlite3.Connection, owner: str, name: str, since: float = 0.0
) -> CampaignReport | None:
    """The numbers of ``owner``'s campaign ``name``, run by run (runs fired since
    ``since``); None when there is no such campaign."""
    found = conn.execute(
        "SELECT id, status FROM campaigns WHERE owner = ? AND name = ?", (owner, name)
    ).fetchone()
    if found is None:
        return None
    params = {"id": found[0], "since": since}
    sends = send_stats(
        conn.execute(CAMPAIGN_BOUNCES, params), conn.execute(CAMPAIGN_COUNTS, params)
    )
    runs = run_stats(conn.execute(CAMPAIGN_ROWS, params), sends)
    return CampaignReport(owner, name, str(found[1]), runs)


def trigger_report(
    conn: sqlite3.Connection, owner: str, name: str, since: float = 0.0
) -> TriggerReport | None:
    """The numbers of ``owner``'s trigger ``name``, step by step (steps fired, cancelled
    or skipped since ``since``, pending ones created since); None when there is none."""
    found = conn.execute(
        "SELECT id, event, definition, enabled FROM triggers WHERE owner = ? AND name = ?",
        (owner, name),
    ).fetchone()
    if found is None:
        return None
    params = {"id": found[0], "since": since}
    sends = send_stats(conn.execute(TRIGGER_BOUNCES, params), conn.execute(TRIGGER_COUNTS, params))
    steps = step_stats(found[2], conn.execute(TRIGGER_ROWS, params), sends)
    return TriggerReport(owner, name, str(found[1]), bool(found[3]), steps)


class OutreachStats:
    """The reads above on the database's read connection."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def campaign(self, owner: str, name: str, since: float = 0.0) -> CampaignReport | None:
        return await self.db.read(lambda conn: campaign_report(conn, owner, name, since))

    async def trigger(self, owner: str, name: str, since: float = 0.0) -> TriggerReport | None:
        return await self.db.read(lambda conn: trigger_report(conn, owner, name, since))
