"""Per-IP connection counting and per-user message rates (aiosmtpd has neither)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

from mtaserver.clock import Clock

T = TypeVar("T")


class ConnectionLimiter:
    """Concurrent sessions per client IP, shared by every submission listener."""

    def __init__(self, max_per_ip: int) -> None:
        self.max_per_ip = max_per_ip
        self._open: dict[str, int] = {}

    def acquire(self, ip: str) -> bool:
        count = self._open.get(ip, 0)
        if count >= self.max_per_ip:
            return False
        self._open[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        count = self._open.get(ip, 0) - 1
        if count <= 0:
            self._open.pop(ip, None)
        else:
            self._open[ip] = count

    def count(self, ip: str) -> int:
        return self._open.get(ip, 0)


class RateLimiter:
    """A token bucket per key: ``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float, clock: Clock, *, max_keys: int = 100_000):
        self.rate = rate
        self.burst = max(1.0, burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def reconfigure(self, rate: float, burst: float) -> None:
        """New rate and burst (SIGHUP); the buckets keep what each key has spent."""
        self.rate = rate
        self.burst = max(1.0, burst)

    def take(self, key: str) -> bool:
        """Spend one token for ``key``; False when none is left."""
        now = self._clock.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return True


class SessionRegistry(Generic[T]):
    """The open sessions, so a drain can end them and wait until none is left."""

    def __init__(self) -> None:
        self._items: set[T] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, item: T) -> None:
        self._items.add(item)
        self._empty.clear()

    def discard(self, item: T) -> None:
        self._items.discard(item)
        if not self._items:
            self._empty.set()

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    async def wait_empty(self) -> None:
        await self._empty.wait()
