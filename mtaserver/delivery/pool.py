"""Idle SMTP connections kept for reuse, and the connection leases they hold in a cluster.

Alone, a connection is pooled per MX address, port and TLS mode, and closed after
``idle_timeout``. On a node with ``[cluster]`` the pool is per *destination* (the shaping
bucket, as with Postfix's per-nexthop connection cache) and every connection holds one of
the destination's connection slots for as long as it is open — idle included — through
the :class:`ConnectionLeases` port: a delivery takes up its permit's slot
(:meth:`ConnectionLeases.begin`), its connection carries the slot into the pool at the
end, and the slot goes back when the connection closes. The cluster may ask the pool to
close idle connections at once (:meth:`Pool.evict`): a lease that could not be renewed,
or a node that lost Redis and is down to ``limit / nodes``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Container, Hashable
from typing import Protocol

from mtaserver.clock import Clock
from mtaserver.delivery.session import Session, open_session
from mtaserver.delivery.tls import TlsContexts
from mtaserver.model import RoutePolicy, SmtpReply


class Claim(Protocol):
    """One delivery's connection slot; the pool reports what its connection does."""

    @property
    def destination(self) -> str: ...

    def take(self) -> None:
        """The delivery goes on over an idle pooled connection."""
        ...

    def connecting(self) -> None:
        """The delivery opens a new connection."""
        ...

    def disconnected(self) -> None:
        """The delivery's connection closed (it may open another)."""
        ...

    def park(self) -> bool:
        """The delivery ends and its connection goes idle with the slot; False: close it."""
        ...

    def end(self) -> None:
        """The delivery ends (its slot goes back unless parked)."""
        ...


class ConnectionLeases(Protocol):
    """Cluster-wide connection slots (``mtaserver.cluster.pooled.ConnectionLeases``)."""

    def destination(self, domain: str) -> str:
        """The destination whose permit a delivery to ``domain`` holds."""
        ...

    async def begin(self, destination: str) -> Claim | None:
        """Take up the permit's slot; None: there is none (defer the delivery)."""
        ...

    def idle_closed(self, destination: str) -> None: ...

    def bind(self, pool: Pool) -> None: ...


class _NoClaim:
    """Alone: nothing to report."""

    destination = ""

    def take(self) -> None:
        pass

    def connecting(self) -> None:
        pass

    def disconnected(self) -> None:
        pass

    def park(self) -> bool:
        return True

    def end(self) -> None:
        pass


NO_CLAIM: Claim = _NoClaim()


class Pool:
    def __init__(
        self,
        clock: Clock,
        *,
        max_idle: int = 1000,
        reap_interval: float = 1.0,
        leases: ConnectionLeases | None = None,
    ) -> None:
        self._clock = clock
        self._max_idle = max_idle
        self._reap_interval = reap_interval
        self.leases = leases
        self._idle: dict[Hashable, list[Session]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()  # evicted connections saying QUIT
        self.closed = False

    def use_leases(self, leases: ConnectionLeases) -> None:
        self.leases = leases
        leases.bind(self)

    @property
    def size(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def _group(self, session: Session) -> Hashable:
        return session.dest if self.leases is not None else session.key

    # -- a delivery's connections -----------------------------------------------------------
    async def checkout(
        self,
        claim: Claim,
        mx: str,
        ip: str,
        port: int,
        policy: RoutePolicy,
        *,
        hostname: str,
        contexts: TlsContexts,
        addresses: Container[str] = (),
    ) -> Session | SmtpReply:
        """An idle connection (RSET) or a new one; with leases any idle connection to the
        claim's destination serves if it goes to one of the route's ``addresses`` (a
        reload may have changed them)."""
        group: Hashable = (mx, ip, port, policy.tls)
        if self.leases is not None:
            group = claim.destination
        idle = self._idle.get(group)
        try:
            while idle:
                session = idle.pop()
                if not idle:
                    self._idle.pop(group, None)
                claim.take()
                if (
                    session.idle_deadline < self._clock.monotonic()
                    or not session.connected
                    or (session.port, session.tls_mode) != (port, policy.tls)
                    or (session.ip != ip and session.ip not in addresses)
                ):
                    await session.close(min(policy.command_timeout, 5.0))
                    claim.disconnected()
                elif await session.reset(policy.command_timeout):
                    return session
                else:
                    claim.disconnected()
                idle = self._idle.get(group)
            claim.connecting()
            got = await open_session(mx, ip, port, policy, hostname=hostname, contexts=contexts)
        except BaseException:
            claim.disconnected()
            raise
        if isinstance(got, SmtpReply):
            claim.disconnected()
        else:
            got.dest = claim.destination
        return got

    def drop(self, session: Session, claim: Claim) -> None:
        """A broken connection: the socket goes now."""
        session.abort()
        claim.disconnected()

    async def close(self, session: Session, claim: Claim, timeout: float) -> None:
        try:
            await session.close(timeout)
        finally:
            claim.disconnected()

    async def checkin(self, session: Session, claim: Claim, policy: RoutePolicy) -> None:
        """Keep the connection for reuse (with its slot), or close it."""
        if (
            self.closed
            or not session.connected
            or session.transactions >= policy.max_messages_per_connection
            or policy.idle_timeout <= 0
            or self.size >= self._max_idle
            or not claim.park()
        ):
            await self.close(session, claim, min(policy.command_timeout, 5.0))
            return
        session.idle_deadline = self._clock.monotonic() + policy.idle_timeout
        self._idle.setdefault(self._group(session), []).append(session)
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    # -- idle connections -------------------------------------------------------------------
    def _closed_idle(self, session: Session) -> None:
        if self.leases is not None:
            self.leases.idle_closed(session.dest)

    def evict(self, destination: str, n: int) -> int:
        """Close up to ``n`` idle connections to ``destination`` now (the oldest first)."""
        idle = self._idle.get(destination, [])
        out = idle[:n]
        del idle[:n]
        if not idle:
            self._idle.pop(destination, None)
        for s in out:
            self._closed_idle(s)
            self._quit_later(s)
        return len(out)

    def _quit_later(self, session: Session) -> None:
        task = asyncio.get_running_loop().create_task(session.close(timeout=5.0))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def drain(self) -> None:
        """Close every idle connection (QUIT) and stop the reaper."""
        self.closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        sessions = [s for lst in self._idle.values() for s in lst]
        self._idle.clear()
        for s in sessions:
            self._closed_idle(s)
        if sessions or self._closing:
            await asyncio.gather(*(s.close(timeout=5.0) for s in sessions), *self._closing,
                                 return_exceptions=True)  # fmt: skip

    async def _reap(self) -> None:
        """Close idle sessions past their deadline (owned task, cancelled by drain)."""
        while True:
            await self._clock.sleep(self._reap_interval)
            now = self._clock.monotonic()
            expired: list[Session] = []
            for key in list(self._idle):
                keep = [s for s in self._idle[key] if s.idle_deadline >= now and s.connected]
                expired.extend(s for s in self._idle[key] if s not in keep)
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]
            for s in expired:
                self._closed_idle(s)
            if expired:
                await asyncio.gather(*(s.close(timeout=5.0) for s in expired))
