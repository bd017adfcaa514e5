"""The cohort report's backend-free steps: the open end of a time range as a bound both
databases compare against, and the statement's one row as :class:`~mtaserver.model.Stats`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from mtaserver.model import Stats

_FAR: Final = 1e18  # "until forever" as a number both databases compare with a REAL


def until_bound(until: float) -> float:
    """``until`` as the statement's upper bound (infinity is not a REAL everywhere)."""
    return until if until != float("inf") else _FAR


def cohort_from_row(row: Sequence[Any]) -> Stats:
    """The cohort statement's row ``(messages, accepted, delivered, deferred, bounced,
    hard bounced, then complaints, unsubscribes, opens and clicks)`` as its numbers."""
    n = [int(v or 0) for v in row]
    messages, accepted, delivered, deferred, bounced, hard = n[:6]
    return Stats(messages, accepted, delivered, deferred, hard, bounced - hard, *n[6:])
