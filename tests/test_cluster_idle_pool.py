"""Idle pooled connections under cluster-wide limits, measured where a provider sees them.

Every SMTP connection a node has open holds one connection lease of its destination in
Redis — idle in the pool included, renewed while it waits — so the idle pool stays on with
``[cluster] redis`` and the MX still never sees more than the limit. Two nodes are two
``DeliveryAgent``s with their own ``SharedShaping`` and Redis client, driven the way the
scheduler drives them (the cluster permit, the local shaper's, deliver, release), against
one real redis-server and one aiosmtpd sink that counts sessions per sending node (EHLO
name); the kill -9 case runs two real daemons.
"""

from __future__ import annotations

import asyncio
import collections
import smtplib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiosmtpd.smtp import Session

from mtaserver.clock import SystemClock
from mtaserver.cluster.client import ShapingScripts, connect
from mtaserver.cluster.shared import SharedShaping
from mtaserver.config import parse_config
from mtaserver.config.cluster import ClusterConfig, RedisTarget
from mtaserver.config.shaping import DestinationConfig, LimitOverrides, ShapingConfig
from mtaserver.delivery.agent import DeliveryAgent
from mtaserver.model import (
    DeliveryJob,
    Disposition,
    JobRecipient,
    MxHost,
    Route,
    RouteError,
    RoutePolicy,
)
from mtaserver.shaper import Shaper
from tests.redis_server import RedisServer
from tests.support.daemon import Daemon, TestConfig
from tests.support.meteredsink import MeteredSink
from tests.support.mxsink import eventually, wait_for

PREFIX = "mtaserver:"
DEST = "pool.test"
LIMIT = 5  # connections to DEST, cluster-wide
NODES = 2
LEASE = 1.0  # [cluster] lease: an idle connection outlives it only by renewing
SLOW = 0.1  # seconds the sink spends in DATA: concurrent deliveries, so the limit binds


class NodeSink(MeteredSink):
    """Also counts sessions opened, and sessions open per sending node (its EHLO name)."""

    def __init__(self) -> None:
        super().__init__({DEST: SLOW})
        self.sessions: collections.Counter[str] = collections.Counter()
        self.by_node: collections.Counter[str] = collections.Counter()
        self.node_peak: collections.Counter[str] = collections.Counter()

    def reset_peaks(self) -> None:
        super().reset_peaks()
        self.node_peak = collections.Counter(self.by_node)

    def _open(self, session: Session, domain: str) -> None:
        if getattr(session, "metered_domain", None) is None:
            node = str(session.host_name)
            session.metered_node = node  # type: ignore[attr-defined]
            self.sessions[domain] += 1
            self.by_node[node] += 1
            self.node_peak[node] = max(self.node_peak[node], self.by_node[node])
        super()._open(session, domain)

    def _closed(self, session: Session | None) -> None:
        if session is not None and getattr(session, "metered_domain", None) is not None:
            self.by_node[session.metered_node] -= 1  # type: ignore[attr-defined]
        super()._closed(session)


class Relay:
    """DNS faked: the sink's address for the relay host name."""

    async def route(self, domain: str) -> Route | RouteError:
        return Route(domain, (MxHost("sink.test", 0, ("127.0.0.2",)),))

    async def host(self, name: str) -> Route | RouteError:
        return Route(name, (MxHost(name, 0, (name,)),))


