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
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from mtaserver.storage.sqlite.db import Database

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


@dataclass(frozen=True, slots=True)
class Engagement:
    """Opens or clicks: messages (unique) and hits, by people and by machines."""

    unique_human: int = 0
    unique_machine: int = 0
    human: int = 0
    machine: int = 0

    def plus(self, o: Engagement) -> Engagement:
        return Engagement(self.unique_human + o.unique_human,
                          self.unique_machine + o.unique_machine,
                          self.human + o.human, self.machine + o.machine)  # fmt: skip


Counts = tuple[tuple[str, int], ...]  # (name, n), sorted by name


def _merge(*parts: Iterable[tuple[str, int]]) -> Counts:
    out: dict[str, int] = {}
    for part in parts:
        for k, n in part:
            out[k] = out.get(k, 0) + n
    return tuple(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class SendStats:
    """What became of the messages one run, one step, or all of them queued."""

    queued: int = 0
    suppressed: int = 0
    delivered: int = 0
    deferred: int = 0  # messages deferred at least once (they may have been delivered since)
    bounce_kinds: Counts = ()  # hard, soft
    bounce_categories: Counts = ()  # classify.CATEGORIES
    bounce_reasons: Counts = ()  # classify.REASONS
    opens: Engagement = field(default_factory=Engagement)
    clicks: Engagement = field(default_factory=Engagement)
    unsubscribed: int = 0
    complained: int = 0

    @property
    def sent(self) -> int:
        """Messages handed to delivery (queued, not stored suppressed)."""
        return self.queued - self.suppressed

    @property
    def bounced(self) -> int:
        return sum(n for _, n in self.bounce_kinds)

    def plus(self, o: SendStats) -> SendStats:
        return SendStats(
            self.queued + o.queued, self.suppressed + o.suppressed,
            self.delivered + o.delivered, self.deferred + o.deferred,
            _merge(self.bounce_kinds, o.bounce_kinds),
            _merge(self.bounce_categories, o.bounce_categories),
            _merge(self.bounce_reasons, o.bounce_reasons),
            self.opens.plus(o.opens), self.clicks.plus(o.clicks),
            self.unsubscribed + o.unsubscribed, self.complained + o.complained,
        )  # fmt: skip

    def rates(self) -> dict[str, float | None]:
        def ratio(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        d = self.delivered
        return {
            "delivery_rate": ratio(d, self.sent),
            "bounce_rate": ratio(self.bounced, self.sent),
            "open_rate": ratio(self.opens.unique_human, d),
            "click_rate": ratio(self.clicks.unique_human, d),
            "click_to_open_rate": ratio(self.clicks.unique_human, self.opens.unique_human),
            "unsubscribe_rate": ratio(self.unsubscribed, d),
            "complaint_rate": ratio(self.complained, d),
        }

    def as_json(self) -> dict[str, Any]:
        kinds = dict(self.bounce_kinds)
        return {
            "queued": self.queued,
            "suppressed": self.suppressed,
            "sent": self.sent,
            "delivered": self.delivered,
            "deferred": self.deferred,
            "bounced": {
                "total": self.bounced,
                "hard": kinds.get("hard", 0),
                "soft": kinds.get("soft", 0),
                "by_category": dict(self.bounce_categories),
                "by_reason": dict(self.bounce_reasons),
            },
            "opened": _engagement(self.opens),
            "clicked": _engagement(self.clicks),
            "unsubscribed": self.unsubscribed,
            "complained": self.complained,
            "rates": self.rates(),
        }


def _engagement(e: Engagement) -> dict[str, int]:
    return {"unique_human": e.unique_human, "unique_machine": e.unique_machine,
            "human": e.human, "machine": e.machine}  # fmt: skip


@dataclass(frozen=True, slots=True)
class RunStats:
    """One run of a campaign: its snapshot, what was skipped and why, and the sends."""

    run: int
    fire_at: float
    status: str
    audience: int
    pending: int
    cancelled: int  # rows the run's cancel (or failure) took before they were fed
    skipped: Counts
    stats: SendStats

    def as_json(self) -> dict[str, Any]:
        return {"run": self.run, "fire_at": self.fire_at, "status": self.status,
                "audience": self.audience, "pending": self.pending,
                "cancelled": self.cancelled,
                "skipped": dict(self.skipped)} | self.stats.as_json()  # fmt: skip


@dataclass(frozen=True, slots=True)
class StepStats:
    """One step of a trigger: its rows by state (skipped by reason) and the sends."""

    step: int
    template: str | None  # None: the step was removed from the trigger since
    pending: int
    cancelled: int
    skipped: Counts
    stats: SendStats

    def as_json(self) -> dict[str, Any]:
        return {"step": self.step, "template": self.template, "pending": self.pending,
                "cancelled": self.cancelled,
                "skipped": dict(self.skipped)} | self.stats.as_json()  # fmt: skip


@dataclass(frozen=True, slots=True)
class CampaignReport:
    owner: str
    name: str
    status: str
    runs: tuple[RunStats, ...]

    @property
    def total(self) -> SendStats:
        out = SendStats()
        for r in self.runs:
            out = out.plus(r.stats)
        return out

    def as_json(self) -> dict[str, Any]:
        skipped = _merge(*(r.skipped for r in self.runs))
        head = {"audience": sum(r.audience for r in self.runs),
                "pending": sum(r.pending for r in self.runs),
                "cancelled": sum(r.cancelled for r in self.runs),
                "skipped": dict(skipped)}  # fmt: skip
        return {"campaign": {"user": self.owner, "name": self.name, "status": self.status},
                "total": head | self.total.as_json(),
                "runs": [r.as_json() for r in self.runs]}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TriggerReport:
    owner: str
    name: str
    event: str
    enabled: bool
    steps: tuple[StepStats, ...]

    @property
    def total(self) -> SendStats:
        out = SendStats()
        for s in self.steps:
            out = out.plus(s.stats)
        return out

    def as_json(self) -> dict[str, Any]:
        skipped = _merge(*(s.skipped for s in self.steps))
        head = {
            "pending": sum(s.pending for s in self.steps),
            "cancelled": sum(s.cancelled for s in self.steps),
            "skipped": dict(skipped),
        }
        return {"trigger": {"user": self.owner, "name": self.name, "event": self.event,
                            "enabled": self.enabled},
                "total": head | self.total.as_json(),
                "steps": [s.as_json() for s in self.steps]}  # fmt: skip


def _send_stats(conn: sqlite3.Connection, counts: str, bounces: str,
                params: Mapping[str, object]) -> dict[int, SendStats]:  # fmt: skip
    kinds: dict[int, list[tuple[str, int]]] = {}
    cats: dict[int, list[tuple[str, int]]] = {}
    reasons: dict[int, list[tuple[str, int]]] = {}
    for grp, kind, category, reason, n in conn.execute(bounces, params):
        kinds.setdefault(grp, []).append((str(kind), n))
        cats.setdefault(grp, []).append((str(category), n))
        reasons.setdefault(grp, []).append((str(reason), n))
    out: dict[int, SendStats] = {}
    for row in conn.execute(counts, params):
        grp, queued, suppressed, delivered, deferred = row[:5]
        ho, mo, uho, umo, hc, mc, uhc, umc, unsub, complaints = (int(v) for v in row[5:])
        out[int(grp)] = SendStats(
            int(queued), int(suppressed), int(delivered), int(deferred),
            _merge(kinds.get(grp, ())), _merge(cats.get(grp, ())), _merge(reasons.get(grp, ())),
            Engagement(uho, umo, ho, mo), Engagement(uhc, umc, hc, mc), unsub, complaints,
        )  # fmt: skip
    return out


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
    sends = _send_stats(conn, CAMPAIGN_COUNTS, CAMPAIGN_BOUNCES, params)
    runs: dict[int, tuple[float, str, int]] = {}
    by_state: dict[tuple[int, str], int] = {}
    skipped: dict[int, list[tuple[str, int]]] = {}
    for run, fire_at, status, audience, state, reason, n in conn.execute(CAMPAIGN_ROWS, params):
        runs[run] = (fire_at, status, audience)
        by_state[(run, state)] = by_state.get((run, state), 0) + n
        if state == "skipped":
            skipped.setdefault(run, []).append((reason or "", n))
    out = tuple(
        RunStats(run, f, st, aud, by_state.get((run, "pending"), 0),
                 by_state.get((run, "cancelled"), 0), _merge(skipped.get(run, ())),
                 sends.get(run, SendStats()))
        for run, (f, st, aud) in runs.items()
    )  # fmt: skip
    return CampaignReport(owner, name, str(found[1]), out)


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
    try:
        steps_def = json.loads(found[2]).get("steps") or []
    except (ValueError, AttributeError):
        steps_def = []
    templates = [s.get("template") if isinstance(s, dict) else None for s in steps_def]
    params = {"id": found[0], "since": since}
    sends = _send_stats(conn, TRIGGER_COUNTS, TRIGGER_BOUNCES, params)
    states: dict[int, dict[str, int]] = {}
    skipped: dict[int, list[tuple[str, int]]] = {}
    for step, state, reason, n in conn.execute(TRIGGER_ROWS, params):
        by = states.setdefault(int(step), {})
        by[state] = by.get(state, 0) + n
        if state == "skipped":
            skipped.setdefault(int(step), []).append((reason or "", n))
    numbers = sorted(set(range(len(templates))) | set(states) | set(sends))
    out = tuple(
        StepStats(i, templates[i] if i < len(templates) else None,
                  states.get(i, {}).get("pending", 0), states.get(i, {}).get("cancelled", 0),
                  _merge(skipped.get(i, ())), sends.get(i, SendStats()))
        for i in numbers
    )  # fmt: skip
    return TriggerReport(owner, name, str(found[1]), bool(found[3]), out)


class OutreachStats:
    """The reads above on the database's read connection."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def campaign(self, owner: str, name: str, since: float = 0.0) -> CampaignReport | None:
        return await self.db.read(lambda conn: campaign_report(conn, owner, name, since))

    async def trigger(self, owner: str, name: str, since: float = 0.0) -> TriggerReport | None:
        return await self.db.read(lambda conn: trigger_report(conn, owner, name, since))
