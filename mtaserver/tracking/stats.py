"""Delivery and engagement numbers for a cohort of messages.

The cohort is every message accepted in ``[since, until)``, optionally only one campaign
(``X-Mtaserver-Campaign``) or one submitting user. Every count is of *recipients* of
those messages, read from the event log (the query lives in ``storage.sqlite.reports``),
so a recipient deferred three times counts once in ``deferred``, and one who opened five
times counts once in ``unique_human_opens``
(five times in ``human_opens``). Machine opens and clicks (image proxies, link scanners)
are counted apart and never enter the human numbers or the rates.

Rates: delivery and bounce rates are over accepted; open, click, unsubscribe and complaint
rates over delivered; click-to-open is unique human clicks over unique human opens.
``None`` where the denominator is zero.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from mtaserver.config.units import parse_duration
from mtaserver.errors import MtaError
from mtaserver.model import Stats


class CohortSource(Protocol):
    """What the numbers need from storage: one read of a cohort's recipients and events."""

    async def cohort(
        self, since: float, campaign: str | None, user: str | None, until: float
    ) -> Stats: ...


async def compute(
    source: CohortSource,
    since: float = 0.0,
    campaign: str | None = None,
    user: str | None = None,
    until: float = float("inf"),
) -> Stats:
    """The numbers for messages accepted in ``[since, until)``."""
    return await source.cohort(since, campaign, user, until)


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
