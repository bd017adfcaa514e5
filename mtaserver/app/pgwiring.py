"""Wiring of a node on PostgreSQL (``[storage] backend = "postgresql"``): the core mail path.

SMTP submission → pipeline → the shared queue → scheduler → delivery → events and
suppressions, every store over the cluster's database; several nodes run this against one
database, the HTTP send API, the admin API (privacy requests included), webhooks,
tracking with the consent pages, campaigns, triggers and the opt-in mailer (``app.pgops``,
``app.pgcampaigns``, ``app.pgjourneys``). What is not ported is refused at config check
(``config.storage.check_postgres``), so nothing here falls back to SQLite.

The stage builders of :mod:`mtaserver.app.mail` are typed on the SQLite owners; the
PostgreSQL owners offer the same methods those stages call, so they are passed through
``pgops.as_sqlite_owner`` (the one cast) until the builders take the stages' Protocols.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mtaserver.app.api import ApiStores, api_service
from mtaserver.app.cluster import build_cluster
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
from mtaserver.app.ops import build_tracking, tracking_service
from mtaserver.app.pgcampaigns import pg_campaigns_service
from mtaserver.app.pgjourneys import pg_consent_pages, pg_journeys_service, pg_optin_service
from mtaserver.app.pgops import (
    as_sqlite_owner as _as,
)
from mtaserver.app.pgops import (
    pg_admin_service,
    pg_webhooks_service,
)
from mtaserver.app.service import Service
from mtaserver.app.wiring import Wiring, workers_service
from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.config.cluster import default_node_id
from mtaserver.devsetup import read_secret
from mtaserver.diskspace import FreeSpace
from mtaserver.dkim import DkimSigner
from mtaserver.dkim.keys import load_keyset
from mtaserver.metrics import Metrics, TimedAgent
from mtaserver.retention import Retention
from mtaserver.storage.postgres.activity import PgActivityStore
from mtaserver.storage.postgres.apikeys import PgApiKeyStore
from mtaserver.storage.postgres.campaigns import PgCampaignStore
from mtaserver.storage.postgres.contacts import PgContactStore
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.events import PgEventLog
from mtaserver.storage.postgres.idempotency import PgApiIntake
from mtaserver.storage.postgres.journeys import PgJourneyStore
from mtaserver.storage.postgres.optin import PgOptInStore
from mtaserver.storage.postgres.outbox import PgWebhookOutbox
from mtaserver.storage.postgres.queue import PgQueue
from mtaserver.storage.postgres.segments import PgSegmentStore
from mtaserver.storage.postgres.suppressions import PgSuppressionStore
from mtaserver.storage.postgres.templates import PgTemplateStore
from mtaserver.storage.postgres.tracking import PgTrackingStore
from mtaserver.storage.postgres.users import PgUserStore
from mtaserver.verp import Verp

if TYPE_CHECKING:
    from mtaserver.api.deps import CampaignStores
    from mtaserver.workers.template import Template


def node_id(cfg: Config) -> str:
    """``[cluster] node_id``, else the host name's first label (the same default)."""
    return cfg.cluster.node_id if cfg.cluster is not None else default_node_id(cfg.server.hostname)


def _campaign_stores(cfg: Config, db: PgDatabase, clock: Clock) -> CampaignStores | None:
    """/v1/campaigns on the cluster's owners (the API's modules load only for [api] listen)."""
    if cfg.api.listen is None:
        return None
    from mtaserver.api.deps import CampaignStores

    campaigns = PgCampaignStore(db, clock, node_id=node_id(cfg))
    return CampaignStores(_as(campaigns), _as(PgSegmentStore(db, clock)))


