"""What inbound needs from the rest of the daemon: Protocols the wiring satisfies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from mtaserver.model import (
    Event,
    RecipientUpdate,
)
from mtaserver.suppression import Suppression


class MessageView(Protocol):
    sender: str

    @property
    def recipients(self) -> Sequence[Any]: ...


class Queue(Protocol):
    """What inbound needs from the spool."""

    async def show(self, queue_id: str) -> Any: ...

    async def find_by_message_id(self, message_id: str) -> Sequence[tuple[str, int]]: ...

    async def record(
        self, updates: Sequence[RecipientUpdate], events: Sequence[Event] = ()
    ) -> Sequence[int]: ...


class Suppressor(Protocol):
    async def apply(
        self,
        address: str,
        reason: str,
        *,
        sender_domain: str | None,
        source: str,
        kind: str | None = None,
        reply: str | None = None,
        queue_id: str | None = None,
        event_id: int | None = None,
    ) -> Suppression | None: ...


class UnsubscribeReply(Protocol):
    @property
    def outcome(self) -> str: ...

    @property
    def reply(self) -> str: ...


class SpaceCheck(Protocol):
    """Free space where the queue lives (``mtaserver.diskspace.FreeSpace``)."""

    def low(self, need: int = 0) -> bool: ...


class Unsubscribes(Protocol):
    """Mail to the ``mailto:`` List-Unsubscribe address (``tracking.mailto.MailUnsubscribe``)."""

    def accepts(self, rcpt: str) -> bool: ...

    async def process(self, raw: bytes, client_ip: str) -> UnsubscribeReply: ...
