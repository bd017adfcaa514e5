"""Cluster-wide shaping, measured where a provider would see it: at the MX.

Three mtaserver daemons (real processes) on one PostgreSQL database and one Redis deliver
to one sink. Two destinations, each limited to ``CONN`` connections: ``conn.test`` is slow
(the sink spends ``SLOW`` s in DATA, so its connection limit binds) and ``rate.test`` is
fast with ``RATE`` messages a minute (so its rate binds). Unshared, each node would use
each limit whole: three times the connections and the rate.

One run, in phases: shared limits hold across the nodes; Redis killed by PID → delivery
goes on at ``limit / nodes`` per node, logged and counted; Redis back → the shared limits
again; ``kill -9`` of a node → its connection leases stop counting at their expiry and the
others get the full limit; a node with another ``[server] secret_file`` is refused.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import smtplib
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import yaml

from mtaserver.cli.cluster import render
from mtaserver.clock import SystemClock
from mtaserver.cluster.client import ShapingScripts
from mtaserver.cluster.registry import NodeRegistry, fingerprint, fingerprints, status
from mtaserver.config.cluster import ClusterConfig, RedisTarget
from mtaserver.errors import ConfigError
from tests.pg import PgServer, migrated, pg_dsn, pg_server  # noqa: F401
from tests.redis_server import RedisServer
from tests.support.daemon import Daemon, TestConfig, free_port
from tests.support.meteredsink import MeteredSink
from tests.support.mxsink import eventually, wait_for

CONN = 5  # connections per destination, cluster-wide
RATE = 600  # rate.test messages per minute, cluster-wide (the 100/min works too)
SLOW = 0.4  # seconds the sink spends in DATA for conn.test
LEASE = 2.0  # [cluster] lease: a dead node's connections count at most this long
NODES = 3
WINDOW = 2.5  # seconds per measuring window
PREFIX = "mtaserver:"


def node_config(
    tmp_path: Path, i: int, pg: PgServer, dsn: str, redis_url: str, sink_port: int, secret: Path
) -> TestConfig:
    (tmp_path / "pgpass").write_text(pg.password + "\n")
    (tmp_path / f"node{i}").mkdir(exist_ok=True)
    cfg = TestConfig(tmp_path / f"node{i}", tls=False)
    cfg.set("server", hostname=f"mta{i}.test", secret_file=str(secret), log_level="info")
    cfg.set(
        "cluster", node_id=f"node-{i}", redis=redis_url, nodes=NODES, timeout="500ms",
        lease=f"{LEASE}s", heartbeat="500ms", reconnect="200ms",
    )  # fmt: skip
    cfg.set(
        "storage", backend="postgresql", dsn=dsn.replace(f":{pg.password}@", "@"),
        password_file=str(tmp_path / "pgpass"), tls="disable", pool_size=4,
    )  # fmt: skip
    cfg.set(
        "delivery", relay_host=f"127.0.0.2:{sink_port}", tls="none", max_connections=4 * CONN,
        lease="5s", nameservers=["127.0.0.1:9"],
    )  # fmt: skip
    cfg.set("admin", listen=f"127.0.0.1:{free_port()}", metrics_auth="none")  # /metrics
    cfg.set("shaping", poll_interval="20ms")
    cfg.set("shaping.conn", domains=["conn.test"], max_connections=CONN, max_rate="unlimited")
    cfg.set("shaping.rate", domains=["rate.test"], max_connections=CONN, max_rate=f"{RATE}/min")
    return cfg


def submit(cfgs: list[TestConfig], n: int) -> None:
    """n messages to each destination, round-robin over the nodes."""
    conns = []
    for cfg in cfgs:
        s = smtplib.SMTP(*cfg.address("submission", "listen_plain"), timeout=30)
        s.ehlo()
        conns.append(s)
    try:
        for i in range(n):
            for dom in ("conn.test", "rate.test"):
                body = f"Subject: {i}\r\nFrom: app@sender.test\r\n\r\nbody {i}\r\n"
                conns[i % len(conns)].sendmail("app@sender.test", [f"u{i}@{dom}"], body)
    finally:
        for s in conns:
            s.quit()


def metric(cfg: TestConfig, name: str) -> float:
    """One sample of the node's /metrics, as Prometheus would scrape it."""
    host, port = cfg.address("admin", "listen")
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, (name, text[:3000])
    return float(values[0])


