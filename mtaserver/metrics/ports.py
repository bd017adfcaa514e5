"""What metrics reads from the rest of the daemon: Protocols the wiring satisfies."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from mtaserver.model import DeliveryJob, DeliveryReport, QueueGauges, RoutePolicy


class QueueGaugeSource(Protocol):
    """What the scrape-time queue gauges need from the queue owner."""

    async def gauges(self, states: Sequence[str], top: int, now: float) -> QueueGauges: ...


class EventTail(Protocol):
    """What counting events needs from the event log."""

    async def last_id(self) -> int: ...

    async def after(self, event_id: int, limit: int) -> Sequence[tuple[int, str, str]]: ...


class ShapingView(Protocol):
    """Read-only view of the shaper (``mtaserver.shaper.Shaper`` satisfies it)."""

    def destinations(self) -> Iterable[str]: ...

    def active(self, destination: str | None = None) -> int: ...

    def suspended_until(self, destination: str) -> float | None: ...

    def rate(self, destination: str) -> float | None: ...


class BacklogRow(Protocol):
    @property
    def webhook(self) -> str: ...
    @property
    def pending(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def failed(self) -> int: ...


class WebhookBacklog(Protocol):
    """The webhook outbox (``mtaserver.webhooks.WebhookOutbox`` satisfies it)."""

    async def backlog(self) -> Sequence[BacklogRow]: ...


class SmtpObserver(Protocol):
    """What the submission listeners report (one call per event)."""

    def session_started(self, listener: str) -> None: ...

    def auth_failed(self, listener: str) -> None: ...

    def recipient_refused(self, reason: str) -> None: ...


class Agent(Protocol):
    async def deliver(self, job: DeliveryJob, policy: RoutePolicy) -> DeliveryReport: ...
