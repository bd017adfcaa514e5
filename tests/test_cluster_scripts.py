"""The shaping scripts against a real redis-server: atomic under concurrent processes,
leases that expire, buckets that refill (a fake clock through ``now_ms``), suspensions,
NOSCRIPT reload, and the local ``limit / nodes`` fallback while Redis is down."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from mtaserver.clock import SystemClock
from mtaserver.cluster.client import GRANTED, NO_SLOT, RATE, SUSPENDED, ShapingScripts
from mtaserver.cluster.shared import SharedShaping
from mtaserver.config.cluster import ClusterConfig, RedisTarget
from mtaserver.config.shaping import DestinationConfig, LimitOverrides, ShapingConfig
from mtaserver.shaper import BLOCKED, Shaper
from tests.redis_server import RedisServer
from tests.support.mxsink import wait_for

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_900_000_000_000  # a fake Redis-side "now" in ms


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as r:
        yield r


@pytest.fixture
async def scripts(server: RedisServer) -> AsyncIterator[ShapingScripts]:
    client = aioredis.Redis(port=server.port, decode_responses=True)
    yield ShapingScripts(client, "t:")
    await client.aclose()


async def grant(s: ShapingScripts, lid: str, now: int, **kw: object) -> int:
    args: dict[str, object] = {"max_connections": 5, "lease": 30.0, "rate": None, "burst": 1.0}
    args.update(kw)
    v = await s.acquire("example.com", lid, now_ms=now, **args)  # type: ignore[arg-type]
    return v.status


# -- atomicity across processes --------------------------------------------------------------
WORKER = """
import asyncio, json, sys
import redis.asyncio as aioredis
from mtaserver.cluster.client import ShapingScripts, GRANTED
port, who, tries, mode = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
async def main():
    c = aioredis.Redis(port=port, decode_responses=True)
    s = ShapingScripts(c, "t:")
    async def one(i):
        kw = dict(max_connections=5, rate=None, burst=1.0) if mode == "conn" else \\
             dict(max_connections=10**6, rate=0.001, burst=10.0)
        v = await s.acquire("race.test", f"{who}:{i}", lease=300.0, now_ms=T0, **kw)
        return v.status == GRANTED
    got = await asyncio.gather(*(one(i) for i in range(tries)))
    print(json.dumps(sum(got)))
    await c.aclose()
asyncio.run(main())
""".replace("T0", str(T0))


@pytest.mark.parametrize(("mode", "expected"), [("conn", 5), ("rate", 10)])
def test_concurrent_processes_never_overshoot(
    server: RedisServer, mode: str, expected: int
) -> None:
    """Four processes, 100 each, concurrent asks race for 5 slots (or 10 tokens): exactly that
    many are granted — a check-then-set outside Redis would hand out more."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(server.port), f"p{n}", "100", mode],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    granted = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(granted) == expected, granted


# -- leases ----------------------------------------------------------------------------------
async def test_leases_expire_unless_renewed(scripts: ShapingScripts) -> None:
    for i in range(5):
        assert await grant(scripts, f"a{i}", T0) == GRANTED
    assert await grant(scripts, "a5", T0 + 1000) == NO_SLOT
    # a live node renews its leases; they survive past the first expiry
    assert await scripts.renew("example.com", ["a0", "a1"], 30.0, now_ms=T0 + 20_000) == 5
    assert await grant(scripts, "b0", T0 + 30_001) == GRANTED  # a2..a4 expired: 2 + 1 held
    assert await grant(scripts, "b1", T0 + 30_002) == GRANTED
    assert await grant(scripts, "b2", T0 + 30_003) == GRANTED
    assert await grant(scripts, "b3", T0 + 30_004) == NO_SLOT  # a0, a1, b0, b1, b2
    await scripts.release("example.com", ["b0"])
    assert await grant(scripts, "b3", T0 + 30_005) == GRANTED


async def test_lease_expiry_on_redis_time(scripts: ShapingScripts) -> None:
    """Without now_ms the scripts use Redis's clock: a 0.3 s lease frees its slot."""
    for i in range(5):
        assert await grant(scripts, f"r{i}", 0, lease=0.3) == GRANTED
    assert await grant(scripts, "r5", 0, lease=0.3) == NO_SLOT
    assert await scripts.active("example.com") == 5
    await asyncio.sleep(0.4)
    assert await scripts.active("example.com") == 0
    assert await grant(scripts, "r5", 0, lease=0.3) == GRANTED


