"""What the scheduler needs from the rest of the daemon; app wires the concrete objects."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mtaserver.model import (
    DeliveryJob,
    DeliveryReport,
    Event,
    PreparedMessage,
    RecipientUpdate,
    RoutePolicy,
)


class QueueStore(Protocol):
    async def claim_due(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[DeliveryJob]: ...

    async def record(
        self, updates: Sequence[RecipientUpdate], events: Sequence[Event] = ()
    ) -> Sequence[int]: ...

    async def defer_domain(self, domain: str, until: float) -> int: ...

    async def release_expired(self, now: float) -> int: ...

    async def release_leases(self, now: float | None = None) -> int: ...

    async def enqueue(self, msg: PreparedMessage, events: Sequence[Event] = ()) -> None: ...

    async def dsn_sent(self, queue_id: str, action: str) -> bool: ...


class Agent(Protocol):
    async def deliver(self, job: DeliveryJob, policy: RoutePolicy) -> DeliveryReport: ...


class SharedLimits(Protocol):
    """Limits shared with other nodes ([cluster]), asked before the local shaper.

    ``acquire`` answers like ``Shaper.acquire``: None when a connection may open now (then
    ``release`` follows), else seconds to wait. ``suspend`` tells the other nodes what the
    local shaper concluded from a reply."""

    async def acquire(self, destination: str) -> float | None: ...

    async def release(self, destination: str) -> None: ...

    async def suspend(self, destination: str, until: float, reason: str) -> None: ...


class MxLookup(Protocol):
    async def mx_hosts(self, domain: str) -> Sequence[str]:
        """MX host names of a domain (empty when unknown); used only to group domains."""
        ...


@dataclass(frozen=True, slots=True)
class SyncBounce:
    """A permanent failure seen at delivery (a 5xx at RCPT or DATA), for the suppression
    policy: an unknown user at RCPT is suppressed like an async bounce, a spam verdict not."""

    address: str
    reason: str  # classify.toml reason of the reply
    reply: str  # the reply as the remote server gave it
    queue_id: str
    sender_domain: str | None


OnBounce = Callable[[SyncBounce], Awaitable[None]]
