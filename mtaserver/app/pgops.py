"""The admin API, the webhook dispatcher and tracking on a PostgreSQL node.

The same endpoints as :func:`mtaserver.app.ops.admin_service`, over the cluster's database:
the queue, events, stats, users, suppressions and templates any node answers for are the
cluster's, and an admin token made on one node opens every node's API. Privacy export and
erase are not ported yet (they also walk contacts): without a body codec in the deps the
admin app registers no privacy routes, so they answer 404 rather than read a SQLite file.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, cast

from mtaserver.admin.deps import AdminDeps
from mtaserver.admin.routes import AdminApi
from mtaserver.admin.server import AdminServer, build_web_app
from mtaserver.api.deps import KeyInfo, KeysUnavailable
from mtaserver.app.ops import TrackingParts
from mtaserver.app.service import Service, SimpleService
from mtaserver.auth import hash_password
from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.devsetup import write_private
from mtaserver.dkim import DkimSigner
from mtaserver.errors import ConfigError, StorageError
from mtaserver.metrics import Metrics
from mtaserver.oauth import CurrentVerifier
from mtaserver.storage.postgres.apikeys import PgApiKeyStore
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.events import PgEventLog
from mtaserver.storage.postgres.outbox import PgWebhookOutbox
from mtaserver.storage.postgres.queue import PgQueue
from mtaserver.storage.postgres.reports import PgReports
from mtaserver.storage.postgres.suppressions import PgSuppressionStore
from mtaserver.storage.postgres.templates import PgTemplateStore
from mtaserver.storage.postgres.tokens import PgTokenStore
from mtaserver.storage.postgres.tracking import PgTrackingStore
from mtaserver.storage.postgres.users import PgUserStore
from mtaserver.tracking.bots import BotDetector, load_rules
from mtaserver.tracking.mailto import MailUnsubscribe
from mtaserver.tracking.privacy import IpPrivacy
from mtaserver.tracking.recorder import Recorder
from mtaserver.tracking.tokens import TokenCodec, load_secrets
from mtaserver.tracking.tracker import Tracker
from mtaserver.webhooks import WebhookDispatcher

METRICS_TAIL_EVERY = 10.0  # seconds between event-log tails for metrics, as on SQLite


def _as(value: object) -> Any:
    """AdminDeps is typed on the SQLite owners; these offer the same methods."""
    return cast(Any, value)


def pg_admin_service(
    cfg: Config, db: PgDatabase, queue: PgQueue, signer: DkimSigner, metrics: Metrics,
    clock: Clock, current: Callable[[], Config],
) -> Service | None:  # fmt: skip
    """The admin API and /metrics on ``[admin] listen`` (off when unset)."""
    a = cfg.admin
    if a.listen is None:
        return None
    deps = AdminDeps(
        privacy=_as(None),  # no routes without ``codec`` (see the module docstring)
        spool=_as(queue),
        config=current,
        keys=lambda: signer.keyset,
        metrics=metrics,
        clock=clock,
        events=PgEventLog(db),
        reports=PgReports(db),
        users=PgUserStore(db, clock),
        hash_password=hash_password,
        suppressions=_as(PgSuppressionStore(db, clock, cfg.inbound.suppression)),
        codec=None,
        templates=_as(PgTemplateStore(db, clock)),
    )
    open_paths = frozenset({"/metrics"}) if a.metrics_auth == "none" else frozenset()
    oauth = CurrentVerifier(cfg.oauth, clock)  # JWT bearers with admin.* scopes
    web_app = build_web_app(AdminApi(deps).register, PgTokenStore(db, clock).verify,
                            open_paths=open_paths, monotonic=clock.monotonic,
                            jwt=oauth.verify)  # fmt: skip
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


class _Polled:
    """The dispatcher's ``db``: on SQLite it wakes at each commit of the node's one
    database; here the events come from every node, so it looks every second (its poll)."""

    def __init__(self) -> None:
        self.on_commit: list[Callable[[float, int], None]] = []


def pg_webhooks_service(cfg: Config, outbox: PgWebhookOutbox, clock: Clock) -> Service | None:
    """The ``[[webhooks]]`` POSTs from the cluster's outbox; None on a node without webhooks
    (it must not sync the cluster's endpoints to an empty list)."""
    if not cfg.webhooks:
        return None
    dispatcher = WebhookDispatcher(_as(_Polled()), cfg.webhooks, clock)
    dispatcher.outbox = _as(outbox)  # its rows leased to this node (storage.postgres.outbox)
    return dispatcher


class _SuppressUnsubscribes:
    """Tracking's unsubscribes suppress in the cluster's list, through the policy table
    ([inbound.suppression.policy] unsubscribe; default: this sending domain only)."""

    def __init__(self, store: PgSuppressionStore) -> None:
        self.store = store

    async def unsubscribe(
        self, sender_domain: str | None, address: str, queue_id: str, at: float
    ) -> None:
        await self.store.apply(
            address, "unsubscribe", sender_domain=sender_domain, source="tracking",
            queue_id=queue_id,
        )  # fmt: skip


def pg_build_tracking(
    cfg: Config, db: PgDatabase, suppressions: PgSuppressionStore, clock: Clock
) -> TrackingParts | None:
    """``app.ops.build_tracking`` over the cluster's queue and event log. Every node must
    hold the same ``[tracking] secret_file``: a link signed by one node is opened on any
    (a node that finds none writes a new one, which the other nodes' links fail)."""
    t = cfg.tracking
    if t.base_url is None or t.secret_file is None:
        return None
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
        PgTrackingStore(db),
        BotDetector(rules, t.scanner_window, t.burst_window, t.burst_links),
        IpPrivacy(t.ip_privacy, codec.key),
        clock,
        unsubscribes=_SuppressUnsubscribes(suppressions),
    )
    mailto = None
    if t.unsubscribe_mailto is not None:  # the inbound listener hands such mail over
        mailto = MailUnsubscribe(t.unsubscribe_mailto, codec, recorder)
    return TrackingParts(codec, tracker, recorder, mailto)


class ApiKeysOrUnavailable:
    """The send API's key check over the cluster's database: with PostgreSQL unreachable a
    key cannot be checked, which the API answers 503 with Retry-After (as for an OAuth
    issuer that cannot be reached), never 500 and never accepted."""

    def __init__(self, store: PgApiKeyStore) -> None:
        self.store = store

    async def verify(self, key: str) -> KeyInfo | None:
        try:
            return await self.store.verify(key)
        except StorageError as exc:
            raise KeysUnavailable(str(exc)) from None