class Node:
    """One node's delivery side, as ``mtaserver.app`` wires it in a cluster."""

    def __init__(self, name: str, redis: RedisServer, sink: NodeSink) -> None:
        self.name = name
        clock = SystemClock()
        cfg = ClusterConfig(
            node_id=name, nodes=NODES, redis=RedisTarget("127.0.0.1", redis.port, 0, False),
            timeout=0.2, lease=LEASE, reconnect=0.1,
        )  # fmt: skip
        dest = DestinationConfig(DEST, LimitOverrides(max_connections=LIMIT))
        self.shaper = Shaper(ShapingConfig(destinations=(dest,), builtin=False), clock)
        self.shared = SharedShaping(cfg, self.shaper, clock, ShapingScripts(connect(cfg), PREFIX))
        self.agent = DeliveryAgent(Relay(), clock, hostname=f"{name}.test", reap_interval=0.1)
        self.agent.use_leases(self.shared.connections)
        self.policy = RoutePolicy(
            tls="none", relay_host=f"127.0.0.2:{sink.port}", idle_timeout=30.0,
            connect_timeout=5.0, command_timeout=5.0, data_timeout=5.0,
        )  # fmt: skip
        self.task: asyncio.Task[None] | None = None
        self.sent = 0

    async def start(self) -> Node:
        await self.shared.start()
        self.task = asyncio.create_task(self.shared.run())
        return self

    async def _permit(self) -> None:
        """The scheduler's ``_permit``: the cluster's first, then the local shaper's."""
        while True:
            got = await self.shared.acquire(DEST)
            if got is None:
                got = self.shaper.acquire(DEST)
                if got is None:
                    return
                await self.shared.release(DEST)
            await asyncio.sleep(min(got, 0.02))

    async def send(self, n: int, workers: int) -> None:
        """``n`` messages over ``workers`` concurrent deliveries, each under a permit."""
        todo = list(range(self.sent, self.sent + n))
        self.sent += n

        async def worker() -> None:
            while todo:
                i = todo.pop()
                await self._permit()
                job = DeliveryJob(
                    queue_id=f"{self.name}-{i}", sender="app@sender.test", domain=DEST,
                    recipients=(JobRecipient(0, f"{self.name}{i}@{DEST}", 0),),
                    data=b"Subject: hi\r\n\r\nbody\r\n", received_at=0.0, lease_until=0.0,
                )  # fmt: skip
                try:
                    report = await self.agent.deliver(job, self.policy)
                finally:
                    self.shaper.release(DEST)
                    await self.shared.release(DEST)
                assert report.results[0].disposition is Disposition.DELIVERED, report

        await asyncio.gather(*(worker() for _ in range(workers)))

    @property
    def ehlo(self) -> str:
        return f"{self.name}.test"

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.shared.close()
        await self.agent.aclose()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as r:
        yield r


@pytest.fixture
async def sink() -> AsyncIterator[NodeSink]:
    s = NodeSink()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def probe(redis: RedisServer) -> AsyncIterator[ShapingScripts]:
    client = aioredis.Redis(port=redis.port, decode_responses=True)
    try:
        yield ShapingScripts(client, PREFIX)
    finally:
        await client.aclose()


@pytest.fixture
async def two(redis: RedisServer, sink: NodeSink) -> AsyncIterator[tuple[Node, Node]]:
    a, b = Node("a", redis, sink), Node("b", redis, sink)
    try:
        await a.start()
        await b.start()
        yield a, b
    finally:
        await asyncio.gather(a.close(), b.close())


def idle(*nodes: Node) -> int:
    return sum(n.agent.idle_sessions for n in nodes)


async def test_pooled_connections_are_reused_and_hold_their_leases_while_idle(
    two: tuple[Node, Node], sink: NodeSink, probe: ShapingScripts
) -> None:
    a, b = two
    await asyncio.gather(a.send(24, 6), b.send(24, 6))
    assert len(sink.delivered(DEST)) == 48
    assert sink.peak[DEST] == LIMIT, f"peak {sink.peak[DEST]} sessions for a limit of {LIMIT}"
    assert sink.sessions[DEST] <= 2 * LIMIT, f"{sink.sessions[DEST]} sessions: not reused"
    # Idle now, each still open at the MX and counted in Redis, one lease per connection.
    open_now = sink.active[DEST]
    assert 1 <= open_now <= LIMIT and idle(a, b) == open_now
    assert await probe.active(DEST) == open_now
    # Past the lease (in Redis's own time) only a renewed lease is still there.
    await asyncio.sleep(LEASE * 1.6)
    assert sink.active[DEST] == open_now and idle(a, b) == open_now
    assert await probe.active(DEST) == open_now, "an idle connection's lease was not renewed"
    # More mail goes over the pooled connections, still within the limit.
    before = sink.sessions[DEST]
    sink.reset_peaks()
    await asyncio.gather(a.send(10, 4), b.send(10, 4))
    assert sink.peak[DEST] <= LIMIT
    assert sink.sessions[DEST] - before <= LIMIT - open_now + 2
    # A clean stop says QUIT on its idle connections and gives their leases back at once.
    held_b = b.agent.idle_sessions
    await a.close()
    assert await probe.active(DEST) == held_b
    await wait_for(lambda: sink.by_node[a.ehlo] == 0)


