"""Which destination (shaping bucket) each recipient domain belongs to.

Domains map to destinations through the shaper; a destination that groups by MX host
(``wants_mx``) needs a DNS lookup, so answers are cached (an hour, a minute after a
failure) and looked up at most 32 at a time with a timeout each.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from mtaserver.clock import Clock
from mtaserver.scheduler.ports import MxLookup
from mtaserver.shaper import Shaper

MX_TIMEOUT = 5.0
CACHE_LIMIT = 100_000


class Destinations:
    def __init__(self, shaper: Shaper, clock: Clock, mx: MxLookup | None) -> None:
        self._shaper = shaper
        self._clock = clock
        self._mx = mx
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def of(self, domains: set[str]) -> dict[str, str]:
        """Destination name per domain."""
        out: dict[str, str] = {}
        lookups: list[str] = []
        mono = self._clock.monotonic()
        for domain in domains:
            cached = self._cache.get(domain)
            if cached is not None and cached[1] > mono:
                out[domain] = cached[0]
            elif self._mx is not None and self._shaper.wants_mx(domain):
                lookups.append(domain)
            else:
                out[domain] = self._shaper.destination(domain)
        if lookups:
            mx = self._mx
            assert mx is not None
            sem = asyncio.Semaphore(32)

            async def one(domain: str) -> None:
                async with sem:
                    try:
                        hosts = await asyncio.wait_for(mx.mx_hosts(domain), MX_TIMEOUT)
                        ttl = 3600.0
                    except Exception:
                        hosts, ttl = (), 60.0
                out[domain] = self._shaper.destination(domain, hosts)
                self._cache[domain] = (out[domain], mono + ttl)
                while len(self._cache) > CACHE_LIMIT:
                    self._cache.popitem(last=False)

            await asyncio.gather(*(one(d) for d in lookups))
        return out
