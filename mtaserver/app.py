"""The composition root: builds every stage from config and runs them in one TaskGroup.

Stages never import each other; this module is the only place that knows them all. Each
stage is wrapped as a :class:`Service` — ``start`` binds sockets (before READY=1), ``run`` is
its long-lived body, ``drain`` stops accepting and lets work in progress finish,
``reload`` takes a new config on SIGHUP.

Lifecycle: SIGTERM/SIGINT → STOPPING=1, every service drains (bounded by
``server.drain_timeout``), tasks are cancelled, leases released, the database closed, exit 0.
SIGHUP → RELOADING=1, the config file is re-read; a bad file is logged and the old config
kept; otherwise each service reloads (TLS certificates, DKIM keys, limits), then READY=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import uvloop

from mtaserver.admin.deps import AdminDeps
from mtaserver.admin.routes import AdminApi
from mtaserver.admin.server import AdminServer, build_web_app
from mtaserver.auth import Authenticator, AuthThrottle, hash_password
from mtaserver.classify import classify
from mtaserver.clock import Clock, SystemClock
from mtaserver.config import Config, load_config
from mtaserver.config.restart import keep_restart_keys
from mtaserver.config.shaping import load_builtin
from mtaserver.crypto import codec_for
from mtaserver.delivery import DeliveryAgent
from mtaserver.devsetup import read_secret, write_private
from mtaserver.diskspace import FreeSpace, Reserve
from mtaserver.dkim import DkimSigner, KeySet
from mtaserver.dkim.keys import load_keyset
from mtaserver.errors import ConfigError, MtaError, StorageError
from mtaserver.inbound import BounceProcessor, InboundHandler, InboundServer
from mtaserver.log import get_logger, kv, set_level, setup_logging
from mtaserver.metrics import Agent, Metrics, TimedAgent
from mtaserver.model import Route
from mtaserver.mx import DnsResolver
from mtaserver.notify import Notifier
from mtaserver.pipeline import Pipeline, TrackingOptions
from mtaserver.retention import Retention
from mtaserver.scheduler import Scheduler
from mtaserver.shaper import Shaper
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.outbox import WebhookOutbox
from mtaserver.storage.sqlite.privacy import SqlitePrivacy
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.reports import Reports
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.tokens import TokenStore
from mtaserver.storage.sqlite.tracking import SqlTrackingStore
from mtaserver.storage.sqlite.users import UserStore
from mtaserver.submission import RateLimiter, SubmissionHandler, SubmissionServer, Suppressions
from mtaserver.supervisor import first_fatal, supervise
from mtaserver.tracking.bots import BotDetector, load_rules
from mtaserver.tracking.mailto import MailUnsubscribe
from mtaserver.tracking.privacy import IpPrivacy
from mtaserver.tracking.recorder import Recorder
from mtaserver.tracking.tokens import TokenCodec, load_secrets
from mtaserver.tracking.tracker import Tracker
from mtaserver.tracking.web import TrackingWeb
from mtaserver.verp import Verp
from mtaserver.webhooks import WebhookDispatcher

log = get_logger("app")
METRICS_TAIL_EVERY = 10.0  # seconds between event-log tails for metrics
FILE_CHECK_EVERY = 5.0  # seconds between checks that the database file is still ours


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def drain(self, timeout: float) -> None: ...

    async def reload(self, config: Config) -> None: ...


@dataclass
class SimpleService:
    """Adapts plain callables to :class:`Service` for small stages."""

    name: str
    on_start: Callable[[], Awaitable[None]] | None = None
    on_run: Callable[[], Awaitable[None]] | None = None
    on_drain: Callable[[float], Awaitable[None]] | None = None
    on_reload: Callable[[Config], Awaitable[None]] | None = None

    async def start(self) -> None:
        if self.on_start:
            await self.on_start()

    async def run(self) -> None:
        if self.on_run:
            await self.on_run()

    async def drain(self, timeout: float) -> None:
        if self.on_drain:
            await self.on_drain(timeout)

    async def reload(self, config: Config) -> None:
        if self.on_reload:
            await self.on_reload(config)


@dataclass
class Core:
    """What every stage may be wired to."""

    config: Config
    db: Database
    spool: Spool
    clock: Clock
    notifier: Notifier
    space: FreeSpace  # free space on the database's filesystem (452 at MAIL when low)
    reserve: Reserve  # space held back so a restart on a full disk can open the database
    users: UserStore  # submission AUTH and the admin API
    suppressions: SuppressionStore  # submission, delivery, inbound, tracking and admin share it
    verp: Verp | None  # when [inbound] bounce_domain is set; delivery and inbound share it
    services: list[Service] = field(default_factory=list)
    signer: DkimSigner | None = None  # built by build_services; the submission pipeline signs
    tracker: Tracker | None = None  # built by build_services when [tracking] base_url is set
    metrics: Metrics | None = None  # built by build_services; stages report to it
    resolver: DnsResolver | None = None  # built by build_services (delivery)
    agent: DeliveryAgent | None = None  # built by build_services (delivery); the scheduler uses it
    mail_unsubscribe: MailUnsubscribe | None = None  # tracking builds it; inbound accepts for it


async def build_services(core: Core) -> list[Service]:
    """Construct every stage the config enables, in start order."""
    core.metrics = Metrics(
        core.spool,
        EventLog(core.db),
        top_destinations=core.config.admin.top_destinations,
        clock=core.clock.now,
    )
    core.db.on_commit.append(core.metrics.db_committed)
    services: list[Service] = [
        _dkim_service(core),
        _delivery_service(core),
        _scheduler_service(core),
    ]
    tracking = _tracking_service(core)
    if tracking is not None:
        services.append(tracking)
    services.append(_inbound_service(core))
    services += _operations_services(core)
    sub = core.config.submission
    if sub.listen or sub.listen_tls or sub.listen_plain:
        services.append(
            submission_service(core, suppressions=core.suppressions)
        )  # after dkim, tracking
    admin = _admin_service(core, core.metrics)
    if admin is not None:
        services.append(admin)
    return services


def _track_defaults(cfg: Config, user: str | None) -> TrackingOptions:
    d = cfg.tracking.defaults_for(user)
    return TrackingOptions(d.opens, d.clicks, d.unsubscribe)


def submission_service(
    core: Core,
    *,
    suppressions: Suppressions | None = None,
) -> Service:
    """SMTP submission → pipeline (cleanup, tracking, DKIM with ``core.signer``) → spool.

    On SIGHUP the limits and policy are rebuilt from the new config for sessions that
    connect afterwards; sessions in progress keep theirs. The AUTH throttle, per-user rate
    buckets and per-IP connection counts carry over with their new settings.
    """
    cfg = core.config
    sub = cfg.submission
    tls_context = cfg.tls.server_context() if cfg.tls.enabled else None
    authenticator = Authenticator(core.users, clock=core.clock)
    throttle = AuthThrottle(sub.auth, core.clock)
    user_rate = RateLimiter(sub.user_rate, sub.user_burst, core.clock) if sub.user_rate else None

    def handler_for(cfg: Config) -> SubmissionHandler:
        sub = cfg.submission
        pipeline = Pipeline(
            spool=core.spool,
            new_queue_id=new_queue_id,
            hostname=cfg.server.hostname,
            max_header_size=sub.max_header_size,
            max_mime_depth=sub.max_mime_depth,
            tracker=core.tracker,
            signer=core.signer,
            tracking_defaults=lambda user: _track_defaults(cfg, user),
        )
        return SubmissionHandler(
            submitter=pipeline,
            authenticator=authenticator,
            throttle=throttle,
            clock=core.clock,
            max_recipients=sub.max_recipients,
            max_header_size=sub.max_header_size,
            user_rate=user_rate,
            suppressions=suppressions,
            drop_suppressed=cfg.inbound.suppression.at_rcpt == "accept-and-drop",
            observer=core.metrics,
            space=core.space,
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

    async def reload(new: Config) -> None:
        nonlocal user_rate
        # Renewed certificate files take effect for the next handshake on every listener.
        if tls_context is not None and new.tls.cert and new.tls.key:
            tls_context.load_cert_chain(str(new.tls.cert), str(new.tls.key))
        sub = new.submission
        throttle.settings = sub.auth
        if sub.user_rate is None:
            user_rate = None
        elif user_rate is None:
            user_rate = RateLimiter(sub.user_rate, sub.user_burst, core.clock)
        else:
            user_rate.reconfigure(sub.user_rate, sub.user_burst)
        server.reconfigure(sub, handler_for(new))
        log.info(kv(event="submission_reloaded", max_message_size=sub.max_message_size,
                    max_recipients=sub.max_recipients,
                    at_rcpt=new.inbound.suppression.at_rcpt))  # fmt: skip

    return SimpleService("submission", start, run, drain, reload)


def _operations_services(core: Core) -> list[Service]:
    """Key reload, webhooks, retention: none of them is on the mail path."""
    return [
        _storage_service(core),
        WebhookDispatcher(core.db, core.config.webhooks, core.clock),
        Retention(
            core.spool, EventLog(core.db), WebhookOutbox(core.db), core.config.retention, core.clock
        ),
    ]


def _storage_service(core: Core) -> Service:
    """Watches that the database file is still the one opened (fatal otherwise) and keeps
    the start-up reserve (``diskspace.Reserve``); on SIGHUP,
    re-reads the encryption key file (rotation: a new current key) and ``min_free``."""

    async def run() -> None:
        while True:
            core.db.check_file()
            await asyncio.to_thread(core.reserve.ensure, core.space)
            await core.clock.sleep(FILE_CHECK_EVERY)

    async def reload(config: Config) -> None:
        core.space.min_free = config.storage.min_free
        codec = await asyncio.to_thread(codec_for, config.storage.encryption_key_file)
        core.spool.codec = codec
        core.spool.keep_bodies = config.retention.bodies
        log.info(kv(event="storage_keys_loaded",
                    current=getattr(codec, "current", None) or "-"))  # fmt: skip

    return SimpleService("storage", on_run=run, on_reload=reload)


def _dkim_service(core: Core) -> Service:
    """Build the signer; on SIGHUP load the new keys, then swap them in one assignment."""
    signer = DkimSigner(load_keyset(core.config.dkim), core.clock)
    core.signer = signer
    _log_keyset(signer.keyset)

    async def reload(config: Config) -> None:
        keyset = await asyncio.to_thread(load_keyset, config.dkim)
        signer.reload(keyset)
        _log_keyset(keyset)

    return SimpleService("dkim", on_reload=reload)


def _delivery_service(core: Core) -> Service:
    """MX resolver and SMTP delivery agent (VERP when a bounce domain is set).

    The agent has no loop of its own: the scheduler calls ``deliver``; draining closes the
    idle pooled connections. On SIGHUP the resolver (name servers, timeout, IPv6) and the
    agent (EHLO name, CA file, address cap) take the new settings for new lookups and
    connections; per-destination policy is the scheduler's reload.
    """
    cfg = core.config
    d = cfg.delivery
    resolver = DnsResolver(
        core.clock, nameservers=d.nameservers, timeout=d.dns_timeout, ipv6=d.ipv6
    )
    core.resolver = resolver
    agent = DeliveryAgent(
        core.resolver,
        core.clock,
        hostname=d.hostname or cfg.server.hostname,
        return_path=core.verp,
        ca_file=str(d.ca_file) if d.ca_file else None,
        max_addresses=d.max_mx_addresses,
    )
    core.agent = agent

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


def _inbound_service(core: Core) -> Service:
    """Suppression list (always; expired entries purged hourly) and the port-25 bounce
    listener (when ``[inbound] listen`` is set)."""
    cfg = core.config
    store = core.suppressions

    async def purge() -> None:
        while True:
            try:
                n = await store.purge_expired()
                if n:
                    log.info(kv(event="suppressions_expired", count=n))
            except MtaError as exc:
                log.error(kv(event="suppression_purge_failed", error=str(exc)))
            await core.clock.sleep(3600)

    if cfg.inbound.listen is None or not cfg.inbound.bounce_domain:
        return SimpleService("suppression", on_run=purge)
    assert core.verp is not None  # built whenever bounce_domain is set
    processor = BounceProcessor(
        core.spool,
        store,
        core.verp,
        cfg.inbound.bounce_domain,
        core.clock,
        cfg.inbound.parse_timeout,
    )
    server = InboundServer(
        cfg.inbound,
        InboundHandler(
            cfg.inbound, core.verp, processor.process, core.mail_unsubscribe, space=core.space
        ),
        core.clock,
        cfg.server.hostname,
        cfg.tls.server_context() if cfg.tls.enabled else None,
    )

    async def drain(timeout: float) -> None:
        await server.stop()

    async def start() -> None:
        await server.start()

    return SimpleService("inbound", on_start=start, on_run=purge, on_drain=drain)


class _MxHosts:
    """The resolver's MX host names, for grouping domains by provider in the shaper."""

    def __init__(self, resolver: DnsResolver) -> None:
        self._resolver = resolver

    async def mx_hosts(self, domain: str) -> tuple[str, ...]:
        route = await self._resolver.route(domain)
        if isinstance(route, Route) and not route.implicit:
            return tuple(h.name for h in route.hosts)
        return ()