async def test_without_redis_pooled_connections_keep_to_the_local_share(
    two: tuple[Node, Node], sink: NodeSink, redis: RedisServer, probe: ShapingScripts
) -> None:
    a, b = two
    share = LIMIT // NODES
    await a.send(20, 6)  # alone: the whole limit, pooled
    assert a.agent.idle_sessions == sink.by_node[a.ehlo] == LIMIT
    redis.stop(kill=True)
    await wait_for(lambda: not a.shared.redis_up and not b.shared.redis_up, 15)
    # Down to limit / nodes at once: the idle connections above the share are closed.
    await wait_for(lambda: sink.by_node[a.ehlo] <= share, 15)
    assert a.agent.idle_sessions == share
    sink.reset_peaks()
    await asyncio.gather(a.send(12, 4), b.send(12, 4))
    assert sink.node_peak[a.ehlo] <= share and sink.node_peak[b.ehlo] <= share, sink.node_peak
    assert idle(a, b) == sink.active[DEST] <= NODES * share
    # Redis back, empty: each registers what it holds; the limit holds as they share again.
    redis.start()
    await wait_for(lambda: a.shared.redis_up and b.shared.redis_up, 15)
    await wait_for(lambda: not a.shared.in_grace and not b.shared.in_grace, 15)
    assert await probe.active(DEST) == idle(a, b)
    sink.reset_peaks()
    await asyncio.gather(a.send(16, 5), b.send(16, 5))
    assert sink.peak[DEST] <= LIMIT
    assert await probe.active(DEST) == idle(a, b) == sink.active[DEST]


async def test_a_connection_whose_lease_could_not_be_kept_is_closed(
    redis: RedisServer, sink: NodeSink, probe: ShapingScripts
) -> None:
    """As after a node stalled past its lease while others took every slot: Redis no
    longer holds its leases and the destination is full, so its idle connections close
    rather than stay open over the limit."""
    a = await Node("a", redis, sink).start()
    try:
        await a.send(6, 3)
        held = a.agent.idle_sessions
        assert held >= 1 and await probe.active(DEST) == held
        key = probe.keys.leases(DEST)
        await probe.client.delete(key)  # expired, and the slots taken by others
        now = await probe.client.time()
        until = (int(now[0]) + 60) * 1000
        await probe.client.zadd(key, {f"other:{i}": until for i in range(LIMIT)})
        await wait_for(lambda: a.agent.idle_sessions == 0, LEASE + 1)
        await wait_for(lambda: sink.by_node[a.ehlo] == 0, 10)
        assert a.shared.lost_total == held
        assert a.shared.held(DEST) == 0
        assert await probe.active(DEST) == LIMIT  # the others' only
    finally:
        await a.close()


async def test_a_delivery_without_its_destinations_permit_takes_a_slot_or_defers(
    redis: RedisServer, sink: NodeSink, probe: ShapingScripts
) -> None:
    """A domain's destination changed since its permit (its MX moved): the delivery finds no
    permit under the new one, takes a slot of its own under the limit, else defers with
    4.4.5 without connecting."""
    a = await Node("a", redis, sink).start()
    key = probe.keys.leases(DEST)
    try:
        job = DeliveryJob(
            queue_id="x", sender="app@sender.test", domain=DEST,
            recipients=(JobRecipient(0, f"x@{DEST}", 0),), data=b"Subject: x\r\n\r\nx\r\n",
            received_at=0.0, lease_until=0.0,
        )  # fmt: skip
        now = await probe.client.time()
        await probe.client.zadd(
            key, {f"other:{i}": (int(now[0]) + 60) * 1000 for i in range(LIMIT)}
        )
        r = (await a.agent.deliver(job, a.policy)).results[0]
        assert (r.disposition, r.reply.enhanced) == (Disposition.DEFERRED, "4.4.5"), r
        assert sink.sessions[DEST] == 0
        await probe.client.zrem(key, "other:0")
        r = (await a.agent.deliver(job, a.policy)).results[0]
        assert r.disposition is Disposition.DELIVERED, r
        assert a.agent.idle_sessions == 1 == a.shared.held(DEST)  # parked with its own slot
        assert await probe.active(DEST) == LIMIT
    finally:
        await a.close()
    assert await probe.active(DEST) == LIMIT - 1  # given back at the stop


