"""Webhooks: every event a webhook wants, POSTed as signed JSON, at least once, in order.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from mtaserver import __version__
from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.config.webhooks import WebhookConfig
from mtaserver.db import Database
from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv

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


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One pending row with its event (``event`` None when the event was erased meanwhile)."""

    id: int
    webhook: str
    event_id: int
    queue_id: str | None
    attempts: int
    created_at: float
    body: bytes | None


@dataclass(frozen=True, slots=True)
class Settlement:
    """What became of one POST: ``delivered``, ``retry`` (at ``at``) or ``failed``."""

    item: OutboxItem
    outcome: str
    at: float
    error: str = ""


@dataclass(frozen=True, slots=True)
class Backlog:
    webhook: str
    pending: int
    waiting: int
    failed: int


def event_body(row: Sequence[Any], webhook: str) -> bytes:
    """The JSON POSTed for one events row (id, at, type, queue_id, recipient, data)."""
    event_id, at, type_, queue_id, recipient, data = row
    try:
        payload = json.loads(data) if data else {}
    except ValueError:
        payload = {}
    return json.dumps(
        {
            "id": event_id,
            "type": type_,
            "at": at,
            "queue_id": queue_id,
            "recipient": recipient,
            "data": payload,
            "webhook": webhook,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


# Fills the outbox in the same transaction as each event (see the module docstring and
# migration 0055). Exists only while at least one webhook is configured: an MTA without
# webhooks pays nothing per event.
OUTBOX_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS events_webhook_outbox AFTER INSERT ON events
BEGIN
    INSERT INTO webhook_outbox(webhook, event_id, queue_id, state, created_at, next_attempt)
    SELECT w.name, NEW.id, NEW.queue_id,
           CASE WHEN NEW.queue_id IS NOT NULL AND EXISTS (
                    SELECT 1 FROM webhook_outbox o
                    WHERE o.webhook = w.name AND o.queue_id = NEW.queue_id
                      AND o.state IN ('pending', 'waiting'))
                THEN 'waiting' ELSE 'pending' END,
           (julianday('now') - 2440587.5) * 86400.0,
           0
    FROM webhook_endpoints w
    WHERE w.types = '*' OR instr(w.types, ',' || NEW.type || ',') > 0;
END
"""


class WebhookOutbox:
    """The ``webhook_outbox`` table: what is due, and settling rows."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def sync(self, hooks: Sequence[WebhookConfig]) -> int:
        """Make ``webhook_endpoints`` match the config; returns outbox rows dropped."""

        def op(conn: sqlite3.Connection) -> int:
            names = [h.name for h in hooks]
            marks = ",".join("?" * len(names))
            dropped = conn.execute(
                f"DELETE FROM webhook_outbox WHERE webhook NOT IN ({marks})", names
            ).rowcount
            conn.execute(f"DELETE FROM webhook_endpoints WHERE name NOT IN ({marks})", names)
            conn.executemany(
                "INSERT INTO webhook_endpoints(name, types) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET types=excluded.types",
                [(h.name, "," + ",".join(h.events) + "," if h.events else "*") for h in hooks],
            )
            if hooks:
                conn.execute(OUTBOX_TRIGGER)
            else:
                conn.execute("DROP TRIGGER IF EXISTS events_webhook_outbox")
            return int(dropped)

        return await self.db.write(op)

    async def due(self, webhook: str, now: float, limit: int) -> list[OutboxItem]:
        def fn(conn: sqlite3.Connection) -> list[OutboxItem]:
            rows = conn.execute(
                "SELECT o.id, o.event_id, o.queue_id, o.attempts, o.created_at, "
                "e.id, e.at, e.type, e.queue_id, e.recipient, e.data "
                "FROM webhook_outbox o LEFT JOIN events e ON e.id = o.event_id "
                "WHERE o.webhook=? AND o.state='pending' AND o.next_attempt <= ? "
                "ORDER BY o.next_attempt, o.id LIMIT ?",
                (webhook, now, limit),
            ).fetchall()
            return [
                OutboxItem(
                    id=r[0],
                    webhook=webhook,
                    event_id=r[1],
                    queue_id=r[2],
                    attempts=r[3],
                    created_at=r[4],
                    body=None if r[5] is None else event_body(r[5:], webhook),
                )
                for r in rows
            ]

        return await self.db.read(fn)

    async def next_due(self, busy: Sequence[int] = ()) -> float | None:
        """When the next pending row not in ``busy`` (being sent) is due."""
        ids = list(busy)

        def fn(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT min(next_attempt) FROM webhook_outbox WHERE state='pending' "
                f"AND id NOT IN ({','.join('?' * len(ids))})",
                ids,
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self.db.read(fn)

    async def settle(self, done: Sequence[Settlement]) -> None:
        """Record many POST outcomes in one write (one commit for a burst of replies)."""

        def op(conn: sqlite3.Connection) -> None:
            for s in done:
                if s.outcome == "delivered":
                    conn.execute("DELETE FROM webhook_outbox WHERE id=?", (s.item.id,))
                    _promote(conn, s.item, s.at)
                elif s.outcome == "failed":
                    conn.execute(
                        "UPDATE webhook_outbox SET state='failed', attempts=attempts+1, "
                        "next_attempt=?, last_error=? WHERE id=?",
                        (s.at, s.error[:500], s.item.id),
                    )
                    _promote(conn, s.item, s.at)
                else:
                    conn.execute(
                        "UPDATE webhook_outbox SET attempts=attempts+1, next_attempt=?, "
                        "last_error=? WHERE id=?",
                        (s.at, s.error[:500], s.item.id),
                    )

        await self.db.write(op)

    async def backlog(self) -> list[Backlog]:
        """Rows per webhook and state (metrics, CLI)."""

        def fn(conn: sqlite3.Connection) -> list[Backlog]:
            counts: dict[str, dict[str, int]] = {}
            for (name,) in conn.execute("SELECT name FROM webhook_endpoints ORDER BY name"):
                counts[name] = {}
            for name, state, n in conn.execute(
                "SELECT webhook, state, count(*) FROM webhook_outbox GROUP BY webhook, state"
            ):
                counts.setdefault(name, {})[state] = n
            return [
                Backlog(name, c.get("pending", 0), c.get("waiting", 0), c.get("failed", 0))
                for name, c in sorted(counts.items())
            ]

        return await self.db.read(fn)

    async def retry_failed(self, webhook: str | None = None, now: float = 0.0) -> int:
        """Put given-up rows back (operator, after fixing the receiver); order is kept."""

        def op(conn: sqlite3.Connection) -> int:
            where = "state='failed'" + (" AND webhook=?" if webhook else "")
            args: tuple[Any, ...] = (webhook,) if webhook else ()
            rows = conn.execute(
                f"SELECT id, webhook, queue_id FROM webhook_outbox WHERE {where} ORDER BY id",
                args,
            ).fetchall()
            for row_id, hook, qid in rows:
                blocked = (
                    qid is not None
                    and conn.execute(
                        "SELECT 1 FROM webhook_outbox WHERE webhook=? AND queue_id=? AND id<? "
                        "AND state IN ('pending','waiting') LIMIT 1",
                        (hook, qid, row_id),
                    ).fetchone()
                )
                if not blocked and qid is not None:
                    # Earlier-sent later rows of the message must wait behind this one again.
                    conn.execute(
                        "UPDATE webhook_outbox SET state='waiting' WHERE webhook=? "
                        "AND queue_id=? AND id>? AND state='pending'",
                        (hook, qid, row_id),
                    )
                conn.execute(
                    "UPDATE webhook_outbox SET state=?, attempts=0, next_attempt=?, "
                    "created_at=? WHERE id=?",
                    ("waiting" if blocked else "pending", now, now, row_id),
                )
            return len(rows)

        return await self.db.write(op)


def _promote(conn: sqlite3.Connection, item: OutboxItem, now: float) -> None:
    """Make the next waiting row of the same message sendable."""
    if item.queue_id is None:
        return
    conn.execute(
        "UPDATE webhook_outbox SET state='pending', next_attempt=? WHERE id = ("
        "SELECT min(id) FROM webhook_outbox WHERE webhook=? AND queue_id=? AND state='waiting')"
        " AND NOT EXISTS (SELECT 1 FROM webhook_outbox WHERE webhook=? AND queue_id=? "
        "AND state='pending')",
        (now, item.webhook, item.queue_id, item.webhook, item.queue_id),
    )


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
        self.hooks: dict[str, WebhookConfig] = {h.name: h for h in hooks}
        self._inflight: dict[str, set[int]] = {}
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
        dropped = await self.outbox.sync(config.webhooks)
        if dropped:
            log.warning(kv(event="webhook_outbox_dropped", rows=dropped, reason="unconfigured"))
        self.hooks = {h.name: h for h in config.webhooks}

    async def drain(self, timeout: float) -> None:
        """Stop sending new rows; let POSTs in flight finish (unsent rows stay durable)."""
        self._stopping = True
        self._wake.set()
        if self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), timeout)

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": f"mtaserver/{__version__}"}
        )
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
                await self._session.close()

    async def _dispatch_due(self) -> float:
        """Start what is due; returns how long to sleep at most before looking again."""
        now = self.clock.now()
        for hook in list(self.hooks.values()):
            inflight = self._inflight.setdefault(hook.name, set())
            free = hook.concurrency - len(inflight)
            if free <= 0:
                continue
            items = await self.outbox.due(hook.name, now, free + len(inflight))
            for item in items:
                if item.id in inflight or free <= 0:
                    continue
                free -= 1
                inflight.add(item.id)
                task = asyncio.create_task(self._deliver(hook, item), name="webhook-post")
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

    async def _deliver(self, hook: WebhookConfig, item: OutboxItem) -> None:
        if item.body is None:  # the event is gone (erased): nothing to send
            self._settle(hook, Settlement(item, "delivered", self.clock.now()))
            return
        try:
            error = await self._post(hook, item)
        except BaseException:
            self._inflight.get(hook.name, set()).discard(item.id)
            raise
        now = self.clock.now()
        attempts = item.attempts + 1
        if error is None:
            self.sent += 1
            self._settle(hook, Settlement(item, "delivered", now))
            log.debug(kv(event="webhook_sent", webhook=hook.name, event_id=item.event_id,
                         queue_id=item.queue_id, attempts=attempts))  # fmt: skip
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

    async def _post(self, hook: WebhookConfig, item: OutboxItem) -> str | None:
        """POST once; None on 2xx, else a short reason."""
        assert self._session is not None and item.body is not None
        ts = int(self.clock.now())
        headers = {
            "Content-Type": "application/json",
            EVENT_ID_HEADER: str(item.event_id),
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(hook.secret, ts, item.body),
        }
        try:
            async with self._session.post(
                hook.url,
                data=item.body,
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
