"""The node registry: each node writes a heartbeat into Redis; anyone can list them.

A heartbeat records the node id, version, start time (the node's wall clock) and the queue
counts the node knows, with ``last_seen`` taken from Redis's clock, so a node's age is
measured by one clock for all. A node is *alive* while its last heartbeat is younger than
three heartbeat intervals; a stale entry stays listed for a day (so an operator sees which
node went away) and is then dropped.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from mtaserver.clock import Clock
from mtaserver.cluster.client import RedisDown, ShapingScripts, connect, guarded
from mtaserver.config.cluster import ClusterConfig
from mtaserver.log import get_logger, kv

log = get_logger("cluster")

KEEP = 86400.0  # how long a silent node stays listed
MISSED = 3  # heartbeats a node may miss before it is shown as not alive

Counts = Callable[[], Awaitable[Mapping[str, int]]]


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: str
    version: str
    started_at: float  # unix time, the node's clock
    age: float  # seconds since its last heartbeat, Redis's clock
    alive: bool
    counts: Mapping[str, int]

    def as_dict(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "version": self.version,
            "started_at": self.started_at,
            "age": round(self.age, 3),
            "alive": self.alive,
            "counts": dict(self.counts),
        }


class NodeRegistry:
    def __init__(
        self,
        cfg: ClusterConfig,
        scripts: ShapingScripts,
        clock: Clock,
        *,
        version: str,
        counts: Counts | None = None,
    ) -> None:
        self._cfg = cfg
        self._scripts = scripts
        self._clock = clock
        self._version = version
        self._counts = counts
        self._started = clock.now()
        self.beats = 0

    async def beat(self) -> None:
        counts: Mapping[str, int] = {}
        if self._counts is not None:
            counts = await self._counts()
        await self._scripts.heartbeat(
            self._cfg.node_id, self._version, self._started, json.dumps(dict(counts)), KEEP
        )
        self.beats += 1

    async def run(self) -> None:
        """Heartbeat every ``[cluster] heartbeat``; a failed one is logged on change only."""
        failing = False
        while True:
            try:
                await self.beat()
                if failing:
                    log.info(kv(event="heartbeat_resumed", node=self._cfg.node_id))
                failing = False
            except RedisDown as exc:
                if not failing:
                    log.warning(kv(event="heartbeat_failed", node=self._cfg.node_id,
                                   error=str(exc)))  # fmt: skip
                failing = True
            await self._clock.sleep(self._cfg.heartbeat)

    async def forget(self) -> None:
        """Remove this node from the registry (a clean shutdown)."""
        keys = self._scripts.keys
        await guarded(self._scripts.client.zrem(keys.nodes, self._cfg.node_id))
        await guarded(self._scripts.client.delete(keys.node(self._cfg.node_id)))


async def status(scripts: ShapingScripts, heartbeat: float) -> list[NodeStatus]:
    """Every node in the registry, by id."""
    client, keys = scripts.client, scripts.keys
    t = await guarded(client.time())
    now_ms = int(t[0]) * 1000 + int(t[1]) // 1000
    ids = sorted(await guarded(client.zrange(keys.nodes, 0, -1)))
    out: list[NodeStatus] = []
    for node_id in ids:
        h = await guarded(client.hgetall(keys.node(str(node_id))))
        if not h:
            continue
        age = max(0.0, (now_ms - int(float(h.get("last_seen", 0)))) / 1000.0)
        try:
            counts = {str(k): int(v) for k, v in json.loads(h.get("counts") or "{}").items()}
        except (ValueError, AttributeError):
            counts = {}
        out.append(
            NodeStatus(
                node_id=str(node_id),
                version=str(h.get("version", "")),
                started_at=float(h.get("started_at") or 0.0),
                age=age,
                alive=age < MISSED * heartbeat,
                counts=counts,
            )
        )
    return out


async def read_status(cfg: ClusterConfig) -> list[NodeStatus]:
    """Connect, list the registry, close: what ``cluster status`` and ``/cluster`` show."""
    scripts = ShapingScripts(connect(cfg), cfg.prefix)
    try:
        return await status(scripts, cfg.heartbeat)
    finally:
        await scripts.client.aclose()
