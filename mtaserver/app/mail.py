"""The mail path's services: submission, DKIM, delivery, the scheduler, inbound bounces.

Each builder takes the components it uses, already built (``wiring`` builds each once, in
dependency order), and returns the :class:`~mtaserver.app.service.Service` that runs and
reloads them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mtaserver.app.service import ListeningService, Service, SimpleService
from mtaserver.auth import Authenticator, AuthThrottle
from mtaserver.classify import classify
from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.config.shaping import load_builtin
from mtaserver.config.submission import SubmissionConfig
from mtaserver.delivery import DeliveryAgent
from mtaserver.diskspace import FreeSpace
from mtaserver.dkim import DkimSigner, KeySet
from mtaserver.dkim.keys import load_keyset
from mtaserver.errors import MtaError
from mtaserver.log import get_logger, kv
from mtaserver.metrics import Agent, Metrics
from mtaserver.model import Route
from mtaserver.mx import DnsResolver
from mtaserver.pipeline import Pipeline, TrackingOptions
from mtaserver.scheduler import Scheduler, SyncBounce
from mtaserver.scheduler.ports import SharedLimits
from mtaserver.shaper import Shaper
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.users import UserStore
from mtaserver.submission import RateLimiter, SubmissionHandler, SubmissionServer
from mtaserver.verp import Verp

if TYPE_CHECKING:  # built by wiring only when [oauth] / [tracking] are on
    from mtaserver.oauth import BearerAuthenticator
    from mtaserver.tracking.mailto import MailUnsubscribe
    from mtaserver.tracking.tracker import Tracker

log = get_logger("app")


class UserRates:
    """``[submission] user_rate``: one bucket per user for every way mail comes in.

    SMTP submission and the HTTP send API spend from the same buckets, so a user cannot
    double its rate by sending over both. ``limiter`` is None while no rate is set.
    """

    def __init__(self, sub: SubmissionConfig, clock: Clock) -> None:
        self._clock = clock
        self.limiter: RateLimiter | None = None
        self.apply(sub)

    def apply(self, sub: SubmissionConfig) -> None:
        """The rate in force from now on (SIGHUP); buckets keep what each user spent."""
        if sub.user_rate is None:
            self.limiter = None
        elif self.limiter is None:
            self.limiter = RateLimiter(sub.user_rate, sub.user_burst, self._clock)
        else:
            self.limiter.reconfigure(sub.user_rate, sub.user_burst)


@dataclass(frozen=True)
class MailParts:
    """What submission and the pipeline share: storage, policy and the signing stages."""

    spool: Spool
    users: UserStore
    suppressions: SuppressionStore
    signer: DkimSigner
    tracker: Tracker | None
    metrics: Metrics
    space: FreeSpace
    clock: Clock
    user_rates: UserRates  # shared by submission and the HTTP API


def _track_defaults(cfg: Config, user: str | None) -> TrackingOptions:
    d = cfg.tracking.defaults_for(user)
    return TrackingOptions(d.opens, d.clicks, d.unsubscribe)


def submission_service(cfg: Config, parts: MailParts) -> Service:
    """SMTP submission → pipeline (cleanup, tracking, DKIM) → spool.

    On SIGHUP the limits and policy are rebuilt from the new config for sessions that
    connect afterwards; sessions in progress keep theirs. The AUTH throttle, per-user rate
    buckets and per-IP connection counts carry over with their new settings.
    """
    sub = cfg.submission
    clock = parts.clock
    tls_context = cfg.tls.server_context() if cfg.tls.enabled else None
    authenticator = Authenticator(parts.users, clock=clock)
    throttle = AuthThrottle(sub.auth, clock)
    rates = parts.user_rates
    oauth_cfg, bearer = cfg.oauth, _bearer(cfg, parts)  # swapped on SIGHUP

    def handler_for(cfg: Config) -> SubmissionHandler:
        sub = cfg.submission
        pipeline = Pipeline(
            spool=parts.spool,
            new_queue_id=new_queue_id,
            hostname=cfg.server.hostname,
            max_header_size=sub.max_header_size,
            max_mime_depth=sub.max_mime_depth,
            tracker=parts.tracker,
            signer=parts.signer,
            tracking_defaults=lambda user: _track_defaults(cfg, user),
        )
        return SubmissionHandler(
            submitter=pipeline,
            authenticator=authenticator,
            throttle=throttle,
            clock=clock,
            max_recipients=sub.max_recipients,
            max_header_size=sub.max_header_size,
            user_rate=rates.limiter,
            suppressions=parts.suppressions,
            drop_suppressed=cfg.inbound.suppression.at_rcpt == "accept-and-drop",
            observer=parts.metrics,
            space=parts.space,
            bearer=bearer,
        )

    server = SubmissionServer(
        sub, hostname=cfg.server.hostname, handler=handler_for(cfg), tls_context=tls_context
    )

    async def start() -> None:
        await server.start()

    async def run() -> None:
        await asyncio.Event().wait()  # sessions run on the loop; cancelled at stop

    async def drain(timeout: float) -> None:
        await server.close(timeout)
        authenticator.close()
        if bearer is not None:
            await bearer.aclose()

    async def reload(new: Config) -> None:
        # Renewed certificate files take effect for the next handshake on every listener.
        if tls_context is not None and new.tls.cert and new.tls.key:
            tls_context.load_cert_chain(str(new.tls.cert), str(new.tls.key))
        sub = new.submission
        throttle.settings = sub.auth
        rates.apply(sub)
        nonlocal oauth_cfg, bearer
        if new.oauth != oauth_cfg:  # keep the cached keys unless the issuers changed
            old, bearer, oauth_cfg = bearer, _bearer(new, parts), new.oauth
            if old is not None:
                await old.aclose()
        server.reconfigure(sub, handler_for(new))
        log.info(kv(event="submission_reloaded", max_message_size=sub.max_message_size,
                    max_recipients=sub.max_recipients,
                    at_rcpt=new.inbound.suppression.at_rcpt))  # fmt: skip

    async def stop_accepting() -> None:
        server.stop_accepting()

    return ListeningService("submission", start, run, drain, reload, stop_accepting)


def _bearer(cfg: Config, parts: MailParts) -> BearerAuthenticator | None:
    """SMTP AUTH OAUTHBEARER/XOAUTH2 when ``[oauth]`` has issuers."""
    if not cfg.oauth.enabled:
        return None
    from mtaserver.oauth import BearerAuthenticator, TokenVerifier  # PyJWT: [oauth] only

    return BearerAuthenticator(TokenVerifier(cfg.oauth, parts.clock), parts.users)


def dkim_service(signer: DkimSigner) -> Service:
    """On SIGHUP load the new keys, then swap them into the signer in one assignment."""
    log_keyset(signer.keyset)

    async def reload(config: Config) -> None:
        keyset = await asyncio.to_thread(load_keyset, config.dkim)
        signer.reload(keyset)
        log_keyset(keyset)

    return SimpleService("dkim", on_reload=reload)


def log_keyset(keyset: KeySet) -> None:
    signing = [k for keys in keyset.signing.values() for k in keys]
    log.info(kv(event="dkim_keys_loaded", keys=len(keyset.keys),
                signing=",".join(f"{k.domain}/{k.selector}" for k in signing) or "-"))  # fmt: skip


def build_resolver(cfg: Config, clock: Clock) -> DnsResolver:
    d = cfg.delivery
    return DnsResolver(clock, nameservers=d.nameservers, timeout=d.dns_timeout, ipv6=d.ipv6)


def build_agent(
    cfg: Config, resolver: DnsResolver, verp: Verp | None, clock: Clock
) -> DeliveryAgent:
    d = cfg.delivery
    return DeliveryAgent(
        resolver,
        clock,
        hostname=d.hostname or cfg.server.hostname,
        return_path=verp,
        ca_file=str(d.ca_file) if d.ca_file else None,
        max_addresses=d.max_mx_addresses,
    )


def delivery_service(resolver: DnsResolver, agent: DeliveryAgent) -> Service:
    """The agent has no loop of its own: the scheduler calls ``deliver``; draining closes the
    idle pooled connections. On SIGHUP the resolver (name servers, timeout, IPv6) and the
    agent (EHLO name, CA file, address cap) take the new settings for new lookups and
    connections; per-destination policy is the scheduler's reload.
    """

    async def drain(timeout: float) -> None:
        await agent.aclose()

    async def reload(new: Config) -> None:
        nd = new.delivery
        resolver.reconfigure(nameservers=nd.nameservers, timeout=nd.dns_timeout, ipv6=nd.ipv6)
        agent.reconfigure(
            hostname=nd.hostname or new.server.hostname,
            ca_file=str(nd.ca_file) if nd.ca_file else None,
            max_addresses=nd.max_mx_addresses,
        )
        servers = ",".join(f"{h}:{p}" for h, p in nd.nameservers) or "system"
        log.info(kv(event="delivery_reloaded", nameservers=servers, dns_timeout=nd.dns_timeout))

    return SimpleService("delivery", on_drain=drain, on_reload=reload)


def build_shaper(cfg: Config, clock: Clock) -> Shaper:
    dests, rules = load_builtin() if cfg.shaping.builtin else ((), ())
    return Shaper(
        cfg.shaping,
        clock,
        max_connections=cfg.delivery.max_connections,
        builtin_destinations=dests,
        builtin_rules=rules,
    )


class _MxHosts:
    """The resolver's MX host names, for grouping domains by provider in the shaper."""

    def __init__(self, resolver: DnsResolver) -> None:
        self._resolver = resolver

    async def mx_hosts(self, domain: str) -> tuple[str, ...]:
        route = await self._resolver.route(domain)
        if isinstance(route, Route) and not route.implicit:
            return tuple(h.name for h in route.hosts)
        return ()


