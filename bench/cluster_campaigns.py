"""Campaign feed rate of 1, 2 and 3 nodes on one PostgreSQL, as ratios to 1 node.

Run: ``.venv/bin/python -m bench.cluster_campaigns [--k 15000] [--nodes 1,2,3] [--deliver]``

For each node count the bench makes a fresh database in a private PostgreSQL server
(``tests/pg.py``, loopback, stopped by PID), starts that many real daemons (``mtaserver
serve``, ``[storage] backend = "postgresql"``, each its own ``[cluster] node_id``), and,
through the CLI as an operator would, adds a user and a template, imports ``k`` matching
contacts and ``k / 4`` others, saves the segment (``plan = pro`` and a date rule on the
imported ``signup`` attribute) and creates a campaign to it. The clock starts when
``mtaserver campaigns start`` returns; every node's feeder claims rows of the one run
(``FOR UPDATE SKIP LOCKED`` and leases) until the run is ``done``. Figures: recipients
queued per second from the start to ``done``, and from the first to the last message
queued (``messages.received_at``: without the feeders' 1 s idle poll), each as a ratio to
1 node of the same invocation, and each node's share of the rows.

Each run is checked: the run's audience and ``queued`` are ``k``, and the queue holds
exactly one recipient for each matching contact (none twice, none missing, no other).

Delivery is paused by default (``max_rate = "1/h"`` per destination: the queue fills,
nothing leaves), so only feeding is measured; the feeder holds back at 20,000 due
recipients, so ``k`` stays below that. ``--deliver`` sends to ``bench.submission``'s
discarding aiosmtpd sink instead (the nodes deliver while they feed, as in service; any
``k``). All nodes and PostgreSQL share this machine's cores: this measures what the shared
run costs and how the claims split, not the gain of more machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import trustme

from bench import submission
from tests.pg import PgServer, migrated, running_server
from tests.support.daemon import Daemon, TestConfig

OWNER = "bench"
IN_FLIGHT = 20_000  # the feeder's max_in_flight: it waits while that many are due
SEGMENT = ('{"and": [{"attr": "plan", "eq": "pro"}, '
           '{"attr": "signup", "gte": {"date": "2026-01-01"}}]}')  # fmt: skip
HTML = "<p>Hello {{contact.name}}, your {{contact.plan}} plan renews soon.</p>" * 8


@dataclass(frozen=True)
class Result:
    nodes: int
    recipients: int
    seconds: float  # start command returned -> run done
    feed_seconds: float  # first message queued -> last message queued
    shares: dict[str, int]  # node id -> rows it claimed and fed

    @property
    def rate(self) -> float:
        return self.recipients / self.seconds

    @property
    def feed_rate(self) -> float:
        return (self.recipients - 1) / self.feed_seconds if self.feed_seconds > 0 else 0.0


def make_csv(path: Path, k: int) -> set[str]:
    """``k`` contacts the segment matches and ``k // 4`` it does not (every fifth row of
    the first ``5 * (k // 4)``: on the free plan, or pro but signed up before the date);
    the matching addresses."""
    want: set[str] = set()
    with path.open("w") as f:
        f.write("email,name,plan,signup\n")
        for i in range(k + k // 4):
            addr = f"user{i}@dest{i % 50}.test"
            if i % 5 == 4 and i < 5 * (k // 4):
                plan, signup = ("free", "2026-03-01") if i % 2 else ("pro", "2025-12-31")
            else:
                plan, signup = "pro", f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}"
                want.add(addr)
            f.write(f"{addr},User {i},{plan},{signup}\n")
    assert len(want) == k, (len(want), k)
    return want


def config(
    root: Path, i: int, server: PgServer, database: str, sink_port: int | None
) -> TestConfig:
    (root / f"n{i}").mkdir(parents=True)
    cfg = TestConfig(root / f"n{i}", tls=False)
    cfg.set("server", hostname=f"mta{i}.test", log_level="warning")
    (root / "pgpass").write_text(server.password + "\n")
    cfg.set("cluster", node_id=f"node-{i}")
    cfg.set("storage", backend="postgresql", dsn=server.dsn(database),
            password_file=str(root / "pgpass"), tls="disable", pool_size=8)  # fmt: skip
    cfg.set("shaping", poll_interval="20ms")
    if sink_port is None:  # paused: every destination waits an hour per message
        cfg.set("delivery", relay_host="127.0.0.1:9", tls="none", nameservers=["127.0.0.1:9"])
        cfg.set("shaping.default", max_rate="1/h")
    else:
        cfg.set("delivery", relay_host=f"127.0.0.1:{sink_port}", tls="none",
                nameservers=["127.0.0.1:9"])  # fmt: skip
        cfg.set("shaping.default", max_connections=10, max_rate="100000/s")
    return cfg


def cli(daemon: Daemon, *args: str, stdin: bytes | None = None) -> str:
    out = daemon.cli(*args, input=stdin)
    if out.returncode != 0:
        raise RuntimeError(f"mtaserver {' '.join(args)}: {out.stderr}")
    return out.stdout


def seed(root: Path, daemon: Daemon, k: int) -> set[str]:
    cli(daemon, "user", "add", OWNER, "--domain", "example.com", "--password-stdin",
        stdin=b"bench password\n")  # fmt: skip
    (root / "t.html").write_text(HTML)
    cli(daemon, "template", "put", "renewal", "--subject", "Renewal for {{contact.name}}",
        "--html", str(root / "t.html"))  # fmt: skip
    want = make_csv(root / "contacts.csv", k)
    cli(daemon, "contacts", "import", str(root / "contacts.csv"), "--user", OWNER)
    cli(daemon, "segments", "save", "target", "--filter", SEGMENT, "--user", OWNER)
    cli(daemon, "campaigns", "create", "renewal", "--template", "renewal", "--from",
        "news@example.com", "--segment", "target", "--user", OWNER)  # fmt: skip
    return want


async def _state(conn: asyncpg.Connection) -> tuple[int, int, str] | None:
    row = await conn.fetchrow("SELECT audience, queued + skipped, status FROM campaign_runs")
    return None if row is None else (int(row[0]), int(row[1]), str(row[2]))


async def run(
    root: Path, server: PgServer, nodes: int, k: int, sink_port: int | None, timeout: float
) -> Result:
    database = f"cc{nodes}"
    server.psql(f"CREATE DATABASE {database}")
    dsn = server.dsn_with_password(database)
    await migrated(dsn)
    daemons = [Daemon(config(root, i, server, database, sink_port)) for i in range(nodes)]
    await asyncio.gather(*(asyncio.to_thread(d.start) for d in daemons))
    conn = await asyncpg.connect(dsn)
    try:
        want = await asyncio.to_thread(seed, root, daemons[0], k)
        await asyncio.to_thread(cli, daemons[0], "campaigns", "start", "renewal", "--user", OWNER)
        t0 = time.perf_counter()
        while (state := await _state(conn)) is None or state[2] != "done":
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"{nodes} nodes: run not done after {timeout:.0f} s: {state}")
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - t0
        if state[:2] != (k, k):
            raise RuntimeError(f"{nodes} nodes: run {state}, expected {k} recipients fed")
        rows = await conn.fetch(
            "SELECT r.address, count(*) FROM recipients r JOIN messages m ON m.id = r.queue_id "
            "WHERE m.campaign = 'renewal' GROUP BY r.address"
        )
        got = {str(a): int(n) for a, n in rows}
        twice = sorted(a for a, n in got.items() if n > 1)
        if set(got) != want or twice:
            raise RuntimeError(
                f"{nodes} nodes: not exactly once: {len(twice)} twice (e.g. {twice[:3]}), "
                f"{len(want - set(got))} missing, {len(set(got) - want)} not in the segment"
            )
        span = await conn.fetchval(
            "SELECT max(received_at) - min(received_at) FROM messages WHERE campaign = 'renewal'"
        )
        shares = {str(n): int(c) for n, c in await conn.fetch(
            "SELECT coalesce(lease_node, '?'), count(*) FROM campaign_recipients "
            "GROUP BY 1 ORDER BY 1")}  # fmt: skip
    finally:
        await conn.close()
        codes = await asyncio.gather(*(asyncio.to_thread(d.stop) for d in daemons))
    if any(codes):
        raise RuntimeError(f"{nodes} nodes: a daemon exited with {codes}")
    return Result(nodes, k, seconds, float(span or 0.0), shares)


async def main(k: int, counts: list[int], deliver: bool, timeout: float) -> list[Result]:
    if not deliver and k >= IN_FLIGHT:
        raise SystemExit(f"--k: below {IN_FLIGHT} with delivery paused (or give --deliver)")
    results: list[Result] = []
    with running_server() as server, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with contextlib.ExitStack() as stack:
            sink_port = None
            if deliver:
                cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
                cert.private_key_pem.write_to_path(str(root / "key.pem"))
                cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
                sink_port, _ = stack.enter_context(submission.server_process("sink", root))
            mode = "delivering to a discarding sink" if deliver else "delivery paused"
            print(f"campaign feed rate: {k} recipients of {k + k // 4} contacts, one segment, "
                  f"{mode}; {os.cpu_count()} cores shared by the nodes and PostgreSQL")  # fmt: skip
            print(f"{'nodes':>5} {'start->done s':>13} {'rcpt/s':>7} {'x 1 node':>8} "
                  f"{'first->last rcpt/s':>18} {'x 1 node':>8}  rows per node")  # fmt: skip
            for nodes in counts:
                r = await run(root / f"c{nodes}", server, nodes, k, sink_port, timeout)
                results.append(r)
                base = results[0]
                share = ", ".join(f"{n} {c}" for n, c in r.shares.items())
                print(f"{nodes:>5} {r.seconds:>13.1f} {r.rate:>7.0f} {r.rate / base.rate:>7.2f}x "
                      f"{r.feed_rate:>18.0f} {r.feed_rate / base.feed_rate:>7.2f}x  {share}",
                      flush=True)  # fmt: skip
            print(f"each run: audience = queued = {k}, every matching contact queued exactly once")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--k", type=int, default=15_000, help="recipients in the segment")
    ap.add_argument("--nodes", default="1,2,3", help="node counts, the first is the baseline")
    ap.add_argument("--deliver", action="store_true", help="deliver to a discarding sink")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up on one run")
    a = ap.parse_args()
    asyncio.run(main(a.k, [int(x) for x in a.nodes.split(",")], a.deliver, a.timeout))
