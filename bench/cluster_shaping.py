"""What shared shaping in Redis costs: per permit, and for three nodes end to end.

1. **Per delivery.** A delivery asks for a permit and gives it back. With shared shaping
   that is two Redis round trips (the acquire script, the release); the local shaper does
   it in memory. Both are run here for ``--permits`` permits, one at a time (latency) and
   from ``--concurrency`` tasks at once (throughput of one node's event loop), against a
   private redis-server on loopback; the ratio is shared / local.
2. **Three nodes.** Real daemons on one PostgreSQL, ``--n`` messages submitted round-robin
   over SMTP, delivered to one aiosmtpd sink, the same connections in every run (10 per
   node; 30 shared when shared) and no rate that binds, so this measures the cost, not the
   limit: without ``[cluster] redis`` (idle connections pooled), with it
   (no idle pool: a pooled idle connection holds no shared lease), and without it but with
   the pool off too, which splits the cost between Redis and the lost connection reuse.

    .venv/bin/python -m bench.cluster_shaping                 # 20,000 permits, 3,000 msgs
    .venv/bin/python -m bench.cluster_shaping --permits 2000 --n 300
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.pg_cluster import WORKERS, run
from mtaserver.clock import SystemClock
from mtaserver.cluster.client import ShapingScripts, connect
from mtaserver.cluster.shared import SharedShaping
from mtaserver.config.cluster import ClusterConfig, RedisTarget
from mtaserver.config.shaping import DestinationConfig, LimitOverrides, ShapingConfig
from mtaserver.shaper import Shaper
from tests.pg import PgServer, migrated, running_server
from tests.redis_server import RedisServer
from tests.support.daemon import TestConfig

DEST = "bench.test"
NODES = 3


def _shaper(clock: SystemClock) -> Shaper:
    limits = LimitOverrides(max_connections=100_000, max_rate=1e9, burst=1e9)
    return Shaper(
        ShapingConfig(destinations=(DestinationConfig(DEST, limits),), builtin=False), clock
    )


async def _timed(permits: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> float:
    """Seconds for ``permits`` calls of ``one`` spread over ``concurrency`` tasks."""
    per = permits // concurrency

    async def task() -> None:
        for _ in range(per):
            await one()

    t0 = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(concurrency)))
    return time.perf_counter() - t0


async def permits(redis: RedisServer, n: int, concurrency: int) -> None:
    clock = SystemClock()
    local = _shaper(clock)
    cfg = ClusterConfig(
        node_id="bench", nodes=NODES, redis=RedisTarget("127.0.0.1", redis.port, 0, False)
    )
    shared = SharedShaping(cfg, _shaper(clock), clock, ShapingScripts(connect(cfg), "bench:"))
    await shared.start()
    assert shared.redis_up

    async def local_one() -> None:
        assert local.acquire(DEST) is None
        local.release(DEST)

    async def shared_one() -> None:
        assert await shared.acquire(DEST) is None
        await shared.release(DEST)

    head = f"{'permit (acquire+release)':<26} {'tasks':>5} {'permits/s':>10} {'us each':>8}"
    print(f"{head} {'x local':>8}")
    for tasks in (1, concurrency):
        base = await _timed(n, tasks, local_one)
        calls0 = shared.calls
        took = await _timed(n, tasks, shared_one)
        assert shared.calls - calls0 == 2 * (n // tasks) * tasks  # two round trips each
        for label, t in (("local shaper", base), ("shared (Redis)", took)):
            done = n // tasks * tasks
            print(
                f"{label:<26} {tasks:>5} {done / t:>10.0f} {t / done * 1e6:>8.1f} {t / base:>8.1f}",
                flush=True,
            )
    await shared.close()


async def relay(
    root: Path, n: int, pg: tuple[PgServer, str], redis_url: str | None, pool: bool
) -> float:
    """Messages per second through three nodes, first submission to last delivery."""
    (root / "secret.key").parent.mkdir(parents=True, exist_ok=True)
    (root / "secret.key").write_text("ab" * 32 + "\n")  # one secret for the cluster

    def adjust(c: TestConfig) -> None:
        c.set("server", secret_file=str(root / "secret.key"))
        if redis_url:  # (nodes without redis would split the limits: not this cost)
            c.set("cluster", redis=redis_url, nodes=NODES)
            # The same connections in all: WORKERS per node, NODES * WORKERS shared.
            c.set("shaping.default", max_connections=NODES * WORKERS)
        if not pool:
            c.set("delivery", idle_timeout="0s")

    return await run(root, NODES, n, pg, adjust)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as redis:
        await permits(redis, args.permits, args.concurrency)
        if args.n <= 0:
            return
        print(f"\n{'3 nodes on PostgreSQL':<34} {'msgs':>6} {'msg/s':>7} {'x local':>8}")
        with running_server() as server:
            base = 0.0
            runs = (
                ("local shaper, idle pool", None, True),
                ("shared in Redis, no idle pool", redis.url, False),
                ("local shaper, no idle pool", None, False),
            )
            for k, (label, url, pool) in enumerate(runs):
                name = f"r{k}"
                server.psql(f"CREATE DATABASE {name}")
                await migrated(server.dsn_with_password(name))
                rate = await relay(Path(tmp) / name, args.n, (server, name), url, pool)
                base = base or rate
                print(f"{label:<34} {args.n:>6} {rate:>7.0f} {rate / base:>8.2f}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--permits", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--n", type=int, default=3000, help="messages through three nodes (0: skip)")
    asyncio.run(main(ap.parse_args()))
