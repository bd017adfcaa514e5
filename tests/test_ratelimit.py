"""The one token bucket and the one connection limiter, on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from mtaserver.ratelimit import ConnectionLimiter, RateLimiter, Refusal, TokenBucket
from tests.support.clock import FakeClock


def test_token_bucket_refills_at_rate_up_to_burst() -> None:
    b = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [b.try_take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.wait(0.0) == pytest.approx(0.5)
    assert b.try_take(0.5) and not b.try_take(0.5)
    assert b.wait(100.0) == 0.0 and b.tokens == 3.0  # never more than the burst
    b.take(100.0)  # unconditional: the shaper only takes after wait() said 0
    assert b.tokens == 2.0
    b.set_rate(1.0, 1.0, 100.0)
    assert (b.rate, b.burst, b.tokens) == (1.0, 1.0, 1.0)
    assert TokenBucket(1.0, 0.0, 0.0).burst == 1.0  # a burst under one token is one token


def test_rate_limiter_per_key_reconfigure_and_bounded_memory() -> None:
    clock = FakeClock()
    rl = RateLimiter(1.0, 2.0, clock, max_keys=3)
    assert [rl.take("a") for _ in range(3)] == [True, True, False]
    assert rl.take("b")  # keys do not share tokens
    clock.advance(1.0)
    assert rl.take("a") and not rl.take("a")
    rl.reconfigure(10.0, 5.0)  # what "a" spent is kept; it refills at the new rate
    assert not rl.take("a")
    clock.advance(0.1)
    assert rl.take("a")
    for key in ("c", "d", "e"):
        rl.take(key)
    assert len(rl) == 3  # least recently used keys are forgotten first


def test_connection_limiter_caps_and_rate() -> None:
    clock = FakeClock()
    lim = ConnectionLimiter(2, max_total=3, rate=RateLimiter(0.5, 3, clock))
    assert lim.admit("192.0.2.1") is None and lim.admit("192.0.2.1") is None
    assert lim.admit("192.0.2.1") is Refusal.PER_IP
    assert lim.admit("192.0.2.2") is None
    assert lim.admit("192.0.2.3") is Refusal.TOTAL
    for ip in ("192.0.2.1", "192.0.2.1", "192.0.2.2"):
        lim.release(ip)
    assert lim.total == 0 and lim.count("192.0.2.1") == 0
    # 192.0.2.1 spent 2 of its 3 tokens; one more, then it must wait 2 s (0.5/s) per token.
    assert lim.admit("192.0.2.1") is None
    lim.release("192.0.2.1")
    assert lim.admit("192.0.2.1") is Refusal.RATE
    assert lim.total == 0  # a refusal counts nothing
    clock.advance(2.0)
    assert lim.acquire("192.0.2.1")


def test_connection_limiter_without_rate_or_total_and_reloaded_cap() -> None:
    lim = ConnectionLimiter(1)
    assert lim.acquire("2001:db8::1") and not lim.acquire("2001:db8::1")
    lim.max_per_ip = 2  # a reload applies at once; the open count carries on
    assert lim.acquire("2001:db8::1") and lim.count("2001:db8::1") == 2
    lim.release("2001:db8::1")
    lim.release("2001:db8::1")
    lim.release("2001:db8::1")  # an extra release never goes negative
    assert lim.count("2001:db8::1") == 0 and lim.total == 0
