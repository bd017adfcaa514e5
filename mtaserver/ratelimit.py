"""The one token bucket and the one per-IP connection limiter (pure; time is injected).

Three places ration something by rate — the shaper (messages per destination), submission
(messages per user) and the SMTP listeners (new connections per client IP) — and two cap
concurrent connections per client IP. They all use the classes here, so a bucket refills the
same way everywhere and a fix lands once:

- :class:`TokenBucket`: ``rate`` tokens per second, at most ``burst`` saved up; the caller
  passes the monotonic time, so the bucket itself never reads a clock;
- :class:`RateLimiter`: one bucket per key (user, IP), bounded in memory (least recently
  used keys are forgotten first), reading the injected :class:`~mtaserver.clock.Clock`;
- :class:`ConnectionLimiter`: concurrent connections per IP and in total, plus an optional
  :class:`RateLimiter` for new connections per IP; ``admit`` says why it refuses.
"""

from __future__ import annotations

import enum
from collections import OrderedDict

from mtaserver.clock import Clock


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; one token per event."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tokens = self.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait(self, now: float) -> float:
        """Seconds until a token is available (0 when one is)."""
        self._refill(now)
        if self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        """Spend one token unconditionally (after ``wait`` said 0)."""
        self._refill(now)
        self.tokens -= 1.0

    def try_take(self, now: float) -> bool:
        """Spend one token if one is available; False (and nothing spent) otherwise."""
        self._refill(now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def set_rate(self, rate: float, burst: float, now: float) -> None:
        """New rate and burst; what was saved up is kept, up to the new burst."""
        self._refill(now)
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tokens = min(self.tokens, self.burst)


class RateLimiter:
    """A :class:`TokenBucket` per key: ``rate`` tokens per second, at most ``burst`` saved."""

    def __init__(self, rate: float, burst: float, clock: Clock, *, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def reconfigure(self, rate: float, burst: float) -> None:
        """New rate and burst (SIGHUP); the buckets keep what each key has spent."""
        self.rate = rate
        self.burst = max(1.0, burst)

    def take(self, key: str) -> bool:
        """Spend one token for ``key``; False when none is left."""
        now = self._clock.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        elif bucket.rate != self.rate or bucket.burst != self.burst:
            bucket.set_rate(self.rate, self.burst, now)
        if not bucket.try_take(now):
            return False
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_keys:  # bounded under address spraying
            self._buckets.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._buckets)


class Refusal(enum.Enum):
    """Why :meth:`ConnectionLimiter.admit` refused a connection."""

    TOTAL = "total"  # the listener is full
    PER_IP = "per-ip"  # this address has too many open
    RATE = "rate"  # this address opens them too fast


class ConnectionLimiter:
    """Concurrent connections per client IP (and in total), and new connections per IP.

    ``max_per_ip`` and ``max_total`` may be changed at any time (a reload); the counts of
    open connections carry on. ``rate`` is None for no rate limit.
    """

    def __init__(
        self,
        max_per_ip: int,
        *,
        max_total: int | None = None,
        rate: RateLimiter | None = None,
    ) -> None:
        self.max_per_ip = max_per_ip
        self.max_total = max_total
        self.rate = rate
        self.total = 0
        self._open: dict[str, int] = {}

    def admit(self, ip: str) -> Refusal | None:
        """Count a new connection from ``ip`` and return None, or say why it is refused
        (and count nothing). Every admitted connection must be ``release``\\ d once."""
        if self.max_total is not None and self.total >= self.max_total:
            return Refusal.TOTAL
        count = self._open.get(ip, 0)
        if count >= self.max_per_ip:
            return Refusal.PER_IP
        if self.rate is not None and not self.rate.take(ip):
            return Refusal.RATE
        self._open[ip] = count + 1
        self.total += 1
        return None

    def acquire(self, ip: str) -> bool:
        """``admit`` as a yes/no."""
        return self.admit(ip) is None

    def release(self, ip: str) -> None:
        count = self._open.get(ip, 0) - 1
        if count <= 0:
            self._open.pop(ip, None)
        else:
            self._open[ip] = count
        self.total = max(0, self.total - 1)

    def count(self, ip: str) -> int:
        return self._open.get(ip, 0)
