"""Prometheus metrics: one :class:`Metrics` per process, with its own registry.

Three sources, so no stage has to know about Prometheus:

* **The event log.** Every stage already writes its state changes to ``events``
  (accepted, delivered, deferred, bounced, complaint, open, click, …). :meth:`Metrics.refresh`
  tails that table from the id it reached last and turns new rows into counters, so the
  numbers are the ones ``mtaserver stats`` reads, counted once, whichever stage wrote them.
  Counters start at zero with the process, as Prometheus expects.
* **Scrape-time reads.** Queue depth by state and by destination (top N), the age of the
  oldest queued message, the webhook outbox backlog (``WebhookOutbox.backlog``) and the
  shaper's per-destination state are read when ``/metrics`` is scraped: a gauge that is
  computed cannot drift.
* **Hooks** for what leaves no event: SMTP sessions and AUTH failures per listener,
  suppressed recipients refused at RCPT, delivery attempt durations, database commit
  latency (``Database.on_commit``). They are plain methods (:class:`SmtpObserver`), wired
  in ``app``.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mtaserver import __version__
from mtaserver.clock import SystemClock
from mtaserver.metrics.families import shaping_families
from mtaserver.metrics.ports import EventTail, QueueGaugeSource, ShapingView, WebhookBacklog

OTHER = "_other"  # the destination label for everything outside the top N
TAIL_BATCH = 5000
DELAY_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 5 * 86400)
ATTEMPT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_QUEUE_STATES = ("queued", "leased", "held")
_TRACKING = ("open", "click", "unsubscribe")


@dataclass
class _Snapshot:
    """Values read at scrape time."""

    by_state: dict[str, int] = field(default_factory=dict)
    by_destination: list[tuple[str, int]] = field(default_factory=list)
    oldest_age: float = 0.0
    webhooks: list[tuple[str, int, int]] | None = None  # (webhook, to send, given up)


class Metrics:
    """The process's metrics; ``registry`` is private to this object (no global state)."""

    def __init__(
        self,
        queue: QueueGaugeSource,
        events: EventTail,
        *,
        top_destinations: int = 20,
        clock: Callable[[], float] | None = None,
        shaper: ShapingView | None = None,
        webhooks: WebhookBacklog | None = None,
        tracking_dropped: Callable[[], int] | None = None,
    ) -> None:
        self.queue = queue
        self.event_log = events
        self.top = top_destinations
        self._now = clock or SystemClock().now
        self.shaper = shaper  # per-destination connections, rates, suspensions
        self.webhooks = webhooks  # the outbox backlog (admin scrape)
        self.tracking_dropped = tracking_dropped  # the tracking recorder's drop count
        self.registry = CollectorRegistry()
        r = self.registry
        info = Gauge("mtaserver_build_info", "Version of the running daemon", ["version"],
                     registry=r)  # fmt: skip
        info.labels(__version__).set(1)
        # from the event log
        self.events = Counter(
            "mtaserver_events", "Events written to the event log, by type", ["type"], registry=r
        )
        self.messages_accepted = Counter(
            "mtaserver_messages_accepted", "Messages accepted into the queue", registry=r
        )
        self.recipients_accepted = Counter(
            "mtaserver_recipients_accepted", "Recipients of accepted messages", registry=r
        )
        self.deliveries = Counter(
            "mtaserver_deliveries",
            "Per-recipient delivery attempt outcomes (disposition: delivered, deferred, "
            "bounced; category from the reply classifier)",
            ["disposition", "category"],
            registry=r,
        )
        self.delivery_delay = Histogram(
            "mtaserver_delivery_delay_seconds",
            "Time from acceptance to successful delivery, per recipient",
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.bounces = Counter(
            "mtaserver_bounces",
            "Recipients bounced (source: sync, async, expired; kind: hard, soft)",
            ["source", "kind", "category"],
            registry=r,
        )
        self.complaints = Counter(
            "mtaserver_complaints", "Spam complaints (feedback reports) received", registry=r
        )
        self.tracking = Counter(
            "mtaserver_tracking_events",
            "Opens, clicks and unsubscribes (machine: image proxies and link scanners)",
            ["type", "machine"],
            registry=r,
        )
        self.suppressed = Counter(
            "mtaserver_suppressed_recipients",
            "Suppressed recipients (action: rejected at RCPT, or dropped after an accepting "
            "RCPT under accept-and-drop), by suppression reason",
            ["action", "reason"],
            registry=r,
        )
        # hooks
        self.smtp_sessions = Counter(
            "mtaserver_smtp_sessions", "SMTP sessions opened, by listener", ["listener"],
            registry=r,
        )  # fmt: skip
        self.smtp_auth_failures = Counter(
            "mtaserver_smtp_auth_failures", "Failed SMTP AUTH attempts, by listener",
            ["listener"], registry=r,
        )  # fmt: skip
        self.delivery_attempt = Histogram(
            "mtaserver_delivery_attempt_seconds",
            "Duration of one delivery attempt (one job: a message to one destination)",
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.db_commit = Histogram(
            "mtaserver_db_commit_seconds",
            "Database group-commit latency (BEGIN IMMEDIATE to fsynced COMMIT)",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.db_commit_ops = Histogram(
            "mtaserver_db_commit_batch_ops",
            "Write operations sharing one group commit",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.task_restarts = Counter(
            "mtaserver_task_restarts",
            "Service bodies restarted by the supervisor after a failure, by service",
            ["service"], registry=r,
        )  # fmt: skip
        r.register(_ScrapeCollector(self))
        self._cursor: int | None = None
        self._lock = asyncio.Lock()
        self._snapshot = _Snapshot()

    # -- hooks -----------------------------------------------------------------------------
    def session_started(self, listener: str) -> None:
        self.smtp_sessions.labels(listener).inc()

    def auth_failed(self, listener: str) -> None:
        self.smtp_auth_failures.labels(listener).inc()

    def recipient_refused(self, reason: str) -> None:
        """A suppressed recipient refused at RCPT (no queue id, so no event to count)."""
        self.suppressed.labels("rejected", reason or "unknown").inc()

    def task_restarted(self, service: str) -> None:
        """The supervisor's ``on_restart`` hook."""
        self.task_restarts.labels(service).inc()

    def attempt_finished(self, seconds: float) -> None:
        self.delivery_attempt.observe(max(0.0, seconds))

    def db_committed(self, seconds: float, ops: int) -> None:
        """A ``Database.on_commit`` observer."""
        self.db_commit.observe(seconds)
        self.db_commit_ops.observe(ops)

    # -- the event tail --------------------------------------------------------------------
    async def start(self) -> None:
        """Start counting from the current end of the event log."""

        if self._cursor is None:
            self._cursor = await self.event_log.last_id()

    async def refresh(self) -> None:
        """Count events written since the last call, and re-read the scrape-time gauges."""
        async with self._lock:
            await self._tail()
            now = self._now()
            g = await self.queue.gauges(_QUEUE_STATES, self.top, now)
            snap = _Snapshot(dict(g.by_state), list(g.by_destination), g.oldest_age)
            if g.other:
                snap.by_destination.append((OTHER, g.other))
            if self.webhooks is not None:
                snap.webhooks = [
                    (b.webhook, b.pending + b.waiting, b.failed)
                    for b in await self.webhooks.backlog()
                ]
            self._snapshot = snap

    async def tail(self) -> None:
        """Count events written since the last call (cheap; run periodically between scrapes)."""
        async with self._lock:
            await self._tail()

    async def _tail(self) -> None:
        await self.start()
        while True:
            cursor = self._cursor or 0

            rows = await self.event_log.after(cursor, TAIL_BATCH)
            for _id, etype, data in rows:
                self.observe_event(etype, data)
            if rows:
                self._cursor = int(rows[-1][0])
            if len(rows) < TAIL_BATCH:
                return

    def observe_event(self, etype: str, raw: str | None) -> None:
        """Count one event-log row."""
        self.events.labels(etype).inc()
        if etype not in ("accepted", "delivered", "deferred", "bounced", "complaint",
                         "suppressed", *_TRACKING):  # fmt: skip
            return
        try:
            data = json.loads(raw or "{}")
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if etype == "accepted":
            self.messages_accepted.inc()
            self.recipients_accepted.inc(_number(data.get("recipients"), 0.0))
        elif etype == "delivered":
            self.deliveries.labels("delivered", "ok").inc()
            delay = _number(data.get("delay"), math.nan)
            if not math.isnan(delay):
                self.delivery_delay.observe(max(0.0, delay))
        elif etype == "deferred":
            self.deliveries.labels("deferred", _label(data.get("category"))).inc()
        elif etype == "bounced":
            source = _label(data.get("source"))
            category = _label(data.get("category"))
            if source == "sync":
                self.deliveries.labels("bounced", category).inc()
            self.bounces.labels(source, _label(data.get("kind")), category).inc()
        elif etype == "complaint":
            self.complaints.inc()
        elif etype == "suppressed":
            self.suppressed.labels("dropped", _label(data.get("reason"))).inc()
        else:
            machine = "true" if data.get("machine") else "false"
            self.tracking.labels(etype, machine).inc()

    # -- exposition ------------------------------------------------------------------------
    async def render(self) -> bytes:
        """The Prometheus text exposition, fresh."""
        await self.refresh()
        return generate_latest(self.registry)

    def _scrape_families(self) -> Iterator[Metric]:
        snap = self._snapshot
        g = GaugeMetricFamily(
            "mtaserver_queue_recipients",
            "Recipients waiting in the queue, by state (queued, leased, held)",
            labels=["state"],
        )
        for state, n in snap.by_state.items():
            g.add_metric([state], n)
        yield g
        g = GaugeMetricFamily(
            "mtaserver_queue_destination_recipients",
            f"Recipients waiting, by destination domain (top N; the rest as {OTHER!r})",
            labels=["domain"],
        )
        for domain, n in snap.by_destination:
            g.add_metric([domain], n)
        yield g
        yield GaugeMetricFamily(
            "mtaserver_queue_oldest_age_seconds",
            "Age of the oldest message with recipients still waiting",
            value=snap.oldest_age,
        )
        if snap.webhooks is not None:
            backlog = GaugeMetricFamily(
                "mtaserver_webhook_backlog",
                "Events waiting in the webhook outbox to be POSTed, by webhook",
                labels=["webhook"],
            )
            failed = GaugeMetricFamily(
                "mtaserver_webhook_failed",
                "Webhook deliveries given up (kept until retention removes them), by webhook",
                labels=["webhook"],
            )
            for name, waiting, given_up in snap.webhooks:
                backlog.add_metric([name], waiting)
                failed.add_metric([name], given_up)
            yield backlog
            yield failed
        if self.tracking_dropped is not None:
            yield CounterMetricFamily(
                "mtaserver_tracking_hits_dropped",
                "Open and click hits answered but not stored (buffer full, or the database "
                "refused the batch, e.g. a full disk)",
                value=self.tracking_dropped(),
            )
        if self.shaper is not None:
            yield from shaping_families(self.shaper, self.top, self._now())


class _ScrapeCollector:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics._scrape_families())


def _label(value: object) -> str:
    return str(value) if isinstance(value, str) and value else "unknown"


def _number(value: object, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)