def scheduler_service(
    cfg: Config,
    spool: Spool,
    agent: Agent,
    shaper: Shaper,
    resolver: DnsResolver,
    suppressions: SuppressionStore,
    clock: Clock,
    shared: SharedLimits | None = None,
) -> Service:
    """Claims due work and runs it through the shaper into the delivery agent
    (and, with ``[cluster]``, through the limits shared with the other nodes)."""
    workers = cfg.delivery.max_connections

    async def on_bounce(b: SyncBounce) -> None:
        await suppressions.apply(
            b.address, b.reason, sender_domain=b.sender_domain, source="sync", reply=b.reply,
            queue_id=b.queue_id,
        )  # fmt: skip

    scheduler = Scheduler(
        spool=spool,
        agent=agent,
        shaper=shaper,
        clock=clock,
        retry=cfg.shaping.retry,
        settings=cfg.shaping.scheduler,
        route=cfg.delivery.route_policy(),
        classify=classify,
        workers=workers,
        lease=cfg.delivery.lease,
        hostname=cfg.delivery.hostname or cfg.server.hostname,
        new_queue_id=new_queue_id,
        send_dsn=cfg.shaping.send_dsn,
        no_dsn_users=cfg.shaping.no_dsn_users,
        mx=None if cfg.delivery.relay_host else _MxHosts(resolver),
        on_bounce=on_bounce,
        shared=shared,
    )

    async def reload(config: Config) -> None:
        dests, rules = load_builtin() if config.shaping.builtin else ((), ())
        # the worker pool is sized at start: a new global cap applies up to that size
        shaper.reconfigure(
            config.shaping,
            max_connections=min(config.delivery.max_connections, workers),
            builtin_destinations=dests,
            builtin_rules=rules,
        )
        scheduler.reconfigure(
            retry=config.shaping.retry,
            settings=config.shaping.scheduler,
            route=config.delivery.route_policy(),
            send_dsn=config.shaping.send_dsn,
            no_dsn_users=config.shaping.no_dsn_users,
        )
        log.info(kv(event="shaping_reloaded", destinations=len(config.shaping.destinations)))

    return SimpleService(
        "scheduler", on_run=scheduler.run, on_drain=scheduler.drain, on_reload=reload
    )


