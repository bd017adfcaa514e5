"""Back from a Redis outage: a node shares the limit again only once the others have
registered the connections they opened alone.

Two nodes, each degraded at ``limit / 2``, against a real redis-server restarted empty;
time is a fake timer the test steps, so "node B reconnects late" is exact: B's loop simply
does not run until the test lets it. A fixed grace (the old mechanism) let node A take the
whole limit once its timer ran out while B still held its share unknown to Redis: 6
connections for a limit of 4 here, as the three-node test once saw 6 for 5 at the sink.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from mtaserver.cluster.client import ShapingScripts, connect
from mtaserver.cluster.shared import NO_SLOT_RETRY, SharedShaping
from mtaserver.config.cluster import ClusterConfig, RedisTarget
from mtaserver.config.shaping import DestinationConfig, LimitOverrides, ShapingConfig
from mtaserver.shaper import BLOCKED, Shaper
from tests.redis_server import RedisServer
from tests.support.clock import TimerClock

PREFIX = "mtaserver:"
LIMIT = 4
TICK = 0.2  # [cluster] reconnect
LEASE = 30.0
D = "d.test"


class Nodes:
    """Nodes on one Redis and one fake clock; a node's loop runs only once started."""

    def __init__(self, redis: RedisServer, clock: TimerClock) -> None:
        self.redis = redis
        self.clock = clock
        self.runs: dict[str, asyncio.Task[None]] = {}
        self.made: list[SharedShaping] = []
        self.probe = ShapingScripts(aioredis.Redis(port=redis.port, decode_responses=True), PREFIX)

    def node(self, name: str, lease: float = LEASE) -> SharedShaping:
        cfg = ClusterConfig(
            node_id=name, nodes=2, redis=RedisTarget("127.0.0.1", self.redis.port, 0, False),
            timeout=0.2, lease=lease, reconnect=TICK,
        )  # fmt: skip
        dest = DestinationConfig(D, LimitOverrides(max_connections=LIMIT))
        shaper = Shaper(ShapingConfig(destinations=(dest,), builtin=False), self.clock)
        n = SharedShaping(cfg, shaper, self.clock, ShapingScripts(connect(cfg), PREFIX))
        self.made.append(n)
        return n

    def run(self, name: str, n: SharedShaping) -> None:
        self.runs[name] = asyncio.create_task(n.run())

    def pause(self, name: str) -> None:
        self.runs.pop(name).cancel()

    async def until(self, cond: Callable[[], bool], step: float = TICK, most: float = 60) -> None:
        """Move time a step at a time (each loop wakes and talks to Redis) until ``cond``."""
        moved = 0.0
        while not cond():
            assert moved <= most, f"not after {moved:g}s of fake time"
            await asyncio.sleep(0.02)  # the woken loops finish their round trips
            self.clock.advance(step)
            moved += step
        await asyncio.sleep(0.02)

    async def elapse(self, seconds: float) -> None:
        """Let ``seconds`` of fake time pass, the loops running each tick."""
        for _ in range(round(seconds / TICK)):
            self.clock.advance(TICK)
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for t in self.runs.values():
            t.cancel()
        await asyncio.gather(*self.runs.values(), return_exceptions=True)
        for n in self.made:
            await n.close()
        await self.probe.client.aclose()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as r:
        yield r


@pytest.fixture
async def nodes(redis: RedisServer) -> AsyncIterator[Nodes]:
    ns = Nodes(redis, TimerClock())
    try:
        yield ns
    finally:
        await ns.close()


async def degrade(ns: Nodes, *names: SharedShaping, outage: float = 0.0) -> None:
    """Redis killed; each node opens its share alone; ``outage`` s later Redis is back,
    empty."""
    ns.redis.stop(kill=True)
    for n in names:
        assert [await n.acquire(D) for _ in range(3)] == [None, None, BLOCKED]
        assert not n.redis_up
    await asyncio.sleep(outage)  # Redis's own clock moves on: the marks' age is real
    ns.redis.start()


async def test_a_late_peer_keeps_the_other_at_its_share_until_it_registered(
    nodes: Nodes,
) -> None:
    lease = 1.5  # shorter than the outage below, in Redis's (real) time
    a, b = nodes.node("a", lease), nodes.node("b", lease)
    await a.start()
    await b.start()
    nodes.run("a", a)
    nodes.run("b", b)
    await nodes.until(lambda: a.peers() == ["b"] and b.peers() == ["a"])
    nodes.pause("b")  # B's reconnect is late: its loop does not run
    await degrade(nodes, a, b, outage=lease + 0.3)
    await nodes.until(lambda: a.redis_up)
    assert a.in_grace
    assert await nodes.probe.active(D) == 2  # A's, registered; B's 2 unknown to Redis
    # Long past the old fixed grace (2 * reconnect + timeout = 0.6 s): still A's share,
    # where Redis alone would grant A two more and the MX would see 6 for a limit of 4.
    await nodes.elapse(0.8)
    assert a.in_grace
    assert await a.acquire(D) == BLOCKED
    await a.release(D)
    assert await a.acquire(D) is None  # within its share, and a lease at once
    assert await a.acquire(D) == BLOCKED
    assert await nodes.probe.active(D) == 2
    nodes.run("b", b)  # B reconnects: registers its 2, marks; A's next tick sees it
    await nodes.until(lambda: b.redis_up and not a.in_grace)
    assert await nodes.probe.active(D) == LIMIT
    assert await a.acquire(D) == NO_SLOT_RETRY  # 4 of 4, cluster-wide
    assert a.grace_timeouts == 0
    await b.release(D)
    await nodes.until(lambda: not b.in_grace)
    assert await a.acquire(D) is None  # B's freed slot, now through Redis


async def test_a_peer_that_never_returns_ends_the_grace_after_a_lease(nodes: Nodes) -> None:
    a, b = nodes.node("a"), nodes.node("b")
    await a.start()
    await b.start()
    nodes.run("a", a)
    await nodes.until(lambda: a.peers() == ["b"])
    await degrade(nodes, a)
    await nodes.until(lambda: a.redis_up)
    t0 = nodes.clock.monotonic()
    await nodes.until(lambda: not a.in_grace, step=1.0, most=LEASE + 2)
    assert nodes.clock.monotonic() - t0 >= LEASE - 1.0
    assert a.grace_timeouts == 1
    assert await a.acquire(D) is None  # the shared limit: 3 of 4 leases in Redis
    assert await nodes.probe.active(D) == 3


async def test_started_without_redis_a_node_waits_for_nodes_minus_one_marks(
    nodes: Nodes,
) -> None:
    """A node that never read the marks does not know its peers: it counts them."""
    nodes.redis.stop(kill=True)
    a = nodes.node("a")
    await a.start()
    assert not a.redis_up
    assert [await a.acquire(D) for _ in range(3)] == [None, None, BLOCKED]
    nodes.redis.start()
    nodes.run("a", a)
    await nodes.until(lambda: a.redis_up)
    await nodes.elapse(2.0)
    assert a.in_grace and await a.acquire(D) == BLOCKED
    b = nodes.node("b")
    await b.start()  # up at once: marks; it opened nothing alone
    await nodes.until(lambda: not a.in_grace)
    assert a.grace_timeouts == 0
    assert await a.acquire(D) is None
    assert await nodes.probe.active(D) == 3


async def test_a_clean_stop_removes_the_mark(nodes: Nodes) -> None:
    a, b = nodes.node("a"), nodes.node("b")
    await a.start()
    await b.start()
    await b.close()
    marks = await nodes.probe.sync("probe", LEASE)
    assert set(marks.marks) == {"a", "probe"}
