"""The webhook dispatcher: every event a webhook wants, POSTed signed, at least once, in order.

Durability: a trigger on ``events`` (created by :meth:`WebhookOutbox.sync` while a webhook is
configured) adds one ``webhook_outbox`` row per interested webhook in the same transaction as
the event, so whatever writes an event — the
spool, the scheduler, the CLI, another process — the outbox has it once it is committed.
A row is deleted only after the receiver answered 2xx; a crash or stop in between means it
is sent again (receivers dedupe on ``X-Mtaserver-Event-Id``).

Order: only the oldest unsettled row of a message is ``pending`` (sendable); later rows of
the same message ``wait`` behind it and are promoted when it is settled (delivered, or given
up after ``max_retry_time``). A failing message holds back only itself.

Isolation from mail: the dispatcher runs as its own service with at most ``concurrency``
POSTs per webhook, each bounded by ``timeout``; mail delivery never waits on it. Its
database writes are small and ride the shared group commit.

Wire format (see README): ``POST url`` with ``Content-Type: application/json``,
``X-Mtaserver-Event-Id``, ``X-Mtaserver-Timestamp`` (unix seconds) and
``X-Mtaserver-Signature: sha256=HEX`` where HEX = HMAC-SHA256(secret, f"{timestamp}.{body}").
A webhook with ``format = "sendgrid"`` gets SendGrid's Event Webhook instead
(:mod:`mtaserver.webhooks.sendgrid`): up to ``batch_size`` due rows in one JSON array, the
whole POST settling each of them; rows with no SendGrid equivalent are settled unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mtaserver import __version__
from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.config.webhooks import WebhookConfig
from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.outbox import OutboxItem, Settlement, WebhookOutbox
from mtaserver.webhooks import sendgrid

if TYPE_CHECKING:
    import aiohttp

log = get_logger("webhooks")

SIGNATURE_HEADER = "X-Mtaserver-Signature"
TIMESTAMP_HEADER = "X-Mtaserver-Timestamp"
EVENT_ID_HEADER = "X-Mtaserver-Event-Id"
_POLL = 1.0  # seconds: picks up events written by other processes and back-off expiries
_MIN_POLL_GAP = 0.005


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header value for one POST."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (constant-time compare); also used by the tests."""
    if not timestamp.isdigit():
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def backoff(hook: WebhookConfig, attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failures (doubling, ±10% jitter)."""
    base: float = min(hook.retry_interval * 2.0 ** min(attempts - 1, 30), hook.max_retry_interval)
    return base * random.uniform(0.9, 1.1)


class WebhookDispatcher:
    """The ``webhooks`` service: sends due outbox rows, bounded per webhook."""

    name = "webhooks"

    def __init__(self, db: Database, hooks: Sequence[WebhookConfig], clock: Clock) -> None:
        self.outbox = WebhookOutbox(db)
        self.db = db
        self.clock = clock
        self._keys = sendgrid.load_keys(hooks)  # a bad key stops the start, naming the entry
        self.hooks: dict[str, WebhookConfig] = {h.name: h for h in hooks}
        self._inflight: dict[str, set[int]] = {}  # row ids being sent or settled, per webhook
        self._posts: dict[str, int] = {}  # POSTs in flight, per webhook
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._session: aiohttp.ClientSession | None = None
        self._settled: list[tuple[str, Settlement]] = []  # (webhook, outcome) to record
        self._settle_wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._running = False
        self._finished = asyncio.Event()  # run() has settled everything in flight
        self.sent = 0  # counters for metrics
        self.failures = 0

    async def start(self) -> None:
        dropped = await self.outbox.sync(list(self.hooks.values()))
        if dropped:
            log.warning(kv(event="webhook_outbox_dropped", rows=dropped, reason="unconfigured"))
        self.db.on_commit.append(self._on_commit)

    def _on_commit(self, seconds: float, ops: int) -> None:
        self._wake.set()

    async def reload(self, config: Config) -> None:
        keys = sendgrid.load_keys(config.webhooks)  # a bad key keeps the old config whole
        dropped = await self.outbox.sync(config.webhooks)
        if dropped:
            log.warning(kv(event="webhook_outbox_dropped", rows=dropped, reason="unconfigured"))
        self.hooks = {h.name: h for h in config.webhooks}
        self._keys = keys

    async def drain(self, timeout: float) -> None:
        """Stop sending new rows; let POSTs in flight finish (unsent rows stay durable)."""
        self._stopping = True
        self._wake.set()
        if self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), timeout)

    def _client(self) -> aiohttp.ClientSession:
        """The HTTP client, made at the first POST: a daemon without webhooks (most test
        and many real ones) never loads aiohttp's client (~0.1 s of CPU at every start)."""
        if self._session is None:
            import aiohttp  # the client library, at the first POST

            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": f"mtaserver/{__version__}"}
            )
        return self._session

    async def run(self) -> None:
        self._running = True
        if self._on_commit not in self.db.on_commit:  # a restarted run (see supervisor)
            self.db.on_commit.append(self._on_commit)
        settler = asyncio.create_task(self._settler(), name="webhook-settler")
        try:
            while not self._stopping:
                self._wake.clear()
                wait = _POLL
                try:
                    wait = await self._dispatch_due()
                except StorageError as exc:
                    log.error(kv(event="webhook_poll_failed", error=str(exc)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                await self.clock.sleep(_MIN_POLL_GAP)  # coalesce bursts of commits into one poll
            while self._tasks:  # draining: POSTs in flight finish (the app bounds the wait)
                await asyncio.wait(set(self._tasks))
            settler.cancel()
            await asyncio.gather(settler, return_exceptions=True)
            await self._flush_settled()
            self._finished.set()
        finally:
            settler.cancel()
            with contextlib.suppress(ValueError):
                self.db.on_commit.remove(self._on_commit)
            for task in list(self._tasks):
                task.cancel()
            try:
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
            finally:
                if self._session is not None:
                    await self._session.close()
                    self._session = None

    async def _dispatch_due(self) -> float:
        """Start what is due; returns how long to sleep at most before looking again."""
        now = self.clock.now()
        for hook in list(self.hooks.values()):
            inflight = self._inflight.setdefault(hook.name, set())
            if hook.batch_size == 1:
                free = hook.concurrency - len(inflight)
            else:
                free = hook.concurrency - self._posts.get(hook.name, 0)
            if free <= 0:
                continue
            items = await self.outbox.due(
                hook.name, now, free * hook.batch_size + len(inflight),
                context=hook.format == "sendgrid",
            )  # fmt: skip
            fresh = [i for i in items if i.id not in inflight]
            size = hook.batch_size
            for batch in [fresh[k : k + size] for k in range(0, len(fresh), size)][:free]:
                inflight.update(i.id for i in batch)
                self._posts[hook.name] = self._posts.get(hook.name, 0) + 1
                task = asyncio.create_task(self._deliver(hook, batch), name="webhook-post")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        nxt = await self.outbox.next_due([i for ids in self._inflight.values() for i in ids])
        if nxt is None:
            return _POLL
        return max(0.0, min(_POLL, nxt - float(self.clock.now())))

    async def _settler(self) -> None:
        while True:
            await self._settle_wake.wait()
            self._settle_wake.clear()
            # Shielded: a stop must not cut a write in half; the final flush waits for it.
            await asyncio.shield(self._flush_settled())

    async def _flush_settled(self) -> None:
        """Write every outcome waiting, in one op; then those rows may be picked again."""
        async with self._flush_lock:
            batch, self._settled = self._settled, []
            if not batch:
                return
            try:
                await self.outbox.settle([s for _, s in batch])
            except StorageError as exc:  # the rows stay as they were: sent again later
                log.error(kv(event="webhook_settle_failed", rows=len(batch), error=str(exc)))
            finally:
                for name, s in batch:
                    self._inflight.get(name, set()).discard(s.item.id)
                self._wake.set()

    def _settle(self, hook: WebhookConfig, s: Settlement) -> None:
        self._settled.append((hook.name, s))
        self._settle_wake.set()

    async def _deliver(self, hook: WebhookConfig, batch: list[OutboxItem]) -> None:
        try:
            if hook.format == "sendgrid":
                await self._deliver_sendgrid(hook, batch)
            else:
                await self._deliver_native(hook, batch[0])
        except BaseException:
            for item in batch:
                self._inflight.get(hook.name, set()).discard(item.id)
            raise
        finally:
            self._posts[hook.name] = self._posts.get(hook.name, 1) - 1

    async def _deliver_native(self, hook: WebhookConfig, item: OutboxItem) -> None:
        if item.body is None:  # the event is gone (erased): nothing to send
            self._settle(hook, Settlement(item, "delivered", self.clock.now()))
            return
        ts = int(self.clock.now())
        headers = {
            EVENT_ID_HEADER: str(item.event_id),
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(hook.secret, ts, item.body),
        }
        error = await self._post(hook, item.body, headers)
        self._record(hook, item, error, self.clock.now())

    async def _deliver_sendgrid(self, hook: WebhookConfig, batch: list[OutboxItem]) -> None:
        """One POST of SendGrid's event array for every row of ``batch`` that has events."""
        now = self.clock.now()
        events: list[dict[str, object]] = []
        sending: list[OutboxItem] = []
        for item in batch:
            found = (
                []
                if item.event is None
                else sendgrid.to_sendgrid(item.event, item.context, hook.sendgrid_events)
            )
            if not found:  # erased, or no SendGrid equivalent: settled, nothing to send
                self._settle(hook, Settlement(item, "delivered", now))
                continue
            events.extend(found)
            sending.append(item)
        if not sending:
            return
        key = self._keys.get(hook.name)
        if key is None:  # cannot happen: load_keys covers every sendgrid hook
            error: str | None = "no signing key loaded"
        else:
            body = json.dumps(events, separators=(",", ":")).encode()
            ts = int(now)
            headers = {
                sendgrid.TIMESTAMP_HEADER: str(ts),
                sendgrid.SIGNATURE_HEADER: sendgrid.sign(key, ts, body),
            }
            error = await self._post(hook, body, headers)
        done = self.clock.now()
        for item in sending:
            self._record(hook, item, error, done, events=len(events))

    def _record(
        self, hook: WebhookConfig, item: OutboxItem, error: str | None, now: float,
        events: int = 1,
    ) -> None:  # fmt: skip
        """Settle one row after its POST: delivered, retried after a back-off, or given up."""
        attempts = item.attempts + 1
        if error is None:
            self.sent += 1
            self._settle(hook, Settlement(item, "delivered", now))
            log.debug(kv(event="webhook_sent", webhook=hook.name, event_id=item.event_id,
                         queue_id=item.queue_id, attempts=attempts, batch=events))  # fmt: skip
            return
        self.failures += 1
        deadline = item.created_at + hook.max_retry_time
        if now >= deadline:
            self._settle(hook, Settlement(item, "failed", now, error))
            log.warning(kv(event="webhook_failed", webhook=hook.name, event_id=item.event_id,
                           queue_id=item.queue_id, attempts=attempts, error=error))  # fmt: skip
            return
        nxt = min(now + backoff(hook, attempts), deadline)
        self._settle(hook, Settlement(item, "retry", nxt, error))
        log.info(kv(event="webhook_deferred", webhook=hook.name, event_id=item.event_id,
                    queue_id=item.queue_id, attempts=attempts, retry_in=f"{nxt - now:.1f}s",
                    error=error))  # fmt: skip

    async def _post(self, hook: WebhookConfig, body: bytes, signed: dict[str, str]) -> str | None:
        """POST once; None on 2xx, else a short reason."""
        import aiohttp  # for its timeout and errors (loaded by _client already)

        headers = {"Content-Type": "application/json", **signed}
        try:
            async with self._client().post(
                hook.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=hook.timeout),
                allow_redirects=False,
            ) as resp:
                await resp.content.read(4096)
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except TimeoutError:
            return "timeout"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
