"""A real tracking stack: database, spool, event log, recorder, listening aiohttp app."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from mtaserver.model import (
    Event,
    PreparedMessage,
    PreparedRecipient,
    RecipientState,
    RecipientUpdate,
)
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.tracking import SqlTrackingStore
from mtaserver.tracking.bots import BotDetector, load_rules
from mtaserver.tracking.privacy import IpPrivacy
from mtaserver.tracking.recorder import Recorder
from mtaserver.tracking.tracker import Tracker
from mtaserver.tracking.web import TrackingWeb
from tests.support.clock import FakeClock
from tests.tracking.helpers import codec

BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


@dataclass
class Unsubscribed:
    """The UnsubscribeSink as app wires it (real SuppressionStore), remembering the calls."""

    store: SuppressionStore
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    async def unsubscribe(
        self, sender_domain: str | None, address: str, queue_id: str, at: float
    ) -> None:
        self.calls.append((sender_domain or "", address, queue_id))
        await self.store.add(
            address, "unsubscribe", scope=sender_domain, source="tracking",
            queue_id=queue_id,
        )  # fmt: skip


@dataclass
class Stack:
    db: Database
    spool: Spool
    clock: FakeClock
    recorder: Recorder
    web: TrackingWeb
    tracker: Tracker
    unsubscribed: Unsubscribed
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.web.port}"

    async def message(
        self,
        queue_id: str,
        recipients: tuple[str, ...],
        *,
        campaign: str | None = None,
        user: str | None = "alice",
        sender: str = "news@example.com",
    ) -> None:
        await self.spool.enqueue(
            PreparedMessage(
                queue_id=queue_id,
                sender=sender,
                recipients=tuple(PreparedRecipient(a) for a in recipients),
                data=b"Subject: x\r\n\r\nx\r\n",
                user=user,
                client_ip="192.0.2.1",
                received_at=self.clock.now(),
                campaign=campaign,
            )
        )

    async def outcome(
        self, queue_id: str, idx: int, address: str, type_: str, **data: object
    ) -> None:
        """Record a delivery outcome the way the scheduler does (state + event)."""
        state = {
            "delivered": RecipientState.DELIVERED,
            "bounced": RecipientState.BOUNCED,
            "deferred": RecipientState.QUEUED,
        }.get(type_)
        updates = [RecipientUpdate(queue_id, idx, state, "250 ok")] if state else []
        ev = Event(type_, self.clock.now(), queue_id, address, tuple({"idx": idx, **data}.items()))  # type: ignore[arg-type]
        await self.spool.record(updates, [ev])

    async def events(self, type_: str) -> list[tuple[str | None, str | None, dict[str, object]]]:
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT queue_id, recipient, data FROM events WHERE type=? ORDER BY id", (type_,)
            ).fetchall()
        )
        return [(q, r, json.loads(d)) for q, r, d in rows]

    async def settle(self) -> None:
        """Let the hold time pass and write every pending hit."""
        self.clock.advance(self.recorder.hold + 1)
        await self.recorder.flush()


@pytest.fixture
async def stack(db: Database) -> AsyncIterator[Stack]:
    clock = FakeClock()
    c = codec()
    unsub = Unsubscribed(SuppressionStore(db, clock))
    recorder = Recorder(
        SqlTrackingStore(db),
        BotDetector(load_rules(), scanner_window=10, burst_window=2, burst_links=3),
        IpPrivacy("truncate", c.key),
        clock,
        unsubscribes=unsub,
    )
    web = TrackingWeb(
        c, recorder, clock, trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),), access_log=True
    )
    await web.start("127.0.0.1", 0)
    http = aiohttp.ClientSession(headers={"User-Agent": BROWSER})
    tracker = Tracker(c, "https://t.example.com", None)
    try:
        yield Stack(db, Spool(db), clock, recorder, web, tracker, unsub, http)
    finally:
        await http.close()
        await web.stop()
