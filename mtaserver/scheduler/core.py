"""The queue manager: claim due work, shape it per destination, deliver, record (qmgr).

One dispatcher task and a fixed pool of worker tasks (the global connection cap):

* **intake** claims due recipients from the spool with a lease, a batch at a time and only
  while the in-memory backlog is below ``max_backlog`` — the queue itself stays on disk;
* each job is filed under its *destination* (the shaper maps domains to destinations);
* **dispatch** walks destinations round-robin and hands a job to the workers only when the
  shaper grants a permit (connection slot + rate token); a suspended destination's jobs are
  put back with ``defer_domain`` so they are not claimed again until it recovers;
* a **worker** calls the DeliveryAgent, and the outcome goes through the shaper's rules and
  the retry policy (:mod:`mtaserver.outcome`) into ``RecipientUpdate``s recorded with their
  events in one transaction.

Bounces to the sender are grouped per message (:mod:`mtaserver.notices`): the bounced
recipients of a message are held (still leased) until no job of that message remains in
this scheduler, then one DSN is enqueued and only then are the recipients recorded as
bounced — a crash in between means a second attempt and at worst a second DSN, never a
lost one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mtaserver.clock import Clock
from mtaserver.config.shaping import RetrySettings, SchedulerSettings
from mtaserver.errors import MtaError
from mtaserver.log import get_logger, kv
from mtaserver.model import (
    DeliveryJob,
    DeliveryReport,
    RecipientState,
    RecipientUpdate,
    RoutePolicy,
)
from mtaserver.notices import Notices
from mtaserver.outcome import Classify
from mtaserver.scheduler.attempt import attempt, connection_failed
from mtaserver.scheduler.destinations import Destinations
from mtaserver.scheduler.ports import Agent, MxLookup, OnBounce, QueueStore, SharedLimits
from mtaserver.scheduler.settle import settle
from mtaserver.shaper import Shaper

log = get_logger("scheduler")

LEASE_MARGIN = 0.25  # release a backlog job when less than this share of its lease is left


# -- internal bookkeeping -------------------------------------------------------------------
@dataclass(slots=True)
class _Item:
    job: DeliveryJob
    dest: str


@dataclass(slots=True)
class _Dest:
    name: str
    backlog: deque[_Item] = field(default_factory=deque)
    domains: OrderedDict[str, None] = field(default_factory=OrderedDict)
    not_before: float = 0.0  # loop time before which asking the shaper is pointless
    deferred_until: float = 0.0  # wall time its domains were last pushed back to


class Scheduler:
    def __init__(
        self,
        *,
        spool: QueueStore,
        agent: Agent,
        shaper: Shaper,
        clock: Clock,
        retry: RetrySettings,
        settings: SchedulerSettings,
        route: RoutePolicy,
        classify: Classify,
        workers: int,
        lease: float,
        hostname: str,
        new_queue_id: Callable[[float], str],
        send_dsn: bool = True,
        no_dsn_users: Sequence[str] = (),
        mx: MxLookup | None = None,
        on_bounce: OnBounce | None = None,
        shared: SharedLimits | None = None,
    ) -> None:
        self._on_bounce = on_bounce
        self._shared = shared  # [cluster]: limits shared with other nodes, asked first
        self._spool = spool
        self._agent = agent
        self._shaper = shaper
        self._clock = clock
        self._retry = retry
        self._settings = settings
        self._route = route
        self._classify = classify
        self._workers = max(1, workers)
        self._lease = lease
        self._notices = Notices(spool, hostname, new_queue_id)
        self._send_dsns = send_dsn
        self._no_dsn_users = frozenset(u.lower() for u in no_dsn_users)
        self._destinations = Destinations(shaper, clock, mx)
        self._dests: dict[str, _Dest] = {}
        self._ring: deque[str] = deque()  # destinations with backlog, round-robin order
        self._backlog = 0  # recipients claimed and not yet finished (backlog + in flight)
        self._open: dict[str, int] = {}  # queue_id → jobs of it still in this scheduler
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=self._workers)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._last_expiry_sweep = -math.inf
        self.attempts = 0  # counters for tests and metrics
        self.inflight = 0
        self.polls = 0
        self.runs = 0  # >1 once the supervisor restarted a failed run

    def reconfigure(
        self,
        *,
        retry: RetrySettings,
        settings: SchedulerSettings,
        route: RoutePolicy,
        send_dsn: bool,
        no_dsn_users: Sequence[str],
    ) -> None:
        """New policy from a reloaded config; applies to the next attempt."""
        self._retry = retry
        self._settings = settings
        self._route = route
        self._send_dsns = send_dsn
        self._no_dsn_users = frozenset(u.lower() for u in no_dsn_users)

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until `drain`; then finish in-flight deliveries and put the backlog back.

        A run that failed (a write refused on a full disk; the supervisor restarts it) left
        claimed recipients leased and jobs in memory: the next run forgets them and puts
        every lease back first, so it starts from the queue alone and delivers nothing twice.
        """
        self.runs += 1
        if self.runs > 1:
            self._dests.clear()
            self._ring.clear()
            self._open.clear()
            self._backlog = 0
            self.inflight = 0
            self._queue = asyncio.Queue(maxsize=self._workers)
            self._last_expiry_sweep = -math.inf
            self._done.clear()
            released = await self._spool.release_leases(self._clock.now())
            log.info(kv(event="scheduler_restarted", leases_released=released))
        try:
            async with asyncio.TaskGroup() as tg:
                for i in range(self._workers):
                    tg.create_task(self._worker(), name=f"delivery-worker-{i}")
                try:
                    await self._dispatch_loop()
                finally:
                    await self._release_all_backlog()
                    for _ in range(self._workers):
                        await self._queue.put(None)
            await self._flush_all_dsn()
        finally:
            self._done.set()

    async def drain(self, timeout: float) -> None:
        """Stop claiming, wait (bounded) for in-flight deliveries."""
        self._stopping.set()
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout)

    # -- dispatcher -------------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        s = self._settings
        next_claim = 0.0
        while not self._stopping.is_set():
            self._wake.clear()
            self.polls += 1
            if self._backlog < s.max_backlog // 2 + 1 and loop.time() >= next_claim:
                limit = min(s.batch, s.max_backlog - self._backlog)
                claimed = await self._intake(limit)
                next_claim = loop.time() + (0.0 if claimed >= limit else s.poll_interval)
            wait = await self._dispatch()
            if self._backlog < s.max_backlog // 2 + 1:
                wait = min(wait, max(0.0, next_claim - loop.time()))
            wait = min(max(wait, 0.001), s.poll_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _intake(self, limit: int) -> int:
        now = self._clock.now()
        if now - self._last_expiry_sweep >= self._lease / 4:
            self._last_expiry_sweep = now
            await self._spool.release_expired(now)
        jobs = await self._spool.claim_due(now, limit, self._lease)
        if not jobs:
            return 0
        dests = await self._destinations.of({j.domain for j in jobs})
        put_back: list[tuple[_Item, float]] = []
        for job in jobs:
            item = _Item(job, dests[job.domain])
            self._open[job.queue_id] = self._open.get(job.queue_id, 0) + 1
            self._backlog += len(job.recipients)
            d = self._dest(item.dest)
            d.domains[job.domain] = None
            d.domains.move_to_end(job.domain)
            while len(d.domains) > 10_000:
                d.domains.popitem(last=False)
            until = self._shaper.suspended_until(item.dest)
            if until is not None:
                put_back.append((item, until))
                continue
            if not d.backlog:
                self._ring.append(d.name)
            d.backlog.append(item)
        # the claimed domains of suspended destinations wait for the end of the suspension
        await asyncio.gather(
            *(self._spool.defer_domain(dom, until) for dom, until in
              {i.job.domain: until for i, until in put_back}.items())
        )  # fmt: skip
        await self._put_back(put_back)
        if await self._trim_overfull(now):
            return 0  # the queue is deeper than we can take: no immediate re-claim
        return sum(len(j.recipients) for j in jobs)

    async def _trim_overfull(self, now: float) -> bool:
        """A rate-limited destination holds no more than it can send in half a lease.

        The excess goes back to the spool and the destination's queue is pushed back
        (`defer_domain`) until about half of what is held has been sent, so a deep, slow
        destination neither hogs the backlog nor is claimed again in a loop. Destinations
        without a rate share the backlog first come, first served (like Postfix's active
        queue), their concurrency being the limit. Returns True when anything was trimmed.
        """
        trimmed = False
        for name in list(self._ring):
            rate = self._shaper.rate(name)
            if rate is None:
                continue
            d = self._dests[name]
            cap = max(int(rate * self._lease / 2), self._shaper.limits(name).max_connections)
            if len(d.backlog) <= cap:
                continue
            extra = [d.backlog.pop() for _ in range(len(d.backlog) - cap)]
            until = now + max(len(d.backlog) / 2 / rate, 0.5)
            await self._defer_destination(d, until)
            await self._put_back([(i, until) for i in extra])
            trimmed = True
        return trimmed

    async def _dispatch(self) -> float:
        """Hand out every permitted job; return seconds until something may change."""
        loop = asyncio.get_running_loop()
        wait = math.inf
        now = self._clock.now()
        for _ in range(len(self._ring)):
            name = self._ring[0]
            self._ring.rotate(-1)
            d = self._dests[name]
            if loop.time() < d.not_before:
                wait = min(wait, d.not_before - loop.time())
                continue
            until = self._shaper.suspended_until(name)
            if until is not None:
                items = list(d.backlog)
                d.backlog.clear()
                await self._defer_destination(d, until)
                await self._put_back([(i, until) for i in items])
                continue
            while d.backlog:
                item = d.backlog[0]
                if item.job.lease_until - now < self._lease * LEASE_MARGIN:
                    d.backlog.popleft()
                    await self._put_back([(item, now)])
                    continue
                if self._queue.full():
                    return 0.05  # workers busy; a finishing worker wakes us
                got = await self._permit(name)
                if got is not None:
                    if math.isfinite(got):
                        d.not_before = loop.time() + got
                        wait = min(wait, got)
                    break
                d.backlog.popleft()
                self.inflight += 1
                self._queue.put_nowait(item)
        for name in [n for n in self._ring if not self._dests[n].backlog]:
            self._ring.remove(name)
        return wait

    async def _permit(self, name: str) -> float | None:
        """The cluster's permit first (when shared), then the local shaper's.

        The local shaper keeps its own accounting (connections, observed rate); when it
        refuses after the cluster granted, the shared slot is given back at once (its token
        is spent: the error is on the side of sending less)."""
        if self._shared is None:
            return self._shaper.acquire(name)
        got = await self._shared.acquire(name)
        if got is not None:
            return got
        got = self._shaper.acquire(name)
        if got is not None:
            await self._shared.release(name)
        return got

    # -- destinations -----------------------------------------------------------------------
    def _dest(self, name: str) -> _Dest:
        d = self._dests.get(name)
        if d is None:
            d = self._dests[name] = _Dest(name)
        return d

    async def _defer_destination(self, d: _Dest, until: float) -> None:
        """Keep the spool from handing us this destination's work before `until`.

        One update per domain, submitted together so they share one group commit; skipped
        when the domains were already pushed at least that far (every in-flight job of a
        throttled destination reports the same 421).
        """
        if until <= d.deferred_until:
            return
        d.deferred_until = until
        domains = list(d.domains)
        for i in range(0, len(domains), 500):
            await asyncio.gather(
                *(self._spool.defer_domain(dom, until) for dom in domains[i : i + 500])
            )

    async def _put_back(self, items: Sequence[tuple[_Item, float]]) -> None:
        """Return claimed jobs unattempted, due at the given time."""
        if not items:
            return
        updates = [
            RecipientUpdate(
                i.job.queue_id,
                r.idx,
                RecipientState.QUEUED,
                "",
                next_attempt=at,
                attempted=False,
            )
            for i, at in items
            for r in i.job.recipients
        ]
        await self._spool.record(updates)
        for i, _ in items:
            self._finish_job(i)
        for qid in {i.job.queue_id for i, _ in items}:
            await self._maybe_flush_dsn(qid)

    async def _release_all_backlog(self) -> None:
        now = self._clock.now()
        items = [(i, now) for d in self._dests.values() for i in d.backlog]
        for d in self._dests.values():
            d.backlog.clear()
        self._ring.clear()
        with contextlib.suppress(Exception):
            await self._put_back(items)

    def _finish_job(self, item: _Item) -> None:
        self._backlog -= len(item.job.recipients)
        left = self._open.get(item.job.queue_id, 1) - 1
        if left <= 0:
            self._open.pop(item.job.queue_id, None)
        else:
            self._open[item.job.queue_id] = left

    # -- workers ----------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            try:
                report = await self._deliver(item)
                await self._apply(item, report)
            except Exception:
                log.exception(kv(event="apply_failed", queue_id=item.job.queue_id))
                # The lease runs out and the work comes back: at least once.
                self._finish_job(item)
            finally:
                self.inflight -= 1
                self._wake.set()

    async def _deliver(self, item: _Item) -> DeliveryReport:
        limits = self._shaper.limits(item.dest)
        self.attempts += 1
        try:
            return await attempt(
                self._agent, item.job, self._route, limits, self._lease, self._clock
            )
        finally:
            self._shaper.release(item.dest)
            if self._shared is not None:
                await self._shared.release(item.dest)

    async def _apply(self, item: _Item, report: DeliveryReport) -> None:
        job = item.job
        reaction = self._shaper.observe(
            item.dest,
            report.results,
            connection_failed=connection_failed(report, self._settings.connection_failure_status),
        )
        if reaction.suspended_until is not None:
            d = self._dest(item.dest)
            log.warning(
                kv(
                    event="destination_suspended",
                    destination=item.dest,
                    until=round(reaction.suspended_until, 3),
                    rules=",".join(reaction.rules),
                    queue_id=job.queue_id,
                )
            )
            await self._defer_destination(d, reaction.suspended_until)
            if self._shared is not None:
                reason = ",".join(reaction.rules)
                await self._shared.suspend(item.dest, reaction.suspended_until, reason)
        now = self._clock.now()
        wants_dsn = (
            bool(job.sender)
            and job.dsn
            and not job.is_dsn
            and self._send_dsns
            and (job.user or "").lower() not in self._no_dsn_users
        )
        settled = settle(
            job,
            report,
            dict(reaction.overrides),
            retry=self._retry,
            classify=self._classify,
            now=now,
            suspended_until=reaction.suspended_until,
            rules=reaction.rules,
            wants_dsn=wants_dsn,
            warned=self._notices.warned(job.queue_id),
        )
        if settled.updates:
            await self._spool.record(settled.updates, settled.events)
        if self._on_bounce is not None:
            for bounce in settled.sync_bounces:
                try:
                    await self._on_bounce(bounce)
                except MtaError as exc:
                    log.error(kv(event="bounce_action_failed", queue_id=job.queue_id,
                                 rcpt=f"<{bounce.address}>", error=str(exc)))  # fmt: skip
        if settled.warn:
            await self._notices.delay_warning(job, settled.warn, now)
        if settled.dsn_updates:
            self._notices.hold(job, settled.dsn_recipients, settled.dsn_updates, settled.dsn_events)
        self._finish_job(item)
        await self._maybe_flush_dsn(job.queue_id)

    # -- DSNs -------------------------------------------------------------------------------
    async def _maybe_flush_dsn(self, queue_id: str) -> None:
        if queue_id not in self._open:
            await self._notices.flush(queue_id, self._clock.now())

    async def _flush_all_dsn(self) -> None:
        for qid in self._notices.held():
            self._open.pop(qid, None)
            await self._maybe_flush_dsn(qid)
