"""Campaigns on a PostgreSQL node: the feeder over the cluster's database.

The same :class:`~mtaserver.app.campaigns.Feeder` as on SQLite, given the PostgreSQL
owners (campaigns, segments, templates) and the PostgreSQL audience SQL. Every node runs
one: each claims the rows it feeds (``storage.postgres.campaigns``), so several nodes feed
one run together and each recipient is queued once across them.
"""

from __future__ import annotations

from mtaserver.app.api import _pipeline
from mtaserver.app.campaigns import Feeder
from mtaserver.app.journeys import link_builder
from mtaserver.app.mail import MailParts
from mtaserver.app.pgops import as_sqlite_owner
from mtaserver.app.service import Service, SimpleService
from mtaserver.config import Config
from mtaserver.outreach import OutreachSender
from mtaserver.storage.postgres.campaigns import PgCampaignStore, list_audience_sql
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.segments import PgSegmentStore, select_sql
from mtaserver.storage.postgres.templates import PgTemplateStore
from mtaserver.storage.sqlite.queue import new_queue_id


def pg_outreach_sender(cfg: Config, parts: MailParts, db: PgDatabase) -> OutreachSender:
    """:func:`mtaserver.app.journeys.outreach_sender` with the cluster's templates."""
    pipeline = _pipeline(cfg, parts)
    return OutreachSender(
        templates=PgTemplateStore(db, parts.clock),
        users=parts.users,
        suppressions=parts.suppressions,
        preparer=lambda: pipeline,
        queue=parts.spool,
        clock=parts.clock,
        new_queue_id=new_queue_id,
        hostname=cfg.server.hostname,
        links=link_builder(parts.tracker),
    )


def pg_feeder(cfg: Config, parts: MailParts, db: PgDatabase, node_id: str) -> Feeder:
    clock = parts.clock
    return Feeder(
        as_sqlite_owner(PgCampaignStore(db, clock, node_id=node_id)),
        as_sqlite_owner(PgSegmentStore(db, clock)),
        pg_outreach_sender(cfg, parts, db),
        clock,
        user_rate=lambda: parts.user_rates.limiter,
        select=select_sql,
        list_sql=list_audience_sql,
    )


def pg_campaigns_service(cfg: Config, parts: MailParts, db: PgDatabase, node_id: str) -> Service:
    """This node's feeder; after SIGHUP the next batch goes through the new pipeline."""
    feeder = pg_feeder(cfg, parts, db, node_id)

    async def reload(new: Config) -> None:
        feeder.sender = pg_outreach_sender(new, parts, db)

    return SimpleService("campaigns", on_run=feeder.run, on_reload=reload)
