"""Wiring: every component built once, in dependency order, into frozen values.

Read top to bottom, :func:`wire` is the whole daemon: the stores over the opened database,
the signing and delivery components, the shaper and the tracking recorder (which metrics
reports on), metrics (which the mail path reports to), then one Service per stage in
start order. Nothing is assigned to a component after it is built; what changes at run
time (a new config on SIGHUP) reaches each service through its ``reload``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mtaserver.app.api import api_service
from mtaserver.app.campaigns import campaigns_service
from mtaserver.app.cluster import build_cluster
from mtaserver.app.journeys import journeys_service
from mtaserver.app.mail import (
    MailParts,
    UserRates,
    build_agent,
    build_resolver,
    build_shaper,
    delivery_service,
    dkim_service,
    inbound_service,
    scheduler_service,
    submission_service,
)
from mtaserver.app.ops import (
    AdminParts,
    admin_service,
    build_tracking,
    storage_service,
    tracking_service,
)
from mtaserver.app.optin import consent_pages, optin_service
from mtaserver.app.service import Service
from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.devsetup import read_secret
from mtaserver.diskspace import FreeSpace, Reserve
from mtaserver.dkim import DkimSigner
from mtaserver.dkim.keys import load_keyset
from mtaserver.metrics import Metrics, TimedAgent
from mtaserver.retention import Retention
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.outbox import WebhookOutbox
from mtaserver.storage.sqlite.queue import Spool
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.templates import TemplateStore
from mtaserver.storage.sqlite.tracking import SqlTrackingStore
from mtaserver.storage.sqlite.users import UserStore
from mtaserver.verp import Verp
from mtaserver.webhooks import WebhookDispatcher
from mtaserver.workers import WorkerPool
from mtaserver.workers.template import Template


@dataclass(frozen=True)
class Base:
    """What the lifecycle opens before wiring: the database and the process's resources."""

    db: Database
    spool: Spool
    clock: Clock
    space: FreeSpace  # free space on the database's filesystem (452 at MAIL when low)
    reserve: Reserve  # space held back so a restart on a full disk can open the database
    template: Template | None = None  # forks the workers ([server] workers > 1), if forked


@dataclass(frozen=True)
class Wiring:
    """The built daemon: its services in start order, and metrics (restart counts)."""

    services: tuple[Service, ...]
    metrics: Metrics


def wire(cfg: Config, base: Base, current: Callable[[], Config]) -> Wiring:
    """Build every component the config enables; ``current`` reads the config in force."""
    db, spool, clock = base.db, base.spool, base.clock
    inbound = cfg.inbound
    # Stores over the one database.
    users = UserStore(db, clock)
    suppressions = SuppressionStore(db, clock, inbound.suppression)
    events = EventLog(db)
    outbox = WebhookOutbox(db)
    verp = (
        Verp(read_secret(cfg.server.secret_file), inbound.verp_prefix, inbound.bounce_domain)
        if inbound.bounce_domain
        else None
    )
    # The mail path's components.
    signer = DkimSigner(load_keyset(cfg.dkim), clock)
    resolver = build_resolver(cfg, clock)
    agent = build_agent(cfg, resolver, verp, clock)
    shaper = build_shaper(cfg, clock)
    tracking = build_tracking(cfg, SqlTrackingStore(db), suppressions, clock)
    recorder = tracking.recorder if tracking and cfg.tracking.listen else None
    # Double opt-in and the preferences page: signed with the tracking secret, served there.
    consent = (
        consent_pages(tracking.codec, ContactStore(db, clock), suppressions, users, clock)
        if recorder is not None and tracking is not None
        else None
    )
    # Metrics reads the shaper, the outbox and the recorder; the mail path reports to it.
    metrics = Metrics(
        spool,
        events,
        top_destinations=cfg.admin.top_destinations,
        clock=clock.now,
        shaper=shaper,
        webhooks=outbox,
        tracking_dropped=(lambda: recorder.dropped) if recorder is not None else None,
    )
    db.on_commit.append(metrics.db_committed)
    cluster = build_cluster(cfg, shaper, spool, clock, metrics)  # None without [cluster]
    shared = cluster.shared if cluster else None
    if cluster is not None:  # each connection holds a slot of the cluster's while open
        agent.use_leases(cluster.shared.connections)
    timed_agent = TimedAgent(agent, metrics.attempt_finished)
    # One service per stage, in start order: signing and delivery before anything that
    # submits; listeners last, once everything they hand mail to runs.
    services: list[Service | None] = [
        dkim_service(signer),
        delivery_service(resolver, agent),
        cluster.service if cluster else None,
        scheduler_service(cfg, spool, timed_agent, shaper, resolver, suppressions, clock, shared),
        tracking_service(cfg, tracking, clock, consent) if tracking else None,
        inbound_service(
            cfg,
            spool,
            suppressions,
            verp,
            tracking.mail_unsubscribe if tracking else None,
            base.space,
            clock,
        ),
        storage_service(db, spool, base.space, base.reserve, clock),
        WebhookDispatcher(db, cfg.webhooks, clock),
        Retention(spool, events, outbox, cfg.retention, clock),
    ]
    sub = cfg.submission
    mail = MailParts(
        spool, users, suppressions, signer, tracking.tracker if tracking else None,
        metrics, base.space, clock, UserRates(sub, clock),
    )  # fmt: skip
    services.append(journeys_service(cfg, mail))  # trigger steps, before any listener
    services.append(campaigns_service(cfg, mail))  # campaign runs, fed into the queue
    if sub.listen or sub.listen_tls or sub.listen_plain:
        services.append(
            submission_service(cfg, mail)
            if cfg.server.workers == 1
            else workers_service(cfg, mail, base.template)
        )
    optin = optin_service(cfg, mail, tracking.codec) if consent and tracking else None
    if optin is not None:
        services.append(optin[0])
    services.append(api_service(cfg, mail, TemplateStore(db, clock),
                                optin_nudge=optin[1].nudge if optin else None))  # fmt: skip
    admin = AdminParts(db, spool, users, suppressions, signer, metrics, clock)
    services.append(admin_service(cfg, admin, current))
    return Wiring(tuple(s for s in services if s is not None), metrics)


def workers_service(cfg: Config, mail: MailParts, template: Template | None = None) -> Service:
    """``[server] workers`` > 1: the listeners run in worker processes (mtaserver.workers);
    this process commits what they prepared, with the per-user rate checked here."""
    rates = mail.user_rates
    return WorkerPool(
        cfg,
        spool=mail.spool,
        user_rate=lambda: rates.limiter,
        observer=mail.metrics,
        clock=mail.clock,
        on_restart=mail.metrics.task_restarted,
        template=template,
    )
