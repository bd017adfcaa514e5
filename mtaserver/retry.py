"""When to try a deferred recipient again, and when to give up (pure).

The schedule is a list of delays after the 1st, 2nd, … failed attempt, then a fixed
interval. A receiver's "retry in N seconds" hint replaces the scheduled delay, within
bounds. No attempt is scheduled past the end of the queue lifetime: the last one happens
exactly when the lifetime ends, and a deferral at or after that point is final (4.4.7),
the way Postfix's `maximal_queue_lifetime` works.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtaserver.config.shaping import RetrySettings

EXPIRED_STATUS = "4.4.7"


@dataclass(frozen=True, slots=True)
class RetryDecision:
    expired: bool
    next_attempt: float | None  # set when not expired


def backoff(settings: RetrySettings, attempts: int) -> float:
    """Delay after the `attempts`-th failed attempt (1-based)."""
    if attempts < 1:
        attempts = 1
    if attempts <= len(settings.schedule):
        return settings.schedule[attempts - 1]
    return settings.every


def expires_at(settings: RetrySettings, received_at: float) -> float:
    return received_at + settings.max_lifetime


def decide(
    settings: RetrySettings,
    *,
    attempts: int,
    received_at: float,
    now: float,
    retry_after: float | None = None,
    not_before: float | None = None,
) -> RetryDecision:
    """The fate of a recipient that was just deferred.

    `attempts` counts every attempt so far, this one included. `not_before` (wall time)
    pushes the next attempt later, e.g. to the end of a destination's suspension.
    """
    end = expires_at(settings, received_at)
    if now >= end:
        return RetryDecision(expired=True, next_attempt=None)
    if retry_after is not None:
        delay = min(max(retry_after, settings.min_hint), settings.max_hint)
    else:
        delay = backoff(settings, attempts)
    at = now + delay
    if not_before is not None:
        at = max(at, not_before)
    return RetryDecision(expired=False, next_attempt=min(at, end))


def is_expired(settings: RetrySettings, received_at: float, now: float) -> bool:
    return now >= expires_at(settings, received_at)


def delay_warning_due(settings: RetrySettings, received_at: float, now: float) -> bool:
    """Whether a deferral at `now` is late enough to warn the sender (once per message)."""
    if settings.delay_warning is None:
        return False
    return now - received_at >= settings.delay_warning
