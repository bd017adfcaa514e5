"""``mtaserver cluster status``: the nodes in the registry, their age and whether alive."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING

from mtaserver.cli._common import add_config_arg, config_from
from mtaserver.clock import SystemClock
from mtaserver.errors import ConfigError

if TYPE_CHECKING:
    from mtaserver.cluster.registry import NodeStatus


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cluster", help="the nodes sharing [cluster] redis")
    s = p.add_subparsers(dest="cluster_cmd", required=True, metavar="COMMAND")
    st = s.add_parser(
        "status",
        help="list the nodes: id, version, last heartbeat, alive, queue counts",
        description="Reads the node registry in [cluster] redis. A node is alive while its "
        "last heartbeat is younger than 3 x [cluster] heartbeat. SECRET is the fingerprint "
        "of the node's [server] secret_file (DIFFERS: not the one the cluster shares); "
        "DEGRADED counts its fallbacks to limit/nodes. Exit 1 when Redis does not answer, "
        "a listed node is not alive or its secret differs.",
    )
    add_config_arg(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=run_status)


def render(nodes: list[NodeStatus], now: float) -> str:
    if not nodes:
        return "no nodes in the registry"
    rows = [("NODE", "VERSION", "UP", "LAST SEEN", "STATE", "SECRET", "DEGRADED", "QUEUE")]
    for n in nodes:
        counts = " ".join(f"{k}={v}" for k, v in sorted(n.counts.items()))
        up = f"{max(0.0, now - n.started_at):.0f}s" if n.started_at else "-"
        short = "/".join(x.rpartition("=")[2] for x in n.fingerprint.split(",")) or "-"
        secret = "DIFFERS" if n.secret_differs else short  # server[/tracking] fingerprints
        degraded = str(n.shaping.get("degraded_total", "-"))
        rows.append((n.node_id, n.version, up, f"{n.age:.1f}s ago",
                     "alive" if n.alive else "STALE", secret, degraded, counts))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    )


def run_status(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    c = cfg.cluster
    if c is None or c.redis is None:
        raise ConfigError(f"{cfg.source.name}: cluster.redis: not set (no node registry)")
    # Here, not at the top: the redis client costs every CLI call ~0.1 s of imports.
    from mtaserver.cluster.client import RedisDown
    from mtaserver.cluster.registry import read_status

    try:
        nodes = asyncio.run(read_status(c))
    except RedisDown as exc:
        print(f"mtaserver: cluster.redis: {c.redis.host}:{c.redis.port}: {exc}")
        return 1
    if args.json:
        print(json.dumps({"nodes": [n.as_dict() for n in nodes]}, indent=2, sort_keys=True))
    else:
        print(render(nodes, SystemClock().now()))
    return 0 if all(n.alive and not n.secret_differs for n in nodes) else 1
