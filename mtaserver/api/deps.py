"""What the HTTP send API needs from the rest of the daemon, as Protocols.

The API never imports a stage: ``app.api`` hands it the key store, the user store, the
suppression list, the pipeline's ``prepare`` (cleanup → tracking → DKIM, exactly as for
SMTP), the intake that commits a request in one transaction, and a template source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mtaserver.clock import Clock
from mtaserver.model import Event, PreparedMessage, Submission
from mtaserver.ratelimit import RateLimiter
from mtaserver.sendapi import Limits, StoredTemplate
from mtaserver.storage.sqlite.activity import ActivityStore
from mtaserver.storage.sqlite.campaigns import CampaignStore
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.idempotency import IdemAnswer
from mtaserver.storage.sqlite.journeys import JourneyStore
from mtaserver.storage.sqlite.optin import OptInStore
from mtaserver.storage.sqlite.queue import BatchChange, BatchInfo
from mtaserver.storage.sqlite.segments import SegmentStore


class TemplateSource(Protocol):
    """Stored templates addressed by ``template_id`` (the templates store satisfies it)."""

    async def get(self, template_id: str) -> StoredTemplate | None: ...


class NoTemplates:
    """The source used until a template store is wired: every template_id is unknown."""

    async def get(self, template_id: str) -> StoredTemplate | None:
        return None


class KeyInfo(Protocol):
    @property
    def key_id(self) -> str: ...

    @property
    def user(self) -> str: ...

    @property
    def scopes(self) -> frozenset[str]: ...


class Keys(Protocol):
    async def verify(self, key: str) -> KeyInfo | None:
        """The key's info, None when it is not valid; raises :class:`KeysUnavailable` when
        it cannot be checked now (an OAuth issuer's keys cannot be fetched)."""
        ...


class KeysUnavailable(Exception):
    """A credential that cannot be checked right now: answered 503, never accepted."""


class Sender(Protocol):
    """The key's user: which sending domains it owns."""

    @property
    def name(self) -> str: ...

    def owns(self, domain: str) -> bool: ...


class Users(Protocol):
    async def lookup(self, name: str) -> tuple[Sender, str] | None: ...


class Suppressions(Protocol):
    async def check(self, address: str, sender_domain: str | None) -> object | None: ...


class Preparer(Protocol):
    """The pipeline's prepare: cleanup, tracking, DKIM — the same objects SMTP uses."""

    async def prepare(self, sub: Submission, queue_id: str) -> PreparedMessage: ...


class Intake(Protocol):
    async def lookup(self, key_id: str, idem_key: str, since: float) -> IdemAnswer | None: ...

    async def commit(
        self,
        messages: Sequence[PreparedMessage],
        events: Sequence[Event],
        answer: IdemAnswer | None,
        *,
        stale_before: float = 0.0,
    ) -> IdemAnswer | None: ...


class Batches(Protocol):
    async def create_batch(self, user: str, now: float | None = None) -> BatchInfo: ...

    async def batch(self, batch_id: str) -> BatchInfo | None: ...

    async def list_batches(self, user: str) -> tuple[BatchInfo, ...]: ...

    async def set_batch_status(
        self, batch_id: str, status: str | None, now: float | None = None
    ) -> BatchChange | None: ...


@dataclass(frozen=True)
class CampaignStores:
    """The owners behind ``/v1/campaigns`` when they are not on the contact store's SQLite
    file (a PostgreSQL node passes its own, which have the same methods)."""

    campaigns: CampaignStore
    segments: SegmentStore


@dataclass(frozen=True)
class ApiDeps:
    keys: Keys
    users: Users
    suppressions: Suppressions
    preparer: Callable[[], Preparer]  # the pipeline in force (rebuilt on SIGHUP)
    intake: Intake
    batches: Batches
    templates: TemplateSource
    clock: Clock
    new_queue_id: Callable[[float], str]
    limits: Callable[[], Limits]
    idempotency_window: Callable[[], float]
    hostname: str  # for generated Message-IDs
    user_rate: Callable[[], RateLimiter | None] = lambda: None  # shared with SMTP submission
    render_slots: int = 2  # requests composed at once, each in a worker thread
    # Messages of one request prepared (signed) at once. Each signature is a thread hop that
    # hands the GIL around; 8 keep the loop's lag near 10 ms during a 1,000-message request
    # with DKIM (64: 20-50 ms) for ~20% more time to the 202.
    prepare_concurrency: int = 8
    contacts: ContactStore | None = None  # /v1/contacts and /v1/lists (api.contacts)
    journeys: JourneyStore | None = None  # /v1/events and /v1/triggers (api.events)
    # Something joined a list: the double opt-in mailer looks for confirmations to send.
    optin_nudge: Callable[[], None] = lambda: None
    optin: OptInStore | None = None  # a list's confirmation mail settings
    campaigns: CampaignStores | None = None  # /v1/campaigns (default: on the contacts' db)
    segments: SegmentStore | None = None  # /v1/segments (default: on the contacts' db)
    activity: ActivityStore | None = None  # /v1/contacts/{address}/activity (likewise)
