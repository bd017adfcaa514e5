"""The HTTP send API service (``[api] listen``): SendGrid v3 mail/send into the pipeline.

Messages go through the same :class:`~mtaserver.pipeline.Pipeline` ``prepare`` as SMTP
submission (cleanup, tracking, DKIM with the one signer), the same suppression list and
the same queue; the key's user binds the sender and the submission section's per-user
rate applies, from the same buckets SMTP submission spends (one token per request, as SMTP
spends one per transaction). On SIGHUP the limits, the pipeline's settings, the
rate and the certificate take effect for the next request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mtaserver.app.mail import MailParts, _track_defaults
from mtaserver.app.service import Service, SimpleService
from mtaserver.config import Config
from mtaserver.log import get_logger, kv
from mtaserver.pipeline import Pipeline
from mtaserver.storage.sqlite.queue import new_queue_id

if TYPE_CHECKING:  # the API's own modules load in api_service, when [api] listen is set
    from mtaserver.api import TemplateSource
    from mtaserver.api.deps import Batches, CampaignStores, Intake, Keys
    from mtaserver.sendapi import Limits
    from mtaserver.storage.sqlite.activity import ActivityStore
    from mtaserver.storage.sqlite.contacts import ContactStore
    from mtaserver.storage.sqlite.journeys import JourneyStore
    from mtaserver.storage.sqlite.optin import OptInStore
    from mtaserver.storage.sqlite.segments import SegmentStore

    class PurgingIntake(Intake, Protocol):
        async def purge(self, before: float, limit: int = 10_000) -> int: ...


log = get_logger("app")
PURGE_EVERY = 3600.0  # seconds between deletes of expired idempotent answers


def api_limits(cfg: Config) -> Limits:
    from mtaserver.sendapi import Limits  # the send API's modules: [api] only

    a = cfg.api
    return Limits(
        max_personalizations=a.max_personalizations,
        max_recipients=a.max_recipients,
        max_total_bytes=a.max_body,
        max_send_ahead=int(a.max_send_ahead),
    )


@dataclass(frozen=True)
class ApiStores:
    """The API's own stores on the node's backend (SQLite's unless given: a PostgreSQL node
    passes its owners, cast to the SQLite types they mirror)."""

    keys: Keys
    intake: PurgingIntake
    batches: Batches
    contacts: ContactStore | None = None
    journeys: JourneyStore | None = None
    optin: OptInStore | None = None
    # A PostgreSQL node's segments, timelines and campaigns (SQLite's: on the contacts' db).
    segments: SegmentStore | None = None
    activity: ActivityStore | None = None
    campaigns: CampaignStores | None = None


def _sqlite_stores(parts: MailParts) -> ApiStores:
    # The API's own stores (contacts, journeys, opt-in): built only for [api] listen.
    from mtaserver.storage.sqlite.apikeys import ApiKeyStore
    from mtaserver.storage.sqlite.contacts import ContactStore
    from mtaserver.storage.sqlite.idempotency import ApiIntake
    from mtaserver.storage.sqlite.journeys import JourneyStore
    from mtaserver.storage.sqlite.optin import OptInStore

    db, clock = parts.spool.db, parts.clock
    return ApiStores(ApiKeyStore(db, clock), ApiIntake(db, parts.spool), parts.spool,
                     ContactStore(db, clock), JourneyStore(db, clock), OptInStore(db))  # fmt: skip


@dataclass
class _Current:
    """The config in force for the API (replaced whole on SIGHUP)."""

    cfg: Config
    pipeline: Pipeline
    limits: Limits


def _pipeline(cfg: Config, parts: MailParts) -> Pipeline:
    sub = cfg.submission
    return Pipeline(
        spool=parts.spool,
        new_queue_id=new_queue_id,
        hostname=cfg.server.hostname,
        max_header_size=sub.max_header_size,
        max_mime_depth=sub.max_mime_depth,
        tracker=parts.tracker,
        signer=parts.signer,
        tracking_defaults=lambda user: _track_defaults(cfg, user),
    )


def api_service(
    cfg: Config, parts: MailParts, templates: TemplateSource | None = None,
    optin_nudge: Callable[[], None] | None = None, stores: ApiStores | None = None,
) -> Service | None:  # fmt: skip
    """The listener on ``[api] listen``; off when unset. ``templates`` defaults to a
    source that knows no template (every ``template_id`` is answered 400)."""
    a = cfg.api
    if a.listen is None:
        return None
    # aiohttp, PyJWT and the API's modules: loaded only by a daemon that serves the API.
    from mtaserver.api import ApiDeps, ApiServer, NoTemplates, build_api_app
    from mtaserver.app.bearer import KeysOrTokens
    from mtaserver.oauth import CurrentVerifier

    clock = parts.clock
    st = stores or _sqlite_stores(parts)
    current = _Current(cfg, _pipeline(cfg, parts), api_limits(cfg))
    rates = parts.user_rates
    intake = st.intake
    oauth = CurrentVerifier(cfg.oauth, clock)  # JWT bearers beside the API keys
    deps = ApiDeps(
        keys=KeysOrTokens(st.keys, oauth),
        users=parts.users,
        suppressions=parts.suppressions,
        preparer=lambda: current.pipeline,
        intake=intake,
        batches=st.batches,
        templates=templates or NoTemplates(),
        clock=clock,
        new_queue_id=new_queue_id,
        limits=lambda: current.limits,
        idempotency_window=lambda: current.cfg.api.idempotency_window,
        hostname=cfg.server.hostname,
        user_rate=lambda: rates.limiter,
        render_slots=a.max_concurrent_renders,
        contacts=st.contacts,
        journeys=st.journeys,
        optin_nudge=optin_nudge or (lambda: None),
        optin=st.optin,
        segments=st.segments,
        activity=st.activity,
        campaigns=st.campaigns,
    )
    ssl_context = cfg.tls.server_context() if a.tls else None
    server = ApiServer(build_api_app(deps), ssl_context)
    host, port = a.listen

    async def start() -> None:
        await server.start(host, port)

    async def run() -> None:
        while True:
            window = current.cfg.api.idempotency_window
            n = await intake.purge(clock.now() - window)
            if n:
                log.info(kv(event="idempotency_expired", count=n))
            await clock.sleep(PURGE_EVERY)

    async def drain(timeout: float) -> None:
        await server.stop()
        await oauth.aclose()

    async def reload(new: Config) -> None:
        if ssl_context is not None and new.tls.cert and new.tls.key:
            ssl_context.load_cert_chain(str(new.tls.cert), str(new.tls.key))
        await oauth.apply(new.oauth)
        current.cfg, current.pipeline, current.limits = new, _pipeline(new, parts), api_limits(new)
        rates.apply(new.submission)  # the same buckets as submission: applying twice is a no-op
        log.info(kv(event="api_reloaded", max_personalizations=new.api.max_personalizations,
                    max_body=new.api.max_body))  # fmt: skip

    return SimpleService("api", start, run, drain, reload)