# -- two real daemons -------------------------------------------------------------------------
def daemon_config(tmp_path: Path, i: int, redis: RedisServer, sink: NodeSink) -> TestConfig:
    secret = tmp_path / "secret.key"  # one for the cluster (VERP, links)
    if not secret.exists():
        secret.write_text("ab" * 32 + "\n")
    (tmp_path / f"node{i}").mkdir()
    cfg = TestConfig(tmp_path / f"node{i}", tls=False)
    cfg.set("server", hostname=f"mta{i}.test", log_level="info", secret_file=str(secret))
    cfg.set("cluster", node_id=f"node-{i}", redis=redis.url, nodes=NODES, timeout="300ms",
            lease=f"{LEASE}s", heartbeat="500ms", reconnect="200ms")  # fmt: skip
    cfg.set("delivery", relay_host=f"127.0.0.2:{sink.port}", tls="none", idle_timeout="30s")
    cfg.set("shaping", poll_interval="20ms")
    # The destination "pool" (its leases' key) holds the domain.
    cfg.set("shaping.pool", domains=[DEST], max_connections=LIMIT, max_rate="unlimited")
    return cfg


def submit(cfg: TestConfig, tag: str, n: int) -> None:
    with smtplib.SMTP(*cfg.address("submission", "listen_plain"), timeout=30) as s:
        for i in range(n):
            body = f"Subject: {i}\r\nFrom: app@sender.test\r\n\r\nbody\r\n"
            s.sendmail("app@sender.test", [f"{tag}{i}@{DEST}"], body)


async def node_leases(probe: ShapingScripts, node: str) -> list[str]:
    got = await probe.client.zrange(probe.keys.leases("pool"), 0, -1)
    return [str(m) for m in got if str(m).startswith(f"{node}:")]


async def test_two_daemons_pool_within_the_limit_and_a_killed_one_frees_its_slots(
    tmp_path: Path, redis: RedisServer, sink: NodeSink, probe: ShapingScripts
) -> None:
    cfgs = [daemon_config(tmp_path, i, redis, sink) for i in range(NODES)]
    nodes = [Daemon(c, ready_timeout=60) for c in cfgs]
    try:
        await asyncio.gather(*(asyncio.to_thread(d.start) for d in nodes))
        await asyncio.gather(*(asyncio.to_thread(submit, c, f"n{i}-", 30)
                               for i, c in enumerate(cfgs)))  # fmt: skip
        await wait_for(lambda: len(sink.delivered(DEST)) >= 60, 90)
        assert sink.peak[DEST] <= LIMIT, f"peak {sink.peak[DEST]} for a limit of {LIMIT}"
        assert sink.sessions[DEST] < 30, f"{sink.sessions[DEST]} sessions for 60 messages"
        # Idle, open, leased, and still so past the lease (renewed).
        await asyncio.sleep(LEASE * 1.5)
        open0 = sink.by_node["mta0.test"]
        assert open0 >= 1 and sink.active[DEST] <= LIMIT
        assert len(await node_leases(probe, "node-0")) == open0
        # kill -9: the kernel closes its sockets; its leases count until they expire.
        await asyncio.to_thread(nodes[0].kill)
        await wait_for(lambda: sink.by_node["mta0.test"] == 0, 20)
        left = await node_leases(probe, "node-0")
        assert left, "node 0's leases vanished before their expiry"
        gone = await eventually(lambda: node_leases(probe, "node-0"), lambda x: not x, LEASE + 10)
        assert not gone
        # Node 1 gets the whole limit now.
        sink.reset_peaks()
        await asyncio.to_thread(submit, cfgs[1], "late-", 30)
        await wait_for(lambda: len(sink.delivered(DEST)) >= 90, 90)
        assert sink.peak[DEST] <= LIMIT
        assert sink.node_peak["mta1.test"] == LIMIT, sink.node_peak
    finally:
        codes = await asyncio.gather(*(asyncio.to_thread(d.stop) for d in nodes))
    assert codes[1] == 0, nodes[1].log()[-3000:]


def test_the_idle_pool_stays_on_with_cluster_redis(tmp_path: Path) -> None:
    shared = '[cluster]\nnode_id = "n1"\nredis = "redis://127.0.0.1:6379/0"\n'
    assert parse_config(shared, tmp_path / "a.toml").delivery.idle_timeout == 10.0
    cfg = parse_config(shared + '[delivery]\nidle_timeout = "30s"\n', tmp_path / "a.toml")
    assert cfg.delivery.idle_timeout == 30.0
