"""Cluster-wide permits: the scheduler asks here before its local shaper.

With Redis up, a permit for destination D is one atomic script call: D not suspended by any
node, fewer than ``max_connections`` unexpired connection leases on D across the cluster,
and a token from D's shared bucket. A lease lives as long as its SMTP connection, idle in
the delivery agent's pool included (:mod:`.pooled`, books in :mod:`.ledger`): renewed
every third of ``[cluster] lease``, given back when the connection closes, expired after
``lease`` when the node dies; a permit asked while one of this node's connections to D
waits idle takes that connection's lease and a token only. A lease found expired at a
renewal is taken again only under the limit, else its connection closes. A suspension
one node saw (a 421 matching a rule) is mirrored into every node's shaper via Redis.

When Redis cannot be reached the node is never unlimited: it shapes alone at ``limit /
nodes`` (connections, idle pooled ones included — the excess closed at once — and rate),
logs and counts the change, and tries Redis again every ``reconnect``; once it answers,
the connections opened meanwhile are registered as leases, and the shared limits apply
again once the other nodes have registered theirs (:mod:`mtaserver.cluster.recovery`).
The limits themselves come from the local :class:`~mtaserver.shaper.Shaper`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence

from mtaserver.clock import Clock
from mtaserver.cluster.client import (
    GRANTED,
    NO_SLOT,
    SUSPENDED,
    Marks,
    RedisDown,
    ShapingScripts,
)
from mtaserver.cluster.ledger import Ledger
from mtaserver.cluster.pooled import ConnectionLeases
from mtaserver.cluster.recovery import Grace
from mtaserver.config.cluster import ClusterConfig
from mtaserver.log import get_logger, kv
from mtaserver.ratelimit import TokenBucket
from mtaserver.shaper import BLOCKED, Shaper, default_burst

log = get_logger("cluster")

NO_SLOT_RETRY = 0.05  # another node's connection may close at any time: ask again soon
SUSPENDED_RETRY = 0.001  # the scheduler's next round sees the mirrored suspension


class SharedShaping:
    """Implements the scheduler's ``SharedLimits`` port over Redis, local when degraded;
    ``connections`` is the delivery agent's port (its connections hold the slots)."""

    def __init__(
        self,
        cfg: ClusterConfig,
        shaper: Shaper,
        clock: Clock,
        scripts: ShapingScripts | None,
    ) -> None:
        self._cfg = cfg
        self._shaper = shaper
        self._clock = clock
        self._scripts = scripts
        self._up: bool | None = None  # None until the first answer or failure
        self._boot = secrets.token_hex(4)  # lease ids of a restarted node never collide
        self._seq = 0
        self.ledger = Ledger()  # the slots held, by destination
        self.connections = ConnectionLeases(self)  # the delivery agent's port
        self._buckets: dict[str, TokenBucket] = {}
        self._grace = Grace(cfg.node_id, cfg.nodes, cfg.lease, clock)  # see _recovered
        self._known = False  # this node has read the other nodes' marks at least once
        self._unregistered = False  # connections opened alone, not yet leases in Redis
        self.degraded_total = 0  # transitions into degraded mode
        self.lost_total = 0  # leases not renewed in time and taken by another node
        self.calls = 0  # Redis round trips made
        self.errors = 0

    # -- state ------------------------------------------------------------------------------
    @property
    def redis_up(self) -> bool:
        return bool(self._up)

    @property
    def scripts(self) -> ShapingScripts | None:
        return self._scripts

    def assigned(self, domain: str) -> str:
        """The destination the scheduler filed ``domain`` under (see Shaper.assigned)."""
        return self._shaper.assigned(domain)

    def _share(self, destination: str) -> int:
        return max(1, self._shaper.limits(destination).max_connections // self._cfg.nodes)

    def down(self, exc: Exception | str) -> None:
        self.errors += 1
        if self._up is not False:
            self.degraded_total += 1
            log.warning(kv(event="cluster_degraded", node=self._cfg.node_id,
                           nodes=self._cfg.nodes, reason=str(exc)))  # fmt: skip
        self._up = False
        for dest, _ in self.ledger.items():  # alone at limit / nodes: idle ones too
            self._evict(dest, self.ledger.excess(dest, self._share(dest)))

    def _evict(self, dest: str, n: int) -> None:
        if n > 0 and self.connections.pool is not None:
            closed = self.connections.pool.evict(dest, n)
            log.info(kv(event="cluster_idle_closed", node=self._cfg.node_id, destination=dest,
                        closed=closed))  # fmt: skip

    async def _recovered(self) -> None:
        """Redis answers again: register the connections opened meanwhile, then share.

        Coming back from degraded, the node keeps its ``limit / nodes`` share (the
        connections it opens meanwhile are leases in Redis at once) until the other nodes
        have registered the connections they opened alone (:class:`Grace`); granting the
        whole limit before they have would put theirs on top of it."""
        await self._register_held()
        self._buckets.clear()
        marks = await self._sync()
        if self._up is not True:
            log.info(kv(event="cluster_shared", node=self._cfg.node_id))
        if self._up is False:
            self._grace.begin(marks.now_ms, known=self._known)
        self._known = True
        self._grace.observe(marks.now_ms, marks.marks)
        self._up = True
        self.connections.wake()  # slots given back while Redis was down

    async def _sync(self) -> Marks:
        """Mark this node (every connection it holds is a lease) and read the others'."""
        assert self._scripts is not None
        self.calls += 1
        return await self._scripts.sync(self._cfg.node_id, self._cfg.lease)

    async def _register_held(self) -> None:
        """Give the connections opened without Redis a lease id and a lease in Redis.

        The ids are set in place before any await: a delivery ending (or starting) during
        the round trip changes the same list, and must not be undone by this one."""
        assert self._scripts is not None
        self._unregistered = False
        for dest, books in self.ledger.items():
            held = books.slots
            for i, x in enumerate(held):
                if x is None:
                    held[i] = self._lease_id()
            ids = [x for x in held if x is not None]
            if ids:
                self.calls += 1
                await self._scripts.renew(dest, ids, self._cfg.lease)

    async def _keep(self) -> None:
        """Renew every lease held; one that could not be kept closes its connection."""
        assert self._scripts is not None
        for dest, books in self.ledger.items():
            ids = [x for x in books.slots if x is not None]
            if not ids:
                continue
            self.calls += 1
            most = self._shaper.limits(dest).max_connections
            lost = await self._scripts.keep(dest, ids, self._cfg.lease, most)
            gone = [x for x in ids if x not in books.slots]  # given back during the call
            if gone:
                self.calls += 1
                await self._scripts.release(dest, gone)
            lost = [x for x in lost if x in books.slots]
            if lost:
                self.lost_total += len(lost)
                log.warning(kv(event="cluster_lease_lost", node=self._cfg.node_id,
                               destination=dest, leases=len(lost)))  # fmt: skip
                self._evict(dest, self.ledger.lost(dest, lost))

    async def start(self) -> None:
        """Find out once whether Redis answers, so the first delivery does not wait."""
        if self._scripts is None:
            self.down("no cluster.redis configured")
            return
        try:
            self.calls += 1
            await self._scripts.ping()
            await self._recovered()
        except RedisDown as exc:
            self.down(exc)

    async def run(self) -> None:
        """Renew held leases (a third of the lease time), reconnect when degraded, and give
        back in Redis the leases of connections the agent closed."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.connections.flush_loop())
            tg.create_task(self._tick_loop())

    async def _tick_loop(self) -> None:
        next_renew = self._clock.monotonic() + self._cfg.lease / 3
        while True:
            await self._clock.sleep(min(self._cfg.reconnect, self._cfg.lease / 3))
            if self._scripts is None:
                continue
            self._grace.tick()
            try:
                if not self._up:
                    self.calls += 1
                    await self._scripts.ping()
                    await self._recovered()
                    continue
                if self._unregistered and not self._grace.active:
                    await self._register_held()
                elif self._clock.monotonic() >= next_renew:
                    next_renew = self._clock.monotonic() + self._cfg.lease / 3
                    await self._keep()
                if not self._unregistered:  # the mark says so: only when it is true
                    marks = await self._sync()
                    self._grace.observe(marks.now_ms, marks.marks)
            except RedisDown as exc:
                self.down(exc)

    async def close(self) -> None:
        """Close the idle connections, then give back the leases still held (drain) so
        other nodes need not wait them out."""
        if self.connections.pool is not None:
            with contextlib.suppress(Exception):
                await self.connections.pool.drain()
        if self._scripts is None:
            return
        if self._up:
            await self.connections.flush()
            for dest, books in self.ledger.items():
                with contextlib.suppress(RedisDown):
                    await self._scripts.release(dest, [x for x in books.slots if x is not None])
            with contextlib.suppress(RedisDown):
                await self._scripts.unsync(self._cfg.node_id)
        self.ledger.clear()
        with contextlib.suppress(Exception):
            await self._scripts.client.aclose()

    def _lease_id(self) -> str:
        self._seq += 1
        return f"{self._cfg.node_id}:{self._boot}:{self._seq}"

    # -- the scheduler's port ---------------------------------------------------------------
    async def acquire(self, destination: str) -> float | None:
        """None: a connection to `destination` may open now (``release`` it afterwards);
        else seconds after which to ask again (``BLOCKED``: after a local release)."""
        limits = self._shaper.limits(destination)
        rate = self._shaper.rate(destination)
        burst = limits.burst if limits.burst is not None else default_burst(rate or 1.0)
        if self._up and self._scripts is not None and self._grace.active:
            got = self._acquire_local(destination, limits.max_connections, rate, burst)
            if got is None:  # the grace after an outage: alone, but counted in Redis
                try:
                    await self._register_held()
                except RedisDown as exc:
                    self.down(exc)
            return got
        if self._up and self._scripts is not None:
            try:
                if self._unregistered:
                    await self._register_held()
                return await self._acquire_shared(destination, limits.max_connections, rate,
                                                  burst)  # fmt: skip
            except RedisDown as exc:
                self.down(exc)
        return self._acquire_local(destination, limits.max_connections, rate, burst)

    async def _acquire_shared(
        self, destination: str, max_connections: int, rate: float | None, burst: float
    ) -> float | None:
        assert self._scripts is not None
        reuse = self.ledger.books(destination).reusable  # an idle connection carries it
        lease_id = self._lease_id()
        self.calls += 1
        verdict = await self._scripts.acquire(
            destination, lease_id, max_connections=max_connections,
            lease=self._cfg.lease, rate=rate, burst=burst, reuse=reuse,
        )  # fmt: skip
        if verdict.status == GRANTED:
            if not reuse:
                self.ledger.granted(destination, lease_id)
            elif not self.ledger.reserve(destination):  # it closed during the call
                lease_id2 = await self._new_lease(destination)
                if lease_id2 is None:
                    return NO_SLOT_RETRY
                self.ledger.granted(destination, lease_id2)
            return None
        if verdict.status == SUSPENDED:
            until = self._clock.now() + verdict.wait
            self._shaper.suspend(destination, until, verdict.by or "cluster")
            return SUSPENDED_RETRY
        if verdict.status == NO_SLOT:
            return NO_SLOT_RETRY
        return verdict.wait

    async def _new_lease(self, destination: str) -> str | None:
        """A slot without a token (the permit's token was taken, or the delivery's
        destination has no permit); None: the destination is full (or suspended)."""
        assert self._scripts is not None
        lease_id = self._lease_id()
        self.calls += 1
        verdict = await self._scripts.acquire(
            destination, lease_id, max_connections=self._shaper.limits(destination).max_connections,
            lease=self._cfg.lease, rate=None, burst=1.0,
        )  # fmt: skip
        return lease_id if verdict.status == GRANTED else None

    async def claim_own(self, destination: str) -> bool:
        """A slot for a delivery without a permit of its destination (the destination a
        domain maps to changed since the permit): in Redis, or within this node's share."""
        if self._up and self._scripts is not None and not self._grace.active:
            try:
                lease_id = await self._new_lease(destination)
            except RedisDown as exc:
                self.down(exc)
            else:
                if lease_id is not None:
                    self.ledger.claim_with(destination, lease_id)
                return lease_id is not None
        if self.ledger.books(destination).count >= self._share(destination):
            return False
        self.ledger.claim_with(destination, None)
        self._unregistered = True
        if self._up and self._scripts is not None:  # the grace: counted in Redis at once
            try:
                await self._register_held()
            except RedisDown as exc:
                self.down(exc)
        return True

    def may_park(self, destination: str) -> bool:
        """Whether a connection may stay idle with its slot: not when its lease was lost,
        nor above ``limit / nodes`` while shaping alone."""
        books = self.ledger.books(destination)
        if books.debt:
            return False
        if not self._up or self._grace.active:
            return books.count <= self._share(destination)
        return True

    def _acquire_local(
        self, destination: str, max_connections: int, rate: float | None, burst: float
    ) -> float | None:
        """Degraded: this node's share of the limits, ``limit / nodes``."""
        nodes = self._cfg.nodes
        books = self.ledger.books(destination)
        reuse = books.reusable
        if not reuse and books.count >= max(1, max_connections // nodes):
            return BLOCKED
        if rate is not None:
            share, depth = rate / nodes, max(1.0, burst / nodes)
            mono = self._clock.monotonic()
            bucket = self._buckets.get(destination)
            if bucket is None:
                bucket = self._buckets[destination] = TokenBucket(share, depth, mono)
            elif bucket.rate != share or bucket.burst != depth:
                bucket.set_rate(share, depth, mono)
            wait = bucket.wait(mono)
            if wait > 0:
                return wait
            bucket.take(mono)
        if reuse:
            self.ledger.reserve(destination)
        else:
            self.ledger.granted(destination, None)
            self._unregistered = True
        return None

    async def release(self, destination: str) -> None:
        self.connections.give(destination, self.ledger.release(destination))
        await self.connections.flush()

    async def suspend(self, destination: str, until: float, reason: str) -> None:
        """Tell every node (the local shaper has already suspended `destination`)."""
        seconds = until - self._clock.now()
        if seconds <= 0 or not self._up or self._scripts is None:
            return
        try:
            self.calls += 1
            await self._scripts.suspend(destination, seconds, reason)
        except RedisDown as exc:
            self.down(exc)

    # -- views ------------------------------------------------------------------------------
    @property
    def in_grace(self) -> bool:
        """Back from degraded, still at ``limit / nodes`` until the others registered."""
        return self._grace.active

    @property
    def grace_timeouts(self) -> int:
        return self._grace.timeouts

    def peers(self) -> list[str]:
        """The other nodes whose marks this node has read."""
        return self._grace.peers()

    def held(self, destination: str | None = None) -> int:
        """Connection slots held: deliveries in progress and idle pooled connections."""
        if destination is not None:
            return self.ledger.books(destination).count
        return sum(b.count for _, b in self.ledger.items())

    def idle(self, destination: str) -> int:
        return self.ledger.books(destination).idle

    def destinations(self) -> Sequence[str]:
        return [d for d, b in self.ledger.items() if b.count]