def inbound_service(
    cfg: Config,
    spool: Spool,
    suppressions: SuppressionStore,
    verp: Verp | None,
    mail_unsubscribe: MailUnsubscribe | None,
    space: FreeSpace,
    clock: Clock,
) -> Service:
    """Suppression list (always; expired entries purged hourly) and the port-25 bounce
    listener (when ``[inbound] listen`` and ``bounce_domain`` are set)."""

    async def purge() -> None:
        while True:
            try:
                n = await suppressions.purge_expired()
                if n:
                    log.info(kv(event="suppressions_expired", count=n))
            except MtaError as exc:
                log.error(kv(event="suppression_purge_failed", error=str(exc)))
            await clock.sleep(3600)

    inbound = cfg.inbound
    if inbound.listen is None or not inbound.bounce_domain or verp is None:
        return SimpleService("suppression", on_run=purge)
    from mtaserver.inbound import BounceProcessor, InboundHandler, InboundServer  # port 25 only

    processor = BounceProcessor(
        spool, suppressions, verp, inbound.bounce_domain, clock, inbound.parse_timeout
    )
    server = InboundServer(
        inbound,
        InboundHandler(inbound, verp, processor.process, mail_unsubscribe, space=space),
        clock,
        cfg.server.hostname,
        cfg.tls.server_context() if cfg.tls.enabled else None,
    )

    async def drain(timeout: float) -> None:
        await server.stop()

    async def start() -> None:
        await server.start()

    async def stop_accepting() -> None:
        server.stop_accepting()

    return ListeningService("inbound", on_start=start, on_run=purge, on_drain=drain,
                            on_stop_accepting=stop_accepting)  # fmt: skip
