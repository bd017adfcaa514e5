"""Services off the mail path: tracking, the admin API, the storage watch, webhooks.

Like ``mail``: each builder takes what it uses, already built, and returns a Service.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mtaserver.app.service import Service, SimpleService
from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.crypto import codec_for
from mtaserver.devsetup import write_private
from mtaserver.diskspace import FreeSpace, Reserve
from mtaserver.dkim import DkimSigner
from mtaserver.errors import ConfigError
from mtaserver.log import get_logger, kv
from mtaserver.metrics import Metrics
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.users import UserStore

if TYPE_CHECKING:  # tracking and the admin API load in their builders, when configured
    from mtaserver.admin.deps import AdminDeps
    from mtaserver.storage.sqlite.tokens import TokenInfo
    from mtaserver.tracking.mailto import MailUnsubscribe
    from mtaserver.tracking.preferences import ConsentPages
    from mtaserver.tracking.recorder import Recorder, TrackingStore
    from mtaserver.tracking.tokens import TokenCodec
    from mtaserver.tracking.tracker import Tracker

log = get_logger("app")
METRICS_TAIL_EVERY = 10.0  # seconds between event-log tails for metrics
FILE_CHECK_EVERY = 5.0  # seconds between checks that the database file is still ours


def storage_service(db: Database, spool: Spool, space: FreeSpace, reserve: Reserve,
                    clock: Clock) -> Service:  # fmt: skip
    """Watches that the database file is still the one opened (fatal otherwise) and keeps
    the start-up reserve (``diskspace.Reserve``); on SIGHUP, re-reads the encryption key
    file (rotation: a new current key) and ``min_free``."""

    async def run() -> None:
        while True:
            db.check_file()
            await asyncio.to_thread(reserve.ensure, space)
            await clock.sleep(FILE_CHECK_EVERY)

    async def reload(config: Config) -> None:
        space.min_free = config.storage.min_free
        codec = await asyncio.to_thread(codec_for, config.storage.encryption_key_file)
        spool.codec = codec
        spool.keep_bodies = config.retention.bodies
        log.info(kv(event="storage_keys_loaded",
                    current=getattr(codec, "current", None) or "-"))  # fmt: skip

    return SimpleService("storage", on_run=run, on_reload=reload)


class Suppresses(Protocol):
    """What tracking's unsubscribes need of a suppression store (either backend's)."""

    async def apply(
        self, address: str, reason: str, *, sender_domain: str | None, source: str,
        queue_id: str | None = None,
    ) -> object: ...  # fmt: skip


class _SuppressUnsubscribes:
    """Tracking's UnsubscribeSink: suppress the address for the sender's domain."""

    def __init__(self, store: Suppresses) -> None:
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


@dataclass(frozen=True)
class TrackingParts:
    """Built when ``[tracking] base_url`` is set: the pipeline's tracker, and the
    recorder when something records hits (the endpoint, or mailto unsubscribes)."""

    codec: TokenCodec
    tracker: Tracker
    recorder: Recorder | None
    mail_unsubscribe: MailUnsubscribe | None


def build_tracking(
    cfg: Config, store: TrackingStore, suppressions: Suppresses, clock: Clock
) -> TrackingParts | None:
    """``store`` is the backend's tracked-recipient lookup and hit writer. On several nodes
    every node must hold the same ``[tracking] secret_file``: a link signed by one node is
    opened on any (a node that finds none writes a new one, which the others' links fail)."""
    t = cfg.tracking
    if t.base_url is None or t.secret_file is None:
        return None
    # Link signing, bot rules and the recorder: loaded only with [tracking] base_url.
    from mtaserver.tracking.bots import BotDetector, load_rules
    from mtaserver.tracking.mailto import MailUnsubscribe
    from mtaserver.tracking.privacy import IpPrivacy
    from mtaserver.tracking.recorder import Recorder
    from mtaserver.tracking.tokens import TokenCodec, load_secrets
    from mtaserver.tracking.tracker import Tracker

    if not t.secret_file.exists():
        write_private(t.secret_file, secrets.token_bytes(32).hex().encode() + b"\n")
    try:
        codec = TokenCodec(load_secrets(t.secret_file))
        rules = load_rules(t.bot_rules_file)
    except ValueError as exc:
        raise ConfigError(f"tracking: {exc}") from None
    tracker = Tracker(codec, t.base_url, t.unsubscribe_mailto)
    if t.listen is None and t.unsubscribe_mailto is None:
        return TrackingParts(codec, tracker, None, None)
    recorder = Recorder(
        store,
        BotDetector(rules, t.scanner_window, t.burst_window, t.burst_links),
        IpPrivacy(t.ip_privacy, codec.key),
        clock,
        unsubscribes=_SuppressUnsubscribes(suppressions),
    )
    mailto = None
    if t.unsubscribe_mailto is not None:  # the inbound listener hands such mail over
        mailto = MailUnsubscribe(t.unsubscribe_mailto, codec, recorder)
    return TrackingParts(codec, tracker, recorder, mailto)


def tracking_service(
    cfg: Config, parts: TrackingParts, clock: Clock, consent: ConsentPages | None = None
) -> Service | None:
    """The public endpoint (opens, clicks, one-click unsubscribe) on ``[tracking] listen``."""
    t = cfg.tracking
    recorder = parts.recorder
    if t.listen is None or recorder is None or t.secret_file is None:
        return None
    # The endpoint's aiohttp app: loaded only with [tracking] listen.
    from mtaserver.tracking.bots import BotDetector, load_rules
    from mtaserver.tracking.privacy import IpPrivacy
    from mtaserver.tracking.tokens import load_secrets
    from mtaserver.tracking.web import TrackingWeb

    secret_file = t.secret_file  # restart-only, like base_url
    codec = parts.codec
    web = TrackingWeb(
        codec,
        recorder,
        clock,
        trusted_proxies=t.trusted_proxies,
        access_log=t.access_log,
        consent=consent,
    )
    host, port = t.listen

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


@dataclass(frozen=True)
class AdminParts:
    db: Database
    spool: Spool
    users: UserStore
    suppressions: SuppressionStore
    signer: DkimSigner
    metrics: Metrics
    clock: Clock


def admin_service(cfg: Config, parts: AdminParts, current: Callable[[], Config]) -> Service | None:
    """The admin API and /metrics on [admin] listen (off when unset)."""
    a = cfg.admin
    if a.listen is None:
        return None
    # The admin API's stores: loaded only with [admin] listen.
    from mtaserver.admin.deps import AdminDeps
    from mtaserver.auth import hash_password
    from mtaserver.storage.sqlite.events import EventLog
    from mtaserver.storage.sqlite.outreach_stats import OutreachStats
    from mtaserver.storage.sqlite.privacy import SqlitePrivacy
    from mtaserver.storage.sqlite.reports import Reports
    from mtaserver.storage.sqlite.templates import TemplateStore
    from mtaserver.storage.sqlite.tokens import TokenStore

    db, metrics = parts.db, parts.metrics
    deps = AdminDeps(
        privacy=SqlitePrivacy(db),
        spool=parts.spool,
        config=current,
        keys=lambda: parts.signer.keyset,
        metrics=metrics,
        clock=parts.clock,
        events=EventLog(db),
        reports=Reports(db),
        users=parts.users,
        hash_password=hash_password,
        suppressions=parts.suppressions,
        codec=lambda: parts.spool.codec,
        templates=TemplateStore(db, parts.clock),
        outreach=OutreachStats(db),
    )
    return serve_admin(cfg, deps, TokenStore(db, parts.clock).verify)


def serve_admin(
    cfg: Config, deps: AdminDeps, verify_token: Callable[[str], Awaitable[TokenInfo | None]]
) -> Service:
    """The admin API and /metrics over ``deps`` on ``[admin] listen`` (either backend)."""
    a = cfg.admin
    assert a.listen is not None
    # aiohttp, PyJWT and the admin routes: loaded only by a daemon that serves them.
    from mtaserver.admin.routes import AdminApi
    from mtaserver.admin.server import AdminServer, build_web_app
    from mtaserver.oauth import CurrentVerifier

    metrics, clock = deps.metrics, deps.clock
    open_paths = frozenset({"/metrics"}) if a.metrics_auth == "none" else frozenset()
    oauth = CurrentVerifier(cfg.oauth, clock)  # JWT bearers with admin.* scopes
    web_app = build_web_app(AdminApi(deps).register, verify_token, open_paths=open_paths,
                            monotonic=clock.monotonic, jwt=oauth.verify)  # fmt: skip
    ssl_context = cfg.tls.server_context() if a.tls else None
    server = AdminServer(web_app, ssl_context)
    host, port = a.listen

    async def start() -> None:
        await metrics.start()
        await server.start(host, port)

    async def run() -> None:
        while True:  # keep the event tail short between scrapes
            await clock.sleep(METRICS_TAIL_EVERY)
            await metrics.tail()

    async def drain(timeout: float) -> None:
        await server.stop()
        await oauth.aclose()

    async def reload(new: Config) -> None:
        if ssl_context is not None and new.tls.cert and new.tls.key:
            ssl_context.load_cert_chain(str(new.tls.cert), str(new.tls.key))
        await oauth.apply(new.oauth)

    return SimpleService("admin", start, run, drain, reload)
