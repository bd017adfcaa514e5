"""Turn endpoint hits into ``open`` / ``click`` / ``unsubscribe`` events, in batches.

The HTTP handlers never wait for the database: a hit goes into a bounded buffer and the
handler answers at once. :meth:`Recorder.run` drains the buffer every ``flush_every``
seconds, holding each hit ``hold`` seconds first so that a scanner's burst over every link
of a message is judged as a whole. One flush is one lookup (recipient, campaign, delivery
time for every recipient in the batch) and one write through the group-committed
``EventLog`` - a thousand opens are one transaction and one fsync, not a thousand.

Unsubscribes are the exception: they change state (a suppression), so the POST waits
until both the suppression and the event are stored before it says "done".
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from mtaserver.clock import Clock
from mtaserver.db import Database
from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv
from mtaserver.model import Event, TrackingEvent
from mtaserver.spool import event_row
from mtaserver.tracking.bots import BotDetector, Hit, Verdict
from mtaserver.tracking.privacy import IpPrivacy

log = get_logger("tracking")

_MAX_UA = 300
_INFO_CACHE = 100_000
_SETTLED_TTL = 600.0
_UNSETTLED_TTL = 5.0
_FINAL_STATES = frozenset({"delivered", "bounced", "suppressed"})
Key = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RecipientInfo:
    """What the queue knows about a tracked recipient."""

    address: str
    sender: str
    campaign: str | None
    user: str | None
    state: str
    delivered_at: float | None


class TrackingStore(Protocol):
    """Reads the queue tables and writes events (``SqlTrackingStore`` in production)."""

    async def lookup(self, keys: Sequence[Key]) -> dict[Key, RecipientInfo]: ...

    async def write_events(self, events: Sequence[Event]) -> None: ...


class UnsubscribeSink(Protocol):
    """Suppresses ``address`` for mail from ``sender`` (app wires the SuppressionStore)."""

    async def unsubscribe(self, sender: str, address: str, queue_id: str, at: float) -> None: ...


class SqlTrackingStore:
    """:class:`TrackingStore` over the core tables; events ride the group commit."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def lookup(self, keys: Sequence[Key]) -> dict[Key, RecipientInfo]:
        wanted = list(dict.fromkeys(keys))

        def op(conn: sqlite3.Connection) -> dict[Key, RecipientInfo]:
            out: dict[Key, RecipientInfo] = {}
            for qid, idx in wanted:
                row = conn.execute(
                    "SELECT r.address, m.sender, m.campaign, m.user, r.state, r.updated_at, "
                    "(SELECT min(e.at) FROM events e WHERE e.queue_id = r.queue_id "
                    " AND e.type = 'delivered' AND (e.recipient = r.address "
                    "  OR json_extract(e.data, '$.idx') = r.idx)) "
                    "FROM recipients r JOIN messages m ON m.id = r.queue_id "
                    "WHERE r.queue_id = ? AND r.idx = ?",
                    (qid, idx),
                ).fetchone()
                if row is None:
                    continue
                address, sender, campaign, user, state, updated_at, delivered = row
                if delivered is None and state == "delivered":
                    delivered = updated_at
                out[(qid, idx)] = RecipientInfo(address, sender, campaign, user, state, delivered)
            return out

        return await self.db.read(op)

    async def write_events(self, events: Sequence[Event]) -> None:
        # Rows are serialized here, on the loop, so the writer thread only runs SQLite
        # (which releases the GIL) rather than Python that competes with the HTTP handlers.
        rows = [event_row(e) for e in events]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO events(at, type, queue_id, recipient, data) VALUES (?,?,?,?,?)", rows
            )

        await self.db.write(op)


def to_event(te: TrackingEvent, info: RecipientInfo | None, proxy: str | None = None) -> Event:
    """The events-table row for one tracking event."""
    data: list[tuple[str, str | int | float | bool | None]] = [
        ("idx", te.idx),
        ("campaign", info.campaign if info else None),
        ("user", info.user if info else None),
        ("user_agent", te.user_agent[:_MAX_UA]),
        ("client_ip", te.client_ip),
        ("machine", te.machine),
    ]
    if te.reason:
        data.append(("reason", te.reason))
    if proxy:
        data.append(("proxy", proxy))
    if te.url is not None:
        data.append(("url", te.url))
    return Event(
        type=te.type,
        at=te.at,
        queue_id=te.queue_id,
        recipient=info.address if info else None,
        data=tuple(data),
    )


