"""Delivery and engagement numbers for a cohort of messages.

The cohort is every message accepted in ``[since, until)``, optionally only one campaign
(``X-Mtaserver-Campaign``) or one submitting user. Every count is of *recipients* of
those messages, read from the events table, so a recipient deferred three times counts
once in ``deferred``, and one who opened five times counts once in ``unique_human_opens``
(five times in ``human_opens``). Machine opens and clicks (image proxies, link scanners)
are counted apart and never enter the human numbers or the rates.

Rates: delivery and bounce rates are over accepted; open, click, unsubscribe and complaint
rates over delivered; click-to-open is unique human clicks over unique human opens.
``None`` where the denominator is zero.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from mtaserver.config.units import parse_duration
from mtaserver.errors import MtaError

_SQL = """
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


class Reader(Protocol):
    async def read(self, fn: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class Stats:
    messages: int
    accepted: int
    delivered: int
    deferred: int
    bounced_hard: int
    bounced_soft: int
    complaints: int
    unsubscribes: int
    unique_human_opens: int
    unique_human_clicks: int
    human_opens: int
    human_clicks: int
    machine_opens: int
    machine_clicks: int

    @property
    def bounced(self) -> int:
        return self.bounced_hard + self.bounced_soft

    def rates(self) -> dict[str, float | None]:
        def ratio(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        return {
            "delivery_rate": ratio(self.delivered, self.accepted),
            "bounce_rate": ratio(self.bounced, self.accepted),
            "open_rate": ratio(self.unique_human_opens, self.delivered),
            "click_rate": ratio(self.unique_human_clicks, self.delivered),
            "click_to_open_rate": ratio(self.unique_human_clicks, self.unique_human_opens),
            "unsubscribe_rate": ratio(self.unsubscribes, self.delivered),
            "complaint_rate": ratio(self.complaints, self.delivered),
        }

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        out["bounced"] = self.bounced
        out["rates"] = self.rates()
        return out


def compute_sync(
    conn: sqlite3.Connection,
    since: float = 0.0,
    campaign: str | None = None,
    user: str | None = None,
    until: float = float("inf"),
) -> Stats:
    row = conn.execute(
        _SQL,
        {
            "since": since,
            "until": until if until != float("inf") else 1e18,
            "campaign": campaign,
            "user": user,
        },
    ).fetchone()
    n = [int(v or 0) for v in row]
    messages, accepted, delivered, deferred, bounced, hard = n[:6]
    return Stats(messages, accepted, delivered, deferred, hard, bounced - hard, *n[6:])


async def compute(
    db: Reader,
    since: float = 0.0,
    campaign: str | None = None,
    user: str | None = None,
    until: float = float("inf"),
) -> Stats:
    """The numbers for messages accepted in ``[since, until)`` (on a read connection)."""

    def op(conn: sqlite3.Connection) -> Stats:
        return compute_sync(conn, since, campaign, user, until)

    result: Stats = await db.read(op)
    return result


class StatsUsageError(MtaError):
    """A bad --since value."""


def parse_since(value: str | None, now: float) -> float:
    """Seconds since the epoch for ``--since``."""
    if value is None:
        return 0.0
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise StatsUsageError(
            f"--since: expected a duration like '24h' or a date like '2026-11-01', got {value!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()
