"""Turn endpoint hits into ``open`` / ``click`` / ``unsubscribe`` events, in batches.

The HTTP handlers never wait for the database: a hit goes into a bounded buffer and the
handler answers at once. :meth:`Recorder.run` drains the buffer every ``flush_every``
seconds, holding each hit ``hold`` seconds first so that a scanner's burst over every link
of a message is judged as a whole. One flush is one statement in the group-committed
database writer - a thousand opens are one transaction and one fsync, not a thousand.

The event loop is what limits how many hits per second the endpoint serves, so a hit costs
it as little Python as possible: the verdict (memoized by user agent), the stored form of
the IP (memoized), one tuple. Everything else happens inside SQLite on the writer thread,
which runs with the GIL released: the recipient's address, campaign and user are joined
from the queue tables, and the event's JSON is built there (``storage.sqlite.tracking``).
Only clicks need a lookup first (the delivery time tells a scanner's early click from a
person's).

Unsubscribes are the exception: they change state (a suppression), so the POST waits
until both the suppression and the event are stored before it says "done".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from mtaserver.clock import Clock
from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv
from mtaserver.model import FINAL_STATES, Event, HitRow, Key, TrackedRecipient
from mtaserver.tracking.bots import BotDetector, Hit
from mtaserver.tracking.privacy import IpPrivacy

log = get_logger("tracking")

_MAX_UA = 300
_INFO_CACHE = 100_000
_MAX_FAILURES = 3
_SETTLED_TTL = 600.0
_UNSETTLED_TTL = 5.0


def _text(user_agent: str) -> str:
    """A user agent fit to store: bounded, and valid UTF-8 (headers may carry anything)."""
    ua = user_agent[:_MAX_UA]
    return ua if ua.isascii() else ua.encode("utf-8", "replace").decode("utf-8")


class TrackingStore(Protocol):
    """Looks up tracked recipients and writes hit events (``storage.sqlite.tracking``)."""

    async def lookup(self, keys: Sequence[Key]) -> dict[Key, TrackedRecipient]: ...

    async def write_rows(self, rows: Sequence[HitRow]) -> None: ...

    async def emit(self, *events: Event) -> None: ...


class UnsubscribeSink(Protocol):
    """Suppresses ``address`` for mail from ``sender_domain`` (app wires the SuppressionStore)."""

    async def unsubscribe(
        self, sender_domain: str | None, address: str, queue_id: str, at: float
    ) -> None: ...


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
        self._infos: dict[Key, tuple[float, TrackedRecipient | None]] = {}
        self._failures = 0
        self.dropped = 0
        self.recorded = 0

    def reconfigure(self, detector: BotDetector, privacy: IpPrivacy) -> None:
        """New bot rules, windows and IP treatment (SIGHUP); hits still held are judged by
        the new ones."""
        self.detector = detector
        self.privacy = privacy
        self.hold = detector.burst_window

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
        clicks = [(h.queue_id, h.idx) for h in batch if h.type == "click"]
        try:
            infos = await self._lookup(clicks, now) if clicks else {}
        except StorageError as exc:
            self._pending.extendleft(reversed(batch))
            log.error(kv(event="tracking_lookup_failed", error=str(exc)))
            return 0
        by_key: dict[Key, list[Hit]] = {}
        if any(h.type == "click" and h.links > 1 for h in batch):
            for o in (*self._recent, *batch, *self._pending):
                if o.type == "click" and o.links > 1:  # one link cannot make a burst
                    by_key.setdefault((o.queue_id, o.idx), []).append(o)
        by_agent = self.detector.by_agent
        classify = self.detector.classify
        ip_form = self.privacy.apply
        rows: list[HitRow] = []
        for h in batch:
            if h.type != "click":  # opens are judged by who fetched them, nothing else
                verdict = by_agent(h.type, h.user_agent, h.ip)
            else:
                key = (h.queue_id, h.idx)
                info = infos.get(key)
                near = by_key.get(key)
                heads = self._heads.get(key)
                verdict = classify(
                    h,
                    known=info is not None,
                    delivered_at=info.delivered_at if info else None,
                    nearby=[o for o in near if o is not h] if near else (),
                    heads=tuple(heads) if heads else (),
                )
            ua = h.user_agent
            rows.append((h.at, h.type, h.queue_id, h.idx,
                         ua if len(ua) <= _MAX_UA and ua.isascii() else _text(ua),
                         ip_form(h.ip), verdict.machine, verdict.reason, verdict.proxy,
                         h.url))  # fmt: skip
        try:
            await self.store.write_rows(rows)
        except StorageError as exc:
            self._failures += 1
            if self._failures < _MAX_FAILURES:
                self._pending.extendleft(reversed(batch))  # try again next flush
            else:  # a batch the database keeps refusing must not block every later hit
                self._failures = 0
                self.dropped += len(batch)
            log.error(kv(event="tracking_write_failed", count=len(rows), error=str(exc)))
            return 0
        self._failures = 0
        self.recorded += len(rows)
        self._recent.extend(h for h in batch if h.type == "click" and h.links > 1)
        horizon = now - 2 * self.detector.burst_window - self.hold
        while self._recent and (self._recent[0].at < horizon or len(self._recent) > 10_000):
            self._recent.popleft()
        self._expire_heads(now)
        return len(rows)

    async def _lookup(self, keys: Sequence[Key], now: float) -> dict[Key, TrackedRecipient]:
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
                    info.delivered_at is not None or info.state in FINAL_STATES
                )
                cache[k] = (now + (_SETTLED_TTL if settled else _UNSETTLED_TTL), info)
        out: dict[Key, TrackedRecipient] = {}
        for k in keys:
            info = cache[k][1]
            if info is not None:
                out[k] = info
        return out

    async def run(self) -> None:
        """Flush periodically until cancelled; on the way out write everything left."""
        try:
            while True:
                await self.clock.sleep(self.flush_every)
                try:
                    await self.flush()
                except Exception as exc:  # a bug here must not take the daemon down
                    log.error(kv(event="tracking_flush_failed", error=type(exc).__name__),
                              exc_info=True)  # fmt: skip
        finally:
            with contextlib.suppress(StorageError):
                await asyncio.shield(self.flush(everything=True))

    # -- unsubscribe ------------------------------------------------------------------------
    async def unsubscribe(
        self,
        queue_id: str,
        idx: int,
        user_agent: str,
        ip: str,
        *,
        via: str | None = None,
        address: str | None = None,
        sender_domain: str | None = None,
    ) -> bool:
        """Suppress the recipient for the sender's domain and record the event.

        The queue tables name the recipient and sender; when retention has removed them,
        ``address`` and ``sender_domain`` (from the token) do. Returns False when neither
        does. Raises StorageError when storing failed. ``via="mail"`` marks an unsubscribe
        that came to the mailto: address.
        """
        at = self.clock.now()
        infos = await self.store.lookup([(queue_id, idx)])
        info = infos.get((queue_id, idx))
        if info is not None:
            address = info.address
            sender_domain = info.sender.rpartition("@")[2].lower() or None
        elif address is None:
            return False
        if self.unsubscribes is not None:
            await self.unsubscribes.unsubscribe(sender_domain or None, address, queue_id, at)
        data = {
            "idx": idx,
            "campaign": info.campaign if info else None,
            "user": info.user if info else None,
            "user_agent": _text(user_agent),
            "client_ip": self.privacy.apply(ip),
            "machine": False,
            "via": via,
        }
        await self.store.emit(
            Event("unsubscribe", at, queue_id, address,
                  tuple((k, v) for k, v in data.items() if v is not None))
        )  # fmt: skip
        log.info(kv(event="unsubscribed", queue_id=queue_id, idx=idx, via=via or "https"))
        return True
