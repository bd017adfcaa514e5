"""Delivery status notifications to the sender: failures grouped per message, one delay
warning per message.

The scheduler hands each bounced recipient (still leased) to :meth:`Notices.hold`; once no
job of that message remains in flight it calls :meth:`Notices.flush`, which enqueues one
DSN for all of them and only then records them as bounced — a crash in between means a
second attempt and at worst a second DSN, never a lost one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mtaserver.bouncegen import DsnRecipient, DsnRequest, build_dsn
from mtaserver.log import get_logger, kv
from mtaserver.model import (
    DeliveryJob,
    Event,
    PreparedMessage,
    PreparedRecipient,
    RecipientUpdate,
)

log = get_logger("scheduler")
_MAX_WARNED = 100_000


class NoticeStore(Protocol):
    """What notices need from the spool."""

    async def enqueue(self, msg: PreparedMessage, events: Sequence[Event] = ()) -> None: ...

    async def record(
        self, updates: Sequence[RecipientUpdate], events: Sequence[Event] = ()
    ) -> Sequence[int]: ...

    async def dsn_sent(self, queue_id: str, action: str) -> bool: ...


@dataclass(slots=True)
class _Held:
    job: DeliveryJob
    recipients: list[DsnRecipient] = field(default_factory=list)
    updates: list[RecipientUpdate] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


class Notices:
    """Builds and enqueues DSNs (RFC 3464) for the scheduler."""

    def __init__(
        self, spool: NoticeStore, hostname: str, new_queue_id: Callable[[float], str]
    ) -> None:
        self._spool = spool
        self._hostname = hostname
        self._new_queue_id = new_queue_id
        self._held: dict[str, _Held] = {}
        self._warned: OrderedDict[str, None] = OrderedDict()  # delay warnings sent

    def hold(
        self,
        job: DeliveryJob,
        recipients: Sequence[DsnRecipient],
        updates: Sequence[RecipientUpdate],
        events: Sequence[Event],
    ) -> None:
        """Keep bounced recipients (not yet recorded) for the message's one DSN."""
        held = self._held.get(job.queue_id)
        if held is None:
            held = self._held[job.queue_id] = _Held(job)
        held.recipients.extend(recipients)
        held.updates.extend(updates)
        held.events.extend(events)

    def held(self) -> list[str]:
        return list(self._held)

    async def flush(self, queue_id: str, now: float) -> None:
        """Enqueue the message's DSN, then record its held recipients as bounced."""
        held = self._held.pop(queue_id, None)
        if held is None:
            return
        await self.send(held.job, held.recipients, now)
        await self._spool.record(held.updates, held.events)

    def warned(self, queue_id: str) -> bool:
        return queue_id in self._warned

    async def delay_warning(
        self, job: DeliveryJob, recipients: Sequence[DsnRecipient], now: float
    ) -> None:
        """One "delayed" DSN per message: remembered in memory, and in the events table
        (a `dsn_sent` event with action "delayed") across restarts."""
        self._warned[job.queue_id] = None
        while len(self._warned) > _MAX_WARNED:
            self._warned.popitem(last=False)
        if await self._spool.dsn_sent(job.queue_id, "delayed"):
            return
        await self.send(job, recipients, now, delayed=True)

    async def send(
        self,
        job: DeliveryJob,
        recipients: Sequence[DsnRecipient],
        now: float,
        delayed: bool = False,
    ) -> None:
        req = DsnRequest(
            queue_id=job.queue_id,
            sender=job.sender,
            original=job.data,
            arrival=job.received_at,
            recipients=tuple(recipients),
            is_dsn=job.is_dsn,
        )
        dsn = build_dsn(req, hostname=self._hostname, now=now, delayed=delayed)
        if dsn is None:
            return
        qid = self._new_queue_id(now)
        msg = PreparedMessage(
            queue_id=qid,
            sender="",
            recipients=(PreparedRecipient(dsn.recipient),),
            data=dsn.data,
            user=job.user,
            client_ip="",
            received_at=now,
            message_id=dsn.message_id,
            dsn=False,
            is_dsn=True,
        )
        action = "delayed" if delayed else "failed"
        event = Event(
            "dsn_sent",
            now,
            job.queue_id,
            job.sender,
            (("dsn_queue_id", qid), ("action", action), ("recipients", len(recipients))),
        )
        await self._spool.enqueue(msg, [event])
        log.info(
            kv(
                event="dsn_queued",
                queue_id=job.queue_id,
                dsn_queue_id=qid,
                to=f"<{dsn.recipient}>",
                action=action,
                recipients=len(recipients),
            )
        )