def loop_time() -> float:
    return asyncio.get_running_loop().time()


async def window(sink: MeteredSink) -> tuple[int, int, int]:
    """Measure one window: (peak conn.test sessions, peak rate.test sessions, rate.test
    messages delivered in it)."""
    sink.reset_peaks()
    t0 = loop_time()
    await asyncio.sleep(WINDOW)  # the measuring window itself: what the sink sees in it
    return sink.peak["conn.test"], sink.peak["rate.test"], sink.count("rate.test", t0, t0 + WINDOW)


def rate_bound() -> float:
    """Most rate.test messages a window may hold: the rate over the window, the bucket's
    burst per node, and the grants just before the window still in flight."""
    return RATE / 60 * (WINDOW + 0.3) + NODES + 1


async def wait_logged(nodes: list[Daemon], event: str, times: int = 1, timeout: float = 30) -> None:
    await wait_for(lambda: all(d.log().count(f"event={event}") >= times for d in nodes), timeout)


async def test_shared_limits_across_three_nodes_then_degraded_then_shared_again(
    tmp_path: Path,
    pg_server: PgServer,  # noqa: F811
    pg_dsn: str,  # noqa: F811
) -> None:
    await migrated(pg_dsn)
    secret = tmp_path / "secret.key"
    secret.write_text("ab" * 32 + "\n")
    redis = RedisServer(tmp_path).start()
    client = aioredis.Redis(port=redis.port, decode_responses=True)
    scripts = ShapingScripts(client, PREFIX)
    async with MeteredSink({"conn.test": SLOW}) as sink:
        cfgs = [
            node_config(tmp_path, i, pg_server, pg_dsn, redis.url, sink.port, secret)
            for i in range(NODES)
        ]
        nodes = [Daemon(c, ready_timeout=60) for c in cfgs]  # a loaded CI machine
        try:
            await asyncio.gather(*(asyncio.to_thread(d.start) for d in nodes))
            feeding = asyncio.create_task(asyncio.to_thread(submit, cfgs, 260))
            await wait_for(lambda: len(sink.delivered("conn.test")) >= 2 * CONN, 60)

            # 1. Shared: at most CONN sessions across the nodes, and reached (the limit
            #    binds); rate.test at RATE across the nodes (unshared it would be 3x).
            conn, rconn, sent = await window(sink)
            assert conn == CONN, f"shared: peak {conn} conn.test sessions"
            assert rconn <= CONN
            assert RATE / 60 * WINDOW * 0.5 <= sent <= rate_bound(), f"shared: {sent} sent"

            # 2. Redis killed by PID: each node alone at CONN // NODES and RATE / NODES.
            redis.stop(kill=True)
            await wait_logged(nodes, "cluster_degraded")
            assert await asyncio.to_thread(metric, cfgs[1], "mtaserver_cluster_redis_up") == 0
            # >= 1: on a loaded machine a call slower than [cluster] timeout counts too.
            assert await asyncio.to_thread(metric, cfgs[1], "mtaserver_cluster_degraded_total") >= 1
            await asyncio.sleep(SLOW + 0.2)  # sessions granted before the outage finish
            conn, rconn, sent = await window(sink)
            share = max(1, CONN // NODES) * NODES
            assert 1 <= conn <= share, f"degraded: peak {conn} conn.test sessions"
            assert rconn <= share
            assert 0 < sent <= rate_bound(), f"degraded: {sent} sent"

            # 3. Redis back (empty, same port): the shared limits again.
            redis.start()
            await wait_logged(nodes, "cluster_shared", times=2)
            assert await asyncio.to_thread(metric, cfgs[1], "mtaserver_cluster_redis_up") == 1
            conn, rconn, sent = await window(sink)
            assert conn == CONN, f"shared again: peak {conn} conn.test sessions"
            assert sent <= rate_bound(), f"shared again: {sent} sent"
            await feeding
            # Counted: each node fell back once, as its heartbeat reports (the numbers of
            # mtaserver_cluster_degraded_total), one secret for all.
            st = await asyncio.to_thread(nodes[1].cli, "cluster", "status", "--json")
            assert st.returncode == 0, st.stdout + st.stderr
            listed = json.loads(st.stdout)["nodes"]
            assert [n["node_id"] for n in listed] == ["node-0", "node-1", "node-2"]
            assert all(n["alive"] and n["shaping"]["degraded_total"] >= 1 for n in listed)
            assert len({n["fingerprint"] for n in listed}) == 1
            assert all(not n["secret_differs"] for n in listed)

            # 4. kill -9 of node 0 while it holds conn.test leases: they count until their
            #    expiry, then the other two get all CONN connections.
            key = scripts.keys.leases("conn")

            async def node0_leases() -> list[tuple[str, float]]:
                got = await client.zrange(key, 0, -1, withscores=True)
                return [(m, s) for m, s in got if m.startswith("node-0:")]

            assert await eventually(node0_leases, bool, 30), "node 0 holds no lease"
            await asyncio.to_thread(nodes[0].kill)
            expiry = max(s for _, s in await node0_leases())  # ms, Redis time
            assert await eventually(lambda: redis_ms(client, expiry + 300), bool, LEASE + 5)
            live = await client.zrangebyscore(key, f"({await redis_now(client)}", "+inf")
            assert not [m for m in live if m.startswith("node-0:")], live
            conn, _, _ = await window(sink)
            assert conn == CONN, f"after the kill: peak {conn} conn.test sessions"

            # 5. A node with another secret is refused at start, naming the key.
            other = tmp_path / "other.key"
            other.write_text("cd" * 32 + "\n")
            bad = node_config(tmp_path, 7, pg_server, pg_dsn, redis.url, sink.port, other)
            try:
                await asyncio.to_thread(Daemon(bad, ready_timeout=60).start)
                refused = ""
            except RuntimeError as exc:
                refused = str(exc)
            assert "server.secret_file" in refused and "differs" in refused, refused[-2000:]
        finally:
            codes = await asyncio.gather(*(asyncio.to_thread(d.stop) for d in nodes[1:]))
            redis.stop()
            await client.aclose()
        assert codes == [0, 0], [d.log()[-3000:] for d in nodes[1:]]
    # At least once: only what node 0 had in flight at its kill may have arrived twice.
    got = sink.delivered()
    assert len(got) - len(set(got)) <= 2 * CONN


async def redis_now(client: aioredis.Redis) -> int:
    t = await client.time()
    return int(t[0]) * 1000 + int(t[1]) // 1000


async def redis_ms(client: aioredis.Redis, at: float) -> bool:
    return await redis_now(client) >= at


async def test_a_secret_mismatch_met_later_is_logged_and_shown(tmp_path: Path) -> None:
    """Two nodes that meet only after both started (Redis was down at one's start): the
    beat still goes out, the error is logged, and the status flags the odd one out; a
    node joining strictly with the odd secret is refused and writes nothing."""
    clock = SystemClock()
    with RedisServer(tmp_path) as r:
        client = aioredis.Redis(port=r.port, decode_responses=True)
        scripts = ShapingScripts(client, PREFIX)

        def node(name: str, secret: bytes) -> NodeRegistry:
            cfg = ClusterConfig(node_id=name, redis=RedisTarget("127.0.0.1", r.port, 0, False))
            fp = fingerprint(secret)
            return NodeRegistry(cfg, scripts, clock, version="t", fingerprint=fp)

        try:
            a, b, c = node("a", b"one"), node("b", b"one"), node("c", b"two")
            assert await a.beat() == "" and await b.beat() == ""
            with pytest.raises(ConfigError, match=r"server\.secret_file: fingerprint"):
                await c.join()
            assert [n.node_id for n in await status(scripts, 5.0)] == ["a", "b"]
            assert await c.beat() in ("a", "b")  # not strict: written, and the clash named
            listed = await status(scripts, 5.0)
            assert [(n.node_id, n.secret_differs) for n in listed] == [
                ("a", False), ("b", False), ("c", True),
            ]  # fmt: skip
            assert "DIFFERS" in render(listed, clock.now())
            assert len(fingerprint(b"one")) == 16 and fingerprint(b"one") != fingerprint(b"two")
            assert b"one".hex() not in json.dumps([n.as_dict() for n in listed])
            # Per secret: only the ones both nodes use count (d signs no links).
            v, t1, t2 = b"verp-key", b"links-1", b"links-2"
            d = NodeRegistry(
                ClusterConfig(node_id="d"), scripts, clock, version="t",
                fingerprint=fingerprints({"server.secret_file": v}),
            )  # fmt: skip
            e = NodeRegistry(
                ClusterConfig(node_id="e"), scripts, clock, version="t",
                fingerprint=lambda: fingerprints({"server.secret_file": v,
                                                  "tracking.secret_file": t1}),
                source="e.toml",
            )  # fmt: skip
            f = NodeRegistry(
                ClusterConfig(node_id="f"), scripts, clock, version="t",
                fingerprint=fingerprints({"server.secret_file": v, "tracking.secret_file": t2}),
                source="f.toml",
            )  # fmt: skip
            await client.delete(scripts.keys.nodes, scripts.keys.fingerprints)
            await d.join()
            await e.join()  # the same VERP key; tracking only on e
            with pytest.raises(ConfigError, match=r"^f\.toml: tracking\.secret_file: "):
                await f.join()
        finally:
            await client.aclose()


def test_the_compose_try_out_is_one_cluster_and_its_configs_pass_check_config(
    tmp_path: Path,
) -> None:
    """config/cluster/compose.yaml: every node service runs ``serve`` on its own node file,
    mounted where the command says; the node files pass ``mtaserver check-config`` as the
    operator runs it in the directory the recipe fills (secret.key, pg.password), and they
    form one cluster: distinct node ids, one secret file, one database, one Redis, and
    ``nodes`` = the number of node services."""
    root = Path(__file__).resolve().parents[1]
    here = root / "config" / "cluster"
    compose = yaml.safe_load((here / "compose.yaml").read_text())
    services = compose["services"]
    nodes = {n: s for n, s in services.items() if s.get("command", [None])[0] == "serve"}
    assert len(nodes) == NODES and {"postgres", "redis"} <= set(services)
    for name, svc in nodes.items():
        assert set(svc["depends_on"]) >= {"postgres", "redis"}, name
        assert "./:/etc/mtaserver:ro" in svc["volumes"], name
    for f in ("node1.toml", "node2.toml", "node3.toml", "Dockerfile"):
        shutil.copy(here / f, tmp_path / f)
    (tmp_path / "secret.key").write_text("ab" * 32 + "\n")  # the recipe's openssl rand
    (tmp_path / "pg.password").write_text("try-out\n")
    runs = []
    for name, svc in sorted(nodes.items()):
        path = svc["command"][svc["command"].index("-c") + 1]
        assert path.startswith("/etc/mtaserver/"), path
        local = tmp_path / Path(path).name
        cmd = [sys.executable, "-m", "mtaserver", "check-config", "-c", str(local)]
        runs.append((name, local, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE, text=True,
                                                   cwd=tmp_path)))  # fmt: skip
    seen: list[dict[str, dict[str, object]]] = []
    for name, local, proc in runs:  # all three at once, as three operators would
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (name, out, err)
        assert out.startswith("config ok:"), out
        seen.append(tomllib.loads(local.read_text()))
    clusters = [c["cluster"] for c in seen]
    assert len({c["node_id"] for c in clusters}) == NODES
    assert {c["nodes"] for c in clusters} == {NODES}
    assert len({c["redis"] for c in clusters}) == 1
    assert len({c["storage"]["dsn"] for c in seen}) == 1  # type: ignore[index]
    assert {c["server"]["secret_file"] for c in seen} == {"secret.key"}  # type: ignore[index]
    redis_host = str(clusters[0]["redis"]).split("//")[1].split(":")[0]
    pg_host = str(seen[0]["storage"]["dsn"]).split("@")[1].split(":")[0]  # type: ignore[index]
    assert {redis_host, pg_host} <= set(services)


def test_the_permit_benchmark_runs() -> None:
    """bench.cluster_shaping's permit part on a few permits (smoke, not a figure)."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "bench.cluster_shaping", "--permits", "200", "--concurrency", "4",
         "--n", "0"],
        capture_output=True, text=True, timeout=120, cwd=root, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [line.rsplit(None, 4) for line in out.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["local shaper", "shared (Redis)"] * 2
    assert all(float(r[2]) > 0 for r in rows)