class Recorder:
    """Buffers hits, judges them (bots), and writes events in batches."""

    def __init__(
        self,
        store: TrackingStore,
        detector: BotDetector,
        privacy: IpPrivacy,
        clock: Clock,
        *,
        hold: float | None = None,
        flush_every: float = 0.5,
        max_pending: int = 100_000,
        unsubscribes: UnsubscribeSink | None = None,
    ) -> None:
        self.store = store
        self.detector = detector
        self.privacy = privacy
        self.clock = clock
        self.hold = detector.burst_window if hold is None else hold
        self.flush_every = flush_every
        self.max_pending = max_pending
        self.unsubscribes = unsubscribes
        self._pending: deque[Hit] = deque()
        self._recent: deque[Hit] = deque()  # judged clicks kept for burst context
        self._heads: dict[Key, deque[float]] = {}
        self._infos: dict[Key, tuple[float, RecipientInfo | None]] = {}
        self.dropped = 0
        self.recorded = 0

    # -- from the HTTP handlers (never block) ----------------------------------------------
    def hit(self, hit: Hit) -> bool:
        """Queue a GET hit; False (and counted in ``dropped``) when the buffer is full."""
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning(kv(event="tracking_buffer_full", dropped=self.dropped))
            return False
        self._pending.append(hit)
        return True

    def head(self, queue_id: str, idx: int, at: float) -> None:
        """Remember a HEAD (never counted, but it makes the next GET look like a scanner)."""
        if len(self._heads) >= self.max_pending:
            self._expire_heads(at)
            if len(self._heads) >= self.max_pending:
                return
        times = self._heads.setdefault((queue_id, idx), deque(maxlen=8))
        times.append(at)

    def _expire_heads(self, now: float) -> None:
        horizon = now - self.detector.scanner_window - self.hold
        for key in [k for k, v in self._heads.items() if not v or v[-1] < horizon]:
            del self._heads[key]

    # -- batching --------------------------------------------------------------------------
    async def flush(self, *, everything: bool = False) -> int:
        """Judge and write every hit older than ``hold`` (all of them with ``everything``)."""
        now = self.clock.now()
        cutoff = now - self.hold
        batch: list[Hit] = []
        while self._pending and (everything or self._pending[0].at <= cutoff):
            batch.append(self._pending.popleft())
        if not batch:
            return 0
        try:
            infos = await self._lookup([(h.queue_id, h.idx) for h in batch], now)
        except StorageError as exc:
            self._pending.extendleft(reversed(batch))
            log.error(kv(event="tracking_lookup_failed", error=str(exc)))
            return 0
        by_key: dict[Key, list[Hit]] = {}
        for o in (*self._recent, *batch, *self._pending):
            if o.type == "click":
                by_key.setdefault((o.queue_id, o.idx), []).append(o)
        events: list[Event] = []
        for h in batch:
            info = infos.get((h.queue_id, h.idx))
            nearby = [o for o in by_key.get((h.queue_id, h.idx), ()) if o is not h]
            verdict = self.detector.classify(
                h,
                known=info is not None,
                delivered_at=info.delivered_at if info else None,
                nearby=nearby,
                heads=tuple(self._heads.get((h.queue_id, h.idx), ())),
            )
            events.append(self._event(h, verdict, info))
        try:
            await self.store.write_events(events)
        except StorageError as exc:
            self._pending.extendleft(reversed(batch))
            log.error(kv(event="tracking_write_failed", count=len(events), error=str(exc)))
            return 0
        self.recorded += len(events)
        self._recent.extend(h for h in batch if h.type == "click")
        horizon = now - 2 * self.detector.burst_window - self.hold
        while self._recent and (self._recent[0].at < horizon or len(self._recent) > 10_000):
            self._recent.popleft()
        self._expire_heads(now)
        return len(events)

    async def _lookup(self, keys: Sequence[Key], now: float) -> dict[Key, RecipientInfo]:
        """Recipient facts, cached: final ones for 10 minutes, others for a few seconds."""
        cache = self._infos
        missing = [k for k in dict.fromkeys(keys) if k not in cache or cache[k][0] < now]
        if missing:
            fetched = await self.store.lookup(missing)
            if len(cache) + len(missing) > _INFO_CACHE:
                cache.clear()
            for k in missing:
                info = fetched.get(k)
                settled = info is not None and (
                    info.delivered_at is not None or info.state in _FINAL_STATES
                )
                cache[k] = (now + (_SETTLED_TTL if settled else _UNSETTLED_TTL), info)
        out: dict[Key, RecipientInfo] = {}
        for k in keys:
            info = cache[k][1]
            if info is not None:
                out[k] = info
        return out

    def _event(self, h: Hit, verdict: Verdict, info: RecipientInfo | None) -> Event:
        # The same row as to_event(TrackingEvent(...)), built directly: this runs per hit.
        data: list[tuple[str, str | int | float | bool | None]] = [
            ("idx", h.idx),
            ("campaign", info.campaign if info else None),
            ("user", info.user if info else None),
            ("user_agent", h.user_agent[:_MAX_UA]),
            ("client_ip", self.privacy.apply(h.ip)),
            ("machine", verdict.machine),
        ]
        if verdict.reason:
            data.append(("reason", verdict.reason))
        if verdict.proxy:
            data.append(("proxy", verdict.proxy))
        if h.url is not None:
            data.append(("url", h.url))
        return Event(h.type, h.at, h.queue_id, info.address if info else None, tuple(data))

    async def run(self) -> None:
        """Flush periodically until cancelled; on the way out write everything left."""
        try:
            while True:
                await asyncio.sleep(self.flush_every)
                await self.flush()
        finally:
            with contextlib.suppress(StorageError):
                await asyncio.shield(self.flush(everything=True))

    # -- unsubscribe ------------------------------------------------------------------------
    async def unsubscribe(self, queue_id: str, idx: int, user_agent: str, ip: str) -> bool:
        """Suppress the recipient for the message's sender and record the event.

        Returns False when the recipient is not (or no longer) in the queue tables: then
        there is no address to suppress. Raises StorageError when storing failed.
        """
        at = self.clock.now()
        infos = await self.store.lookup([(queue_id, idx)])
        info = infos.get((queue_id, idx))
        if info is None:
            return False
        if self.unsubscribes is not None:
            await self.unsubscribes.unsubscribe(info.sender, info.address, queue_id, at)
        te = TrackingEvent(
            type="unsubscribe",
            queue_id=queue_id,
            idx=idx,
            at=at,
            user_agent=user_agent,
            client_ip=self.privacy.apply(ip),
        )
        await self.store.write_events([to_event(te, info)])
        log.info(kv(event="unsubscribed", queue_id=queue_id, idx=idx))
        return True