def wire_postgres(
    cfg: Config, db: PgDatabase, queue: PgQueue, clock: Clock, current: Callable[[], Config],
    template: Template | None = None,
) -> Wiring:  # fmt: skip
    """Every ported component over ``db``; ``queue`` leases as this node; ``template``
    forks the submission workers ([server] workers > 1), as on SQLite."""
    inbound = cfg.inbound
    users = PgUserStore(db, clock)
    suppressions = PgSuppressionStore(db, clock, inbound.suppression)
    events = PgEventLog(db)
    verp = (
        Verp(read_secret(cfg.server.secret_file), inbound.verp_prefix, inbound.bounce_domain)
        if inbound.bounce_domain
        else None
    )
    signer = DkimSigner(load_keyset(cfg.dkim), clock)
    resolver = build_resolver(cfg, clock)
    agent = build_agent(cfg, resolver, verp, clock)
    shaper = build_shaper(cfg, clock)
    # Links in mail rewritten with the tracking secret ([tracking] base_url); hits on any
    # node's endpoint recorded in the cluster's event log.
    tracking = build_tracking(cfg, PgTrackingStore(db), suppressions, clock)
    recorder = tracking.recorder if tracking is not None else None
    outbox = PgWebhookOutbox(db)  # the cluster's: every node's events, any node POSTs
    metrics = Metrics(
        queue, events, top_destinations=cfg.admin.top_destinations, clock=clock.now,
        shaper=shaper, webhooks=outbox,
        tracking_dropped=(lambda: recorder.dropped) if recorder is not None else None,
    )  # fmt: skip
    db.on_commit.append(metrics.db_committed)  # this node's transactions' commit latency
    # [cluster] redis: limits shared with the other nodes (else this node's own shaper).
    cluster = build_cluster(cfg, shaper, queue, clock, metrics)
    shared = cluster.shared if cluster else None
    if cluster is not None:  # each connection holds a slot of the cluster's while open
        agent.use_leases(cluster.shared.connections)
    timed = TimedAgent(agent, metrics.attempt_finished)
    # The queue is not on this disk, but the spool's temporary files and logs are.
    space = FreeSpace(cfg.server.data_dir, cfg.storage.min_free, clock.monotonic)
    q, s = _as(queue), _as(suppressions)
    unsubscribe_mail = tracking.mail_unsubscribe if tracking is not None else None
    services: list[Service] = [
        dkim_service(signer),
        delivery_service(resolver, agent),
        *([cluster.service] if cluster else []),  # before the scheduler asks it
        scheduler_service(cfg, q, timed, shaper, resolver, s, clock, shared),
        # bounces, mail to the unsubscribe mailto:, the suppressions' expiry purge
        inbound_service(cfg, q, s, verp, unsubscribe_mail, space, clock),
        Retention(queue, events, outbox, cfg.retention, clock),
    ]
    # double opt-in confirm and preferences pages, served with the tracking endpoint
    consent = pg_consent_pages(cfg, tracking, PgContactStore(db, clock), suppressions, users,
                               clock)  # fmt: skip
    track = tracking_service(cfg, tracking, clock, consent) if tracking is not None else None
    if track is not None:
        services.append(track)
    hooks = pg_webhooks_service(cfg, outbox, clock)
    if hooks is not None:
        services.append(hooks)
    sub = cfg.submission
    tracker = tracking.tracker if tracking is not None else None
    mail = MailParts(
        q, _as(users), s, signer, tracker, metrics, space, clock, UserRates(sub, clock)
    )
    # campaign runs fed into the queue; every node's feeder claims its own rows of a run
    services.append(pg_campaigns_service(cfg, mail, db, node_id(cfg)))
    # trigger steps: every node's runner claims the due steps it fires (each sent once)
    journeys = PgJourneyStore(db, clock, node=node_id(cfg))
    services.append(pg_journeys_service(cfg, mail, journeys))
    optin = (
        pg_optin_service(cfg, mail, PgOptInStore(db), tracking.codec)
        if consent is not None and tracking is not None
        else None
    )  # the confirmation mailer: every node's, each membership's mail kept once
    if optin is not None:
        services.append(optin[0])
    if sub.listen or sub.listen_tls or sub.listen_plain:  # workers commit through this process
        one = cfg.server.workers == 1
        services.append(
            submission_service(cfg, mail) if one else workers_service(cfg, mail, template)
        )
    # The HTTP send API: keys, idempotent answers, batches and templates in the cluster's
    # database, so a key made on one node sends through any; contacts, lists, segments
    # and campaigns (/v1) there too.
    api = api_service(
        cfg,
        mail,
        PgTemplateStore(db, clock),
        optin_nudge=optin[1].nudge if optin is not None else None,
        stores=ApiStores(
            PgApiKeyStore(db, clock),
            PgApiIntake(db, queue),
            queue,
            contacts=_as(PgContactStore(db, clock)),
            journeys=_as(journeys),
            optin=_as(PgOptInStore(db)),
            segments=_as(PgSegmentStore(db, clock)),
            activity=_as(PgActivityStore(db)),
            campaigns=_campaign_stores(cfg, db, clock),
        ),
    )
    if api is not None:
        services.append(api)
    admin = pg_admin_service(cfg, db, queue, signer, metrics, clock, current)
    if admin is not None:
        services.append(admin)
    return Wiring(tuple(services), metrics)
