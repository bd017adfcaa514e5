"""An aiosmtpd MX that measures what a provider sees of a cluster: sessions open at once and
messages per second, per recipient domain.

A session counts for a domain from its first RCPT to that domain until the connection
closes (QUIT, or the peer dying), so a connection a node keeps open counts as long as it is
open. ``delays`` makes a domain slow (seconds spent in DATA), the way a provider's
back-pressure holds connections open.

    async with MeteredSink({"conn.test": 0.4}) as sink:   # 127.0.0.2:<sink.port>
        sink.reset_peaks(); ...; sink.peak["conn.test"]
        sink.count("rate.test", t0, t1)                   # arrivals in [t0, t1), loop time
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class MeteredSink:
    def __init__(self, delays: dict[str, float] | None = None, host: str = "127.0.0.2") -> None:
        self.host = host
        self.port = 0
        self.delays = delays or {}
        self.active: collections.Counter[str] = collections.Counter()
        self.peak: collections.Counter[str] = collections.Counter()
        self.arrivals: list[tuple[float, str, str]] = []  # (loop time, domain, recipient)
        self._server: asyncio.Server | None = None

    def reset_peaks(self) -> None:
        """Start a new measuring window: the peak is what is open now."""
        self.peak = collections.Counter(self.active)

    def count(self, domain: str, t0: float, t1: float) -> int:
        return sum(1 for t, d, _ in self.arrivals if d == domain and t0 <= t < t1)

    def delivered(self, domain: str | None = None) -> list[str]:
        return [r for _, d, r in self.arrivals if domain is None or d == domain]

    # -- aiosmtpd -------------------------------------------------------------------------
    def _open(self, session: Session, domain: str) -> None:
        if getattr(session, "metered_domain", None) is None:
            session.metered_domain = domain  # type: ignore[attr-defined]
            self.active[domain] += 1
            self.peak[domain] = max(self.peak[domain], self.active[domain])

    def _closed(self, session: Session | None) -> None:
        domain = getattr(session, "metered_domain", None)
        if domain is not None:
            self.active[domain] -= 1
            session.metered_domain = None  # type: ignore[union-attr]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        self._open(session, address.rpartition("@")[2].lower())
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        domain = getattr(session, "metered_domain", "") or ""
        delay = self.delays.get(domain, 0.0)
        if delay:
            await asyncio.sleep(delay)  # the remote side being slow, not a test waiting
        now = asyncio.get_running_loop().time()
        for r in envelope.rcpt_tos:
            self.arrivals.append((now, r.rpartition("@")[2].lower(), r))
        return "250 2.0.0 Ok: queued"

    async def start(self) -> MeteredSink:
        loop = asyncio.get_running_loop()
        sink = self

        class _Metered(SMTP):  # type: ignore[misc]
            def connection_lost(self, error: Exception | None) -> None:
                sink._closed(self.session)
                super().connection_lost(error)

        self._server = await loop.create_server(
            lambda: _Metered(self, hostname="sink.test", timeout=30), self.host, 0
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> MeteredSink:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
