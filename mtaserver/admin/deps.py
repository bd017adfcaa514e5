"""What the admin endpoints are wired to (``app`` builds it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mtaserver.auth import MIN_PASSWORD
from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.dkim.keys import KeySet
from mtaserver.metrics import Metrics
from mtaserver.model import StoredEvent
from mtaserver.privacy import PrivacyStore
from mtaserver.storage.sqlite.outreach_stats import CampaignReport, TriggerReport
from mtaserver.storage.sqlite.queue import BodyCodec, Spool
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.templates import TemplateStore
from mtaserver.tracking.stats import CohortSource


class UserRecordView(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def domains(self) -> tuple[str, ...]: ...
    @property
    def created_at(self) -> float: ...
    @property
    def updated_at(self) -> float: ...


class UserAdmin(Protocol):
    """The user store (``mtaserver.auth.UserStore``); no method returns a password hash."""

    async def add(self, name: str, password_hash: str, domains: list[str]) -> None: ...
    async def remove(self, name: str) -> None: ...
    async def list(self) -> Sequence[UserRecordView]: ...


class EventFeed(Protocol):
    async def page(
        self, *, after: int = 0, limit: int = 100, types: Sequence[str] = (),
        queue_id: str | None = None,
    ) -> Sequence[StoredEvent]: ...  # fmt: skip


class OutreachReports(Protocol):
    """Per-campaign and per-trigger-step numbers (``storage.sqlite.outreach_stats``)."""

    async def campaign(
        self, owner: str, name: str, since: float = 0.0
    ) -> CampaignReport | None: ...
    async def trigger(self, owner: str, name: str, since: float = 0.0) -> TriggerReport | None: ...


@dataclass
class AdminDeps:
    """What the endpoints are wired to (built in ``app``)."""

    privacy: PrivacyStore
    spool: Spool
    config: Callable[[], Config]  # the current config (it changes on SIGHUP)
    keys: Callable[[], KeySet]  # the signer's current DKIM keys
    metrics: Metrics
    clock: Clock
    events: EventFeed
    reports: CohortSource
    users: UserAdmin | None = None
    suppressions: SuppressionStore | None = None
    codec: Callable[[], BodyCodec] | None = None  # the spool's body codec (privacy export/erase)
    hash_password: Callable[[str], str] | None = None
    min_password: int = MIN_PASSWORD  # the same rule as `mtaserver user add`
    templates: TemplateStore | None = None  # stored templates for the send API
    outreach: OutreachReports | None = None  # campaign and trigger stats
