"""Retry schedule, hints and expiry (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mtaserver.config.shaping import RetrySettings
from mtaserver.retry import backoff, decide, delay_warning_due, is_expired

DEFAULT = RetrySettings()
T0 = 1_800_000_000.0


def test_default_schedule_then_every_four_hours() -> None:
    delays = [backoff(DEFAULT, n) for n in range(1, 10)]
    assert delays == [300, 600, 1800, 3600, 7200, 14400, 14400, 14400, 14400]


def test_deferral_schedules_next_attempt_from_now() -> None:
    d = decide(DEFAULT, attempts=1, received_at=T0, now=T0 + 2)
    assert not d.expired
    assert d.next_attempt == T0 + 2 + 300
    d = decide(DEFAULT, attempts=3, received_at=T0, now=T0 + 1000)
    assert d.next_attempt == T0 + 1000 + 1800


def test_hint_replaces_schedule_within_bounds() -> None:
    assert decide(DEFAULT, attempts=5, received_at=T0, now=T0, retry_after=90).next_attempt == (
        T0 + 90
    )
    # too eager a hint is raised to the minimum, too lazy a hint capped
    assert decide(DEFAULT, attempts=1, received_at=T0, now=T0, retry_after=1).next_attempt == (
        T0 + 30
    )
    assert decide(DEFAULT, attempts=1, received_at=T0, now=T0, retry_after=10**7).next_attempt == (
        T0 + 14400
    )


def test_not_before_pushes_later_only() -> None:
    d = decide(DEFAULT, attempts=1, received_at=T0, now=T0, not_before=T0 + 3600)
    assert d.next_attempt == T0 + 3600
    d = decide(DEFAULT, attempts=1, received_at=T0, now=T0, not_before=T0 + 10)
    assert d.next_attempt == T0 + 300


def test_last_attempt_lands_on_expiry_and_then_expires() -> None:
    life = DEFAULT.max_lifetime
    d = decide(DEFAULT, attempts=30, received_at=T0, now=T0 + life - 60)
    assert d.next_attempt == T0 + life
    d = decide(DEFAULT, attempts=31, received_at=T0, now=T0 + life)
    assert d.expired and d.next_attempt is None
    assert is_expired(DEFAULT, T0, T0 + life)
    assert not is_expired(DEFAULT, T0, T0 + life - 1)


def test_custom_schedule_and_delay_warning() -> None:
    s = RetrySettings(schedule=(10.0, 20.0), every=40.0, max_lifetime=100.0, delay_warning=30.0)
    assert [backoff(s, n) for n in (1, 2, 3, 4)] == [10, 20, 40, 40]
    assert not delay_warning_due(s, T0, T0 + 29)
    assert delay_warning_due(s, T0, T0 + 30)
    assert not delay_warning_due(DEFAULT, T0, T0 + 10**6)


@given(
    attempts=st.integers(min_value=1, max_value=200),
    age=st.floats(min_value=0, max_value=10 * 86400),
    hint=st.none() | st.floats(min_value=0, max_value=10**6),
)
def test_next_attempt_is_in_the_future_and_never_past_expiry(
    attempts: int, age: float, hint: float | None
) -> None:
    now = T0 + age
    d = decide(DEFAULT, attempts=attempts, received_at=T0, now=now, retry_after=hint)
    if age >= DEFAULT.max_lifetime:
        assert d.expired
    else:
        assert d.next_attempt is not None
        assert now < d.next_attempt <= T0 + DEFAULT.max_lifetime


@given(st.integers(min_value=1, max_value=100))
def test_schedule_is_monotonic(n: int) -> None:
    assert backoff(DEFAULT, n + 1) >= backoff(DEFAULT, n)