def _scheduler_service(core: Core) -> Service:
    """Claims due work and runs it through the shaper into the delivery agent."""
    cfg = core.config
    assert core.agent is not None
    dests, rules = load_builtin() if cfg.shaping.builtin else ((), ())
    workers = cfg.delivery.max_connections
    shaper = Shaper(
        cfg.shaping,
        core.clock,
        max_connections=workers,
        builtin_destinations=dests,
        builtin_rules=rules,
    )
    use_mx = core.resolver is not None and not cfg.delivery.relay_host
    agent: Agent = core.agent
    if core.metrics is not None:
        core.metrics.shaper = shaper
        agent = TimedAgent(core.agent, core.metrics.attempt_finished)

    async def on_bounce(address: str, category: str, sender_domain: str | None, qid: str) -> None:
        await core.suppressions.apply(
            address, category, sender_domain=sender_domain, source="delivery", queue_id=qid
        )

    scheduler = Scheduler(
        spool=core.spool,
        agent=agent,
        shaper=shaper,
        clock=core.clock,
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
        mx=_MxHosts(core.resolver) if use_mx and core.resolver is not None else None,
        on_bounce=on_bounce,
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


class _SuppressUnsubscribes:
    """Tracking's UnsubscribeSink: suppress the address for the sender's domain."""

    def __init__(self, store: SuppressionStore) -> None:
        self.store = store

    async def unsubscribe(
        self, sender_domain: str | None, address: str, queue_id: str, at: float
    ) -> None:
        # Through the policy table ([inbound.suppression.policy] unsubscribe, default
        # "suppress-sender": this sending domain only).
        await self.store.apply(
            address, "unsubscribe", sender_domain=sender_domain, source="tracking",
            queue_id=queue_id,
        )  # fmt: skip


def _tracking_service(core: Core) -> Service | None:
    """Tracker for the pipeline (links, pixel, List-Unsubscribe) and the public endpoint."""
    cfg = core.config.tracking
    if cfg.base_url is None or cfg.secret_file is None:
        return None
    secret_file = cfg.secret_file  # restart-only, like base_url
    if not cfg.secret_file.exists():
        write_private(cfg.secret_file, secrets.token_bytes(32).hex().encode() + b"\n")
    try:
        codec = TokenCodec(load_secrets(cfg.secret_file))
        rules = load_rules(cfg.bot_rules_file)
    except ValueError as exc:
        raise ConfigError(f"tracking: {exc}") from None
    core.tracker = Tracker(codec, cfg.base_url, cfg.unsubscribe_mailto)
    if cfg.listen is None and cfg.unsubscribe_mailto is None:
        return None
    recorder = Recorder(
        SqlTrackingStore(core.db),
        BotDetector(rules, cfg.scanner_window, cfg.burst_window, cfg.burst_links),
        IpPrivacy(cfg.ip_privacy, codec.key),
        core.clock,
        unsubscribes=_SuppressUnsubscribes(core.suppressions),
    )
    if cfg.unsubscribe_mailto is not None:  # the inbound listener hands such mail over
        core.mail_unsubscribe = MailUnsubscribe(cfg.unsubscribe_mailto, codec, recorder)
    if cfg.listen is None:
        return None
    if core.metrics is not None:
        core.metrics.tracking_dropped = lambda: recorder.dropped
    web = TrackingWeb(
        codec, recorder, core.clock, trusted_proxies=cfg.trusted_proxies, access_log=cfg.access_log
    )
    host, port = cfg.listen

    async def drain(timeout: float) -> None:
        await web.stop()
        await recorder.flush(everything=True)

    async def reload(new: Config) -> None:
        t = new.tracking
        try:
            secrets_ = await asyncio.to_thread(load_secrets, secret_file)
            rules_ = await asyncio.to_thread(load_rules, t.bot_rules_file)
        except ValueError as exc:
            raise ConfigError(f"tracking: {exc}") from None
        codec.reload(secrets_)
        recorder.reconfigure(
            BotDetector(rules_, t.scanner_window, t.burst_window, t.burst_links),
            IpPrivacy(t.ip_privacy, codec.key),
        )
        web.reconfigure(t.trusted_proxies, t.access_log)
        log.info(kv(event="tracking_reloaded", secrets=len(secrets_), ip_privacy=t.ip_privacy,
                    access_log=t.access_log))  # fmt: skip

    return SimpleService(
        "tracking", on_start=lambda: web.start(host, port), on_run=recorder.run, on_drain=drain,
        on_reload=reload,
    )  # fmt: skip


def _log_keyset(keyset: KeySet) -> None:
    signing = [k for keys in keyset.signing.values() for k in keys]
    log.info(kv(event="dkim_keys_loaded", keys=len(keyset.keys),
                signing=",".join(f"{k.domain}/{k.selector}" for k in signing) or "-"))  # fmt: skip


def _admin_service(core: Core, metrics: Metrics) -> Service | None:
    """The admin API and /metrics on [admin] listen (off when unset)."""
    cfg = core.config.admin
    if cfg.listen is None:
        return None
    deps = AdminDeps(
        privacy=SqlitePrivacy(core.db),
        spool=core.spool,
        config=lambda: core.config,
        keys=lambda: core.signer.keyset if core.signer is not None else KeySet(),
        metrics=metrics,
        events=EventLog(core.db),
        reports=Reports(core.db),
        users=core.users,
        hash_password=hash_password,
        suppressions=core.suppressions,
        codec=lambda: core.spool.codec,
    )
    metrics.webhooks = WebhookOutbox(core.db)
    open_paths = frozenset({"/metrics"}) if cfg.metrics_auth == "none" else frozenset()
    web_app = build_web_app(AdminApi(deps).register, TokenStore(core.db, core.clock).verify,
                            open_paths=open_paths)  # fmt: skip
    ssl_context = core.config.tls.server_context() if cfg.tls else None
    server = AdminServer(web_app, ssl_context)
    host, port = cfg.listen

    async def start() -> None:
        await metrics.start()
        await server.start(host, port)

    async def run() -> None:
        while True:  # keep the event tail short between scrapes
            await core.clock.sleep(METRICS_TAIL_EVERY)
            await metrics.tail()

    async def drain(timeout: float) -> None:
        await server.stop()

    async def reload(new: Config) -> None:
        if ssl_context is not None and new.tls.cert and new.tls.key:
            ssl_context.load_cert_chain(str(new.tls.cert), str(new.tls.key))

    return SimpleService("admin", start, run, drain, reload)


class App:
    def __init__(
        self, config: Config, *, clock: Clock | None = None, notifier: Notifier | None = None
    ):
        self.config = config
        self.clock = clock or SystemClock()
        self.notifier = notifier or Notifier()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def run(self) -> None:
        cfg = self.config
        with _exclusive(cfg.storage.database.with_suffix(".lock")):
            await self._run_with_db(cfg)

    async def _run_with_db(self, cfg: Config) -> None:
        db = Database(cfg.storage.database, owner=True)
        reserve = Reserve(cfg.storage.database.parent / "reserve.bin")
        try:
            await db.open()
        except StorageError as exc:
            if exc.fatal or not reserve.release():
                raise
            await db.open()  # the space the reserve held is enough to open it (SQLite's -shm)
        try:
            spool = Spool(
                db,
                codec_for(cfg.storage.encryption_key_file),
                keep_bodies=cfg.retention.bodies,
                clock=self.clock,
            )
            await _release_leases(spool, self.clock, "leases_released_at_start")
            space = FreeSpace(
                cfg.storage.database.parent, cfg.storage.min_free, self.clock.monotonic
            )
            inbound = cfg.inbound
            verp = (
                Verp(
                    read_secret(cfg.server.secret_file), inbound.verp_prefix, inbound.bounce_domain
                )
                if inbound.bounce_domain
                else None
            )
            core = Core(
                cfg, db, spool, self.clock, self.notifier, space, reserve,
                users=UserStore(db, self.clock),
                suppressions=SuppressionStore(db, self.clock, inbound.suppression),
                verp=verp,
            )  # fmt: skip
            core.services = await build_services(core)
            await self._run_services(core)
        finally:
            await db.close()
            log.info(kv(event="stopped"))

    async def _run_services(self, core: Core) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        started: list[Service] = []
        try:
            for service in core.services:
                await service.start()
                started.append(service)
            restarted = core.metrics.task_restarted if core.metrics else (lambda name: None)
            clock = self.clock.monotonic
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(
                        supervise(s.name, s.run, monotonic=clock, on_restart=restarted), name=s.name
                    )
                    for s in started
                ]
                self.notifier.ready()
                log.info(kv(event="ready", services=",".join(s.name for s in started)))
                await self._supervise(core)
                self.notifier.stopping()
                log.info(kv(event="stopping"))
                timeout = core.config.server.drain_timeout
                await asyncio.gather(
                    *(_bounded(s.drain(timeout), timeout, s.name) for s in reversed(started))
                )
                for task in tasks:
                    task.cancel()
            released = await _release_leases(core.spool, self.clock, None)
            log.info(kv(event="drained", leases_released=released))
        except BaseExceptionGroup as group:
            fatal = first_fatal(group)
            if fatal is None:
                raise
            raise fatal from None  # one line (event=fatal), not an exception-group traceback
        finally:
            # A second SIGTERM while the database closes only repeats the request; the
            # handlers go when the loop closes, after the last write.
            self._stop.set()

    async def _supervise(self, core: Core) -> None:
        """Wait for stop, handling reloads meanwhile."""
        while not self._stop.is_set():
            stop = asyncio.create_task(self._stop.wait())
            reload = asyncio.create_task(self._reload.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            for t in (stop, reload):
                t.cancel()
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                await self._do_reload(core)

    async def _do_reload(self, core: Core) -> None:
        self.notifier.reloading()
        try:
            new = await asyncio.to_thread(load_config, core.config.source)
        except ConfigError as exc:
            log.error(kv(event="reload_rejected", error=str(exc)))
            self.notifier.ready()
            return
        new, restart_only = keep_restart_keys(core.config, new)
        for key in restart_only:
            log.warning(kv(event="reload_needs_restart", key=key))
        set_level(new.server.log_level)
        for service in core.services:
            try:
                await service.reload(new)
            except (MtaError, OSError, ValueError) as exc:
                log.error(kv(event="reload_failed", service=service.name, error=str(exc)))
        core.config = new
        self.config = new
        log.info(kv(event="reloaded", source=new.source))
        self.notifier.ready()


async def _release_leases(spool: Spool, clock: Clock, event: str | None) -> int:
    """Put leased recipients back; on a full disk, log and go on (leases expire anyway)."""
    try:
        released = await spool.release_leases(clock.now())
    except StorageError as exc:
        if exc.fatal:
            raise
        log.warning(kv(event="leases_not_released", error=str(exc)))
        return 0
    if released and event:
        log.info(kv(event=event, recipients=released))
    return released


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One daemon per database: a second one on the same file refuses to start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MtaError(
                f"{path}: another mtaserver is already running on this database"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


async def _bounded(aw: Awaitable[None], timeout: float, name: str) -> None:
    try:
        await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        log.warning(kv(event="drain_timeout", service=name, seconds=timeout))
    except Exception as exc:
        log.error(kv(event="drain_failed", service=name, error=type(exc).__name__))


def serve(config: Config) -> int:
    """Run the daemon until SIGTERM; returns the exit code."""
    setup_logging(config.server.log_level)
    app = App(config)
    try:
        uvloop.run(app.run())
    except MtaError as exc:
        log.error(kv(event="fatal", error=str(exc)))
        return 1
    return 0