# -- buckets ---------------------------------------------------------------------------------
async def test_bucket_refills_at_the_rate_up_to_the_burst(scripts: ShapingScripts) -> None:
    kw = {"rate": 10.0, "burst": 2.0, "max_connections": 1000}
    assert await grant(scripts, "x0", T0, **kw) == GRANTED
    assert await grant(scripts, "x1", T0, **kw) == GRANTED
    v = await scripts.acquire("example.com", "x2", lease=30.0, now_ms=T0, **kw)  # type: ignore[arg-type]
    assert v.status == RATE and v.wait == pytest.approx(0.1, abs=0.002)
    assert await grant(scripts, "x2", T0 + 50, **kw) == RATE
    assert await grant(scripts, "x2", T0 + 100, **kw) == GRANTED
    # an hour idle saves up the burst (2), not 36 000 tokens
    later = T0 + 3_600_000
    assert [await grant(scripts, f"y{i}", later, **kw) for i in range(3)] == [0, 0, RATE]


async def test_no_slot_takes_no_token(scripts: ShapingScripts) -> None:
    kw = {"rate": 1.0, "burst": 3.0, "max_connections": 1}
    assert await grant(scripts, "z0", T0, **kw) == GRANTED
    assert await grant(scripts, "z1", T0, **kw) == NO_SLOT
    assert await grant(scripts, "z2", T0, **kw) == NO_SLOT
    await scripts.release("example.com", ["z0"])
    assert await grant(scripts, "z3", T0, **kw) == GRANTED  # tokens left: 1
    await scripts.release("example.com", ["z3"])
    assert await grant(scripts, "z4", T0, **kw) == GRANTED
    await scripts.release("example.com", ["z4"])
    assert await grant(scripts, "z5", T0, **kw) == RATE


# -- suspensions -----------------------------------------------------------------------------
async def test_suspension_is_seen_and_never_shortened(scripts: ShapingScripts) -> None:
    assert await scripts.suspend("example.com", 60.0, "gmail-421", now_ms=T0) == 60.0
    assert await scripts.suspend("example.com", 5.0, "other", now_ms=T0 + 1000) == 59.0
    v = await scripts.acquire(
        "example.com", "s0", max_connections=5, lease=30.0, rate=None, burst=1.0,
        now_ms=T0 + 10_000,
    )  # fmt: skip
    assert (v.status, v.wait, v.by) == (SUSPENDED, 50.0, "gmail-421")
    assert await grant(scripts, "s0", T0 + 60_001) == GRANTED


async def test_scripts_reload_after_script_flush(scripts: ShapingScripts) -> None:
    assert await grant(scripts, "n0", T0) == GRANTED
    await scripts.client.script_flush()
    assert await grant(scripts, "n1", T0) == GRANTED  # NOSCRIPT → loaded again
    assert await scripts.active("example.com") == 2  # fake-clock leases outlive Redis time


# -- the fallback ----------------------------------------------------------------------------
def shaper(clock: SystemClock) -> Shaper:
    dest = DestinationConfig(
        "example.com", LimitOverrides(max_connections=6, max_rate=30.0, burst=6.0)
    )
    return Shaper(ShapingConfig(destinations=(dest,), builtin=False), clock)


def cluster(port: int, nodes: int = 3) -> ClusterConfig:
    return ClusterConfig(
        node_id="n1", nodes=nodes, redis=RedisTarget("127.0.0.1", port, 0, False),
        timeout=0.2, lease=5.0, reconnect=0.1,
    )  # fmt: skip


async def test_degraded_is_limit_over_nodes_then_shared_again(server: RedisServer) -> None:
    from mtaserver.cluster.client import connect

    clock = SystemClock()
    cfg = cluster(server.port)
    shared = SharedShaping(cfg, shaper(clock), clock, ShapingScripts(connect(cfg), "d:"))
    await shared.start()
    assert shared.redis_up
    assert [await shared.acquire("example.com") for _ in range(6)] == [None] * 6
    assert await shared.acquire("example.com") is not None  # 6 leases across the cluster
    for _ in range(6):
        await shared.release("example.com")
    server.stop()
    # degraded: 6 / 3 = 2 connections, 30/s / 3 = 10/s with a burst of 2
    got = [await shared.acquire("example.com") for _ in range(3)]
    assert got[:2] == [None, None] and got[2] == BLOCKED
    assert not shared.redis_up and shared.degraded_total == 1
    await shared.release("example.com")
    wait = await shared.acquire("example.com")  # burst 2 spent: a token in ~0.1 s
    assert wait is not None and 0 < wait <= 0.1
    assert shared.degraded_total == 1  # one transition, however many asks
    server.start()
    runner = asyncio.create_task(shared.run())
    try:
        await wait_for(lambda: shared.redis_up, 5)
        # the connection opened while degraded is a lease in Redis now
        assert await ShapingScripts(connect(cfg), "d:").active("example.com") == 1
    finally:
        runner.cancel()
        await shared.close()
