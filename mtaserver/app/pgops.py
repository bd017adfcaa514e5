"""The admin API and the webhook dispatcher on a PostgreSQL node.

The same endpoints as :func:`mtaserver.app.ops.admin_service` (served by the same
``serve_admin``), over the cluster's database:
the queue, events, stats, users, suppressions and templates any node answers for are the
cluster's, and an admin token made on one node opens every node's API. Privacy export and
erase (``storage.postgres.privacy``) find and rewrite the address in every node's mail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from mtaserver.admin.deps import AdminDeps
from mtaserver.app.ops import serve_admin
from mtaserver.app.service import Service
from mtaserver.auth import hash_password
from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.dkim import DkimSigner
from mtaserver.metrics import Metrics
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.events import PgEventLog
from mtaserver.storage.postgres.outbox import PgWebhookOutbox
from mtaserver.storage.postgres.outreach_stats import PgOutreachStats
from mtaserver.storage.postgres.privacy import PgPrivacy
from mtaserver.storage.postgres.queue import PgQueue
from mtaserver.storage.postgres.reports import PgReports
from mtaserver.storage.postgres.suppressions import PgSuppressionStore
from mtaserver.storage.postgres.templates import PgTemplateStore
from mtaserver.storage.postgres.tokens import PgTokenStore
from mtaserver.storage.postgres.users import PgUserStore
from mtaserver.webhooks import WebhookDispatcher


def as_sqlite_owner(value: object) -> Any:
    """The stage builders and AdminDeps are typed on the SQLite owners; the PostgreSQL
    owners offer the same methods, so they pass through this one cast until those take
    Protocols."""
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
        privacy=PgPrivacy(db),  # export and erase across the cluster's database
        spool=as_sqlite_owner(queue),
        config=current,
        keys=lambda: signer.keyset,
        metrics=metrics,
        clock=clock,
        events=PgEventLog(db),
        reports=PgReports(db),
        users=PgUserStore(db, clock),
        hash_password=hash_password,
        suppressions=as_sqlite_owner(PgSuppressionStore(db, clock, cfg.inbound.suppression)),
        codec=lambda: queue.codec,  # the privacy routes read queued bodies with it
        templates=as_sqlite_owner(PgTemplateStore(db, clock)),
        outreach=PgOutreachStats(db),  # /api/v1/campaigns|triggers/{name}/stats
    )
    return serve_admin(cfg, deps, PgTokenStore(db, clock).verify)


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
    dispatcher = WebhookDispatcher(as_sqlite_owner(_Polled()), cfg.webhooks, clock)
    # its rows leased to this node (storage.postgres.outbox)
    dispatcher.outbox = as_sqlite_owner(outbox)
    return dispatcher
