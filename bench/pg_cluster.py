"""Relay throughput: three nodes on one PostgreSQL vs one node on SQLite, same machine.

Each run starts real daemons, submits ``n`` one-recipient messages over SMTP (round-robin
over the nodes, one client thread per node), and waits until the aiosmtpd sink has every
recipient; then it checks each arrived exactly once. Figures: messages per second from the
first submission to the last delivery, and the ratio to the SQLite node of the same
invocation. On one 2-core machine the three nodes share the cores, so this measures the
cost of the shared queue, not the gain of more machines (README: what limits a cluster).

    .venv/bin/python -m bench.pg_cluster               # 10,000 messages
    .venv/bin/python -m bench.pg_cluster --n 1000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import smtplib
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.pg import PgServer, migrated, running_server
from tests.support.daemon import Daemon, TestConfig
from tests.support.mxsink import SinkGroup, wait_for

WORKERS = 10


def config(root: Path, i: int, sink_port: int, pg: tuple[PgServer, str] | None) -> TestConfig:
    (root / f"n{i}").mkdir(parents=True)
    cfg = TestConfig(root / f"n{i}", tls=False)
    cfg.set("server", hostname=f"mta{i}.test", log_level="warning")
    cfg.set("delivery", relay_host=f"127.0.0.2:{sink_port}", tls="none",
            max_connections=WORKERS, nameservers=["127.0.0.1:9"])  # fmt: skip
    cfg.set("shaping", poll_interval="20ms")
    cfg.set("shaping.default", max_connections=WORKERS, max_rate="100000/s")
    if pg is not None:
        server, name = pg
        (root / "pgpass").write_text(server.password + "\n")
        cfg.set("cluster", node_id=f"node-{i}")
        cfg.set("storage", backend="postgresql", dsn=server.dsn(name),
                password_file=str(root / "pgpass"), tls="disable", pool_size=8)  # fmt: skip
    return cfg


def submit(cfg: TestConfig, indexes: range | list[int]) -> None:
    host, port = cfg.address("submission", "listen_plain")
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.ehlo()
        for i in indexes:
            s.sendmail("app@sender.test", [f"u{i}@dest.test"], f"Subject: {i}\r\n\r\nb {i}\r\n")


async def run(
    root: Path, nodes: int, n: int, pg: tuple[PgServer, str] | None,
    adjust: Callable[[TestConfig], None] = lambda cfg: None,
) -> float:  # fmt: skip
    """Messages per second through ``nodes`` daemons (each config passed through
    ``adjust``), first submission to last delivery, each delivered exactly once."""
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        cfgs = [config(root, i, sinks.port, pg) for i in range(nodes)]
        for c in cfgs:
            adjust(c)
        daemons = [Daemon(c) for c in cfgs]
        await asyncio.gather(*(asyncio.to_thread(d.start) for d in daemons))
        try:
            t0 = time.perf_counter()
            threads = [
                threading.Thread(target=submit, args=(c, list(range(k, n, nodes))))
                for k, c in enumerate(cfgs)
            ]
            for t in threads:
                t.start()
            await wait_for(lambda: len(sink.messages) >= n, timeout=600)
            elapsed = time.perf_counter() - t0
            for t in threads:
                t.join()
        finally:
            await asyncio.gather(*(asyncio.to_thread(d.stop) for d in daemons))
        counts = collections.Counter(r for m in sink.messages for r in m.rcpt_tos)
        assert len(counts) == n and set(counts.values()) == {1}, "not exactly once"
        return n / elapsed


async def main(n: int) -> None:
    print(f"{'setup':>18} {'msgs':>6} {'msg/s':>7} {'x sqlite':>8}")
    with running_server() as server, tempfile.TemporaryDirectory() as tmp:
        base = await run(Path(tmp) / "sqlite", 1, n, None)
        print(f"{'1 node, SQLite':>18} {n:>6} {base:>7.0f} {1.0:>8.2f}", flush=True)
        for nodes in (1, 3):
            name = f"c{nodes}"
            server.psql(f"CREATE DATABASE {name}")
            await migrated(server.dsn_with_password(name))
            rate = await run(Path(tmp) / name, nodes, n, (server, name))
            label = f"{nodes} node{'s' if nodes > 1 else ''}, PostgreSQL"
            print(f"{label:>18} {n:>6} {rate:>7.0f} {rate / base:>8.2f}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    asyncio.run(main(ap.parse_args().n))
