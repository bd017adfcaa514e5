"""The delivery agent: one job → routing → MX hosts in turn → per-recipient results.

Mechanism only (Postfix ``smtp(8)``): it never touches the queue; the scheduler applies
policy to the ``DeliveryReport`` it returns. Connections are pooled (:mod:`.pool`: per MX
host address and TLS mode, or per destination in a cluster, where each holds a connection
lease while open) and reused up to ``policy.max_messages_per_connection`` transactions,
with RSET before each reuse; idle ones are closed after ``policy.idle_timeout``.

``policy.deadline`` ends an attempt in time (before the job's lease runs out): no new
transaction starts in its last moments, one still in flight is abandoned when it passes,
and the report keeps every outcome already known — a recipient the remote accepted in an
earlier transaction stays delivered, so the retry does not send it twice. Only the
recipients in flight or not yet tried are deferred with ``CUT_SHORT``.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Protocol

from mtaserver.clock import Clock
from mtaserver.delivery.pool import NO_CLAIM, Claim, ConnectionLeases, Pool
from mtaserver.delivery.replies import disposition_of, local, retry_hint
from mtaserver.delivery.session import Session
from mtaserver.delivery.tls import TlsContexts
from mtaserver.log import get_logger, kv
from mtaserver.model import (
    DeliveryJob,
    DeliveryReport,
    Disposition,
    JobRecipient,
    RecipientResult,
    Route,
    RouteError,
    RoutePolicy,
    SmtpReply,
)

log = get_logger("delivery")

CUT_SHORT = local("4.4.2", "delivery attempt cut short: it outlasted its lease")
MIN_TX_TIME = 1.0  # no new transaction with less time left (or a quarter of the attempt's)
NO_SLOT = local("4.4.5", "no connection slot of the cluster for this destination")


class Resolver(Protocol):
    """Where mail for a domain goes; app wires ``mtaserver.mx.DnsResolver``."""

    async def route(self, domain: str) -> Route | RouteError:
        """Hosts to try for mail to ``domain`` (MX lookup)."""
        ...

    async def host(self, name: str) -> Route | RouteError:
        """Addresses of one named host (a smarthost): no MX lookup."""
        ...


class ReturnPath(Protocol):
    """Per-recipient envelope sender (VERP); app wires ``mtaserver.verp.Verp``."""

    def address(self, queue_id: str, idx: int) -> str: ...


@dataclass(frozen=True, slots=True)
class _Tx:
    sender: str
    recipients: tuple[JobRecipient, ...]


def _split_relay(relay: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[ip]:port`` or ``[v6]`` → (host, port)."""
    relay = relay.strip()
    if relay.startswith("["):
        host, _, rest = relay[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if relay.count(":") == 1:
        host, _, port = relay.partition(":")
        return host, int(port)
    return relay, default_port


class DeliveryAgent:
    """Delivers ``DeliveryJob``s over SMTP; ``deliver`` never raises for SMTP/network trouble."""

    def __init__(
        self,
        resolver: Resolver,
        clock: Clock,
        *,
        hostname: str,
        return_path: ReturnPath | None = None,
        ca_file: str | None = None,
        max_addresses: int = 10,
        max_idle_sessions: int = 1000,
        reap_interval: float = 1.0,
    ) -> None:
        self._resolver = resolver
        self._clock = clock
        self._hostname = hostname
        self._return_path = return_path
        self._contexts = TlsContexts(ca_file)
        self._max_addresses = max_addresses
        self._pool = Pool(clock, max_idle=max_idle_sessions, reap_interval=reap_interval)

    # -- public ----------------------------------------------------------------------
    def use_leases(self, leases: ConnectionLeases) -> None:
        """In a cluster: every connection holds a slot of its destination while open."""
        self._pool.use_leases(leases)

    def reconfigure(self, *, hostname: str, ca_file: str | None, max_addresses: int) -> None:
        """Settings from a reloaded config, for connections opened from now on (pooled
        connections keep the EHLO name and TLS they were opened with)."""
        self._hostname = hostname
        self._contexts = TlsContexts(ca_file)
        self._max_addresses = max_addresses

    async def deliver(self, job: DeliveryJob, policy: RoutePolicy) -> DeliveryReport:
        started = self._clock.now()
        results: dict[int, RecipientResult] = {}  # filled as the remote answers
        stop_at: float | None = None  # the deadline in event-loop time
        if policy.deadline is not None:
            stop_at = asyncio.get_running_loop().time() + (policy.deadline - started)
        missing = local("4.3.0", "no result from delivery")
        limit = asyncio.timeout_at(stop_at)
        try:
            async with limit:
                await self._deliver(job, policy, results, stop_at)
        except asyncio.CancelledError:
            raise
        except Exception:  # the deadline, or a bug: either way the job must defer
            if limit.expired():
                missing = CUT_SHORT
            else:
                missing = local("4.3.0", "local error in delivery")
                log.exception(kv(queue_id=job.queue_id, status="error", domain=job.domain))
        # Outcomes already known stand (delivered stays delivered); the rest defer.
        out = tuple(
            results.get(r.idx) or self._result(r, missing, None, disposition=Disposition.DEFERRED)
            for r in job.recipients
        )
        cut = sum(r.reply is CUT_SHORT for r in out)
        if cut:
            log.info(kv(queue_id=job.queue_id, domain=job.domain, status="cut-short",
                        deferred=cut, known=len(out) - cut))  # fmt: skip
        return DeliveryReport(job.queue_id, job.domain, out, started, self._clock.now())

    async def aclose(self) -> None:
        """Close every idle connection (QUIT) and stop the idle reaper."""
        await self._pool.drain()

    @property
    def idle_sessions(self) -> int:
        return self._pool.size

    # -- one job ---------------------------------------------------------------------
    async def _deliver(
        self,
        job: DeliveryJob,
        policy: RoutePolicy,
        results: dict[int, RecipientResult],
        stop_at: float | None,
    ) -> None:
        if not job.recipients:
            return
        if policy.relay_host:
            host, port = _split_relay(policy.relay_host, policy.port)
            route = await self._resolver.host(host)
        else:
            port = policy.port
            route = await self._resolver.route(job.domain)
        if isinstance(route, RouteError):
            log.info(
                kv(
                    queue_id=job.queue_id,
                    domain=job.domain,
                    status="route-failed",
                    reply=str(route.reply),
                ),
            )
            for r in job.recipients:
                results[r.idx] = self._result(r, route.reply, None, disposition=route.disposition)
            return
        await self._walk(job, policy, route, port, results, stop_at)

    def _transactions(self, job: DeliveryJob) -> list[_Tx]:
        if self._return_path is not None and job.sender:
            return [
                _Tx(self._return_path.address(job.queue_id, r.idx), (r,)) for r in job.recipients
            ]
        return [_Tx(job.sender, job.recipients)]

    async def _walk(
        self,
        job: DeliveryJob,
        policy: RoutePolicy,
        route: Route,
        port: int,
        results: dict[int, RecipientResult],
        stop_at: float | None,
    ) -> None:
        """Each transaction in turn over the MX addresses; ``results`` gets each answer as it
        comes (the caller keeps them when the deadline cuts the walk short). In a cluster
        the delivery holds its permit's connection slot throughout."""
        claim = NO_CLAIM
        leases = self._pool.leases
        if leases is not None:
            got = await leases.begin(leases.destination(job.domain))
            if got is None:
                for r in job.recipients:
                    results[r.idx] = self._result(
                        r, NO_SLOT, None, disposition=Disposition.DEFERRED
                    )
                return
            claim = got
        try:
            await self._walk_on(claim, job, policy, route, port, results, stop_at)
        finally:
            claim.end()

    async def _walk_on(
        self,
        claim: Claim,
        job: DeliveryJob,
        policy: RoutePolicy,
        route: Route,
        port: int,
        results: dict[int, RecipientResult],
        stop_at: float | None,
    ) -> None:
        targets = [(h.name, ip) for h in route.hosts for ip in h.addresses]
        targets = targets[: self._max_addresses]
        addresses = {ip for _, ip in targets}
        pending = self._transactions(job)
        last = local("4.4.1", f"no MX host of {route.domain} could be reached")
        ti = 0
        session: Session | None = None
        budget = len(targets) + len(pending)  # connection attempts, so nothing loops
        loop = asyncio.get_running_loop()
        last_start = math.inf  # loop time after which no transaction starts
        if stop_at is not None:
            last_start = stop_at - min(MIN_TX_TIME, max(stop_at - loop.time(), 0.0) / 4)
        cut = False
        inflight: _Tx | None = None
        try:
            while pending:
                if loop.time() >= last_start:
                    cut = True  # it could not finish: leave it for the next attempt
                    break
                if session is None:
                    if ti >= len(targets) or budget <= 0:
                        break
                    budget -= 1
                    mx, ip = targets[ti]
                    got = await self._pool.checkout(
                        claim, mx, ip, port, policy, hostname=self._hostname,
                        contexts=self._contexts, addresses=addresses,
                    )  # fmt: skip
                    if isinstance(got, SmtpReply):
                        log.info(
                            kv(
                                queue_id=job.queue_id,
                                mx=mx,
                                ip=ip,
                                status="connect-failed",
                                reply=str(got),
                            ),
                        )
                        last = got
                        ti += 1
                        continue
                    session = got
                tx = inflight = pending[0]
                out = await session.transact(
                    tx.sender, [r.address for r in tx.recipients], job.data, policy
                )
                inflight = None
                if out.elsewhere:
                    last = out.replies[0]
                    log.info(
                        kv(
                            queue_id=job.queue_id,
                            mx=session.mx,
                            ip=session.ip,
                            status="session-failed",
                            reply=str(last),
                        )
                    )
                    self._pool.drop(session, claim)
                    session = None
                    ti += 1
                    continue
                pending.pop(0)
                for r, reply in zip(tx.recipients, out.replies, strict=True):
                    results[r.idx] = self._result(r, reply, session)
                if not out.usable:
                    self._pool.drop(session, claim)
                    session = None
                elif session.transactions >= policy.max_messages_per_connection:
                    await self._pool.close(session, claim, policy.command_timeout)
                    session = None
        except BaseException:  # cancelled (deadline, drain) or a bug: never leak the socket
            if session is not None:
                self._pool.drop(session, claim)
                if inflight is not None:  # RCPT refusals already given still count
                    for r, answer in zip(inflight.recipients, session.answers, strict=False):
                        if answer is not None:
                            results[r.idx] = self._result(r, answer, session)
            raise
        if session is not None:
            await self._pool.checkin(session, claim, policy)
        if cut:
            last = CUT_SHORT
        # Every host tried and none took the transaction: defer with the last reply
        # (even a 5xx greeting — another attempt may reach a healthier host).
        for tx in pending:
            for r in tx.recipients:
                results[r.idx] = self._result(
                    r,
                    last,
                    None,
                    mx=targets[min(ti, len(targets)) - 1] if targets and not cut else None,
                    disposition=Disposition.DEFERRED,
                )

    def _result(
        self,
        r: JobRecipient,
        reply: SmtpReply,
        session: Session | None,
        mx: tuple[str, str] | None = None,
        disposition: Disposition | None = None,
    ) -> RecipientResult:
        return RecipientResult(
            idx=r.idx,
            address=r.address,
            disposition=disposition or disposition_of(reply),
            reply=reply,
            mx=session.mx if session else (mx[0] if mx else None),
            ip=session.ip if session else (mx[1] if mx else None),
            tls=session.tls_version if session else None,
            cipher=session.cipher if session else None,
            retry_after=retry_hint(reply.text) if not 200 <= reply.code < 300 else None,
        )
