"""Triggered mail, double opt-in and the preferences page on a PostgreSQL node.

The same :class:`~mtaserver.outreach.runner.StepRunner`,
:class:`~mtaserver.tracking.optin.OptInMailer` and consent pages as on SQLite, over the
cluster's owners. Every node runs them: a node's runner claims the due steps it fires
(``storage.postgres.journeys``), so the nodes share the due work and each step is sent
once; a confirmation queued by two nodes at once is kept once (``storage.postgres.optin``);
a confirm or preferences link signed by any node opens on every node (the same tracking
secret_file on each, as for the tracking links).
"""

from __future__ import annotations

from mtaserver.app.api import _pipeline
from mtaserver.app.mail import MailParts
from mtaserver.app.ops import TrackingParts
from mtaserver.app.optin import consent_pages
from mtaserver.app.pgcampaigns import pg_outreach_sender
from mtaserver.app.pgops import as_sqlite_owner
from mtaserver.app.service import Service, SimpleService
from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.log import get_logger, kv
from mtaserver.outreach.runner import StepRunner
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.journeys import PgJourneyStore
from mtaserver.storage.postgres.optin import PgOptInStore
from mtaserver.storage.sqlite.queue import new_queue_id
from mtaserver.tracking.consent_tokens import ConsentTokens
from mtaserver.tracking.optin import OptInMailer
from mtaserver.tracking.preferences import ConsentPages
from mtaserver.tracking.tokens import TokenCodec

log = get_logger("journeys")


def pg_journeys_service(cfg: Config, parts: MailParts, store: PgJourneyStore) -> Service:
    """This node's step runner; after SIGHUP the next batch uses the new pipeline."""
    db: PgDatabase = store.db
    runner = StepRunner(as_sqlite_owner(store), pg_outreach_sender(cfg, parts, db), parts.clock)

    async def run() -> None:
        log.info(kv(event="journeys_started", next_due=await store.next_due(), node=store.node))
        await runner.run()

    async def reload(new: Config) -> None:
        runner.sender = pg_outreach_sender(new, parts, db)

    return SimpleService("journeys", on_run=run, on_reload=reload)


def pg_optin_service(
    cfg: Config, parts: MailParts, store: PgOptInStore, codec: TokenCodec
) -> tuple[Service, OptInMailer]:
    """The confirmation mailer (and its ``nudge`` for the API) when links can be signed."""
    assert cfg.tracking.base_url is not None
    current = [_pipeline(cfg, parts)]
    mailer = OptInMailer(
        as_sqlite_owner(store), ConsentTokens(codec), cfg.tracking.base_url, parts.users,
        lambda: current[0], parts.spool, new_queue_id, parts.clock,
    )  # fmt: skip

    async def reload(new: Config) -> None:
        current[0] = _pipeline(new, parts)

    return SimpleService("optin", on_run=mailer.run, on_reload=reload), mailer


def pg_consent_pages(
    cfg: Config, tracking: TrackingParts | None, contacts: object, suppressions: object,
    users: object, clock: Clock,
) -> ConsentPages | None:  # fmt: skip
    """The confirm and preferences pages on ``[tracking] listen`` (None without it)."""
    if tracking is None or cfg.tracking.listen is None:
        return None
    return consent_pages(
        tracking.codec, as_sqlite_owner(contacts), as_sqlite_owner(suppressions),
        as_sqlite_owner(users), clock,
    )  # fmt: skip
