"""The node registry: each node writes a heartbeat into Redis; anyone can list them.

A heartbeat records the node id, version, start time (the node's wall clock) and the queue
counts the node knows, with ``last_seen`` taken from Redis's clock, so a node's age is
measured by one clock for all. A node is *alive* while its last heartbeat is younger than
three heartbeat intervals; a stale entry stays listed for a day (so an operator sees which
node went away) and is then dropped.

**One secret for all.** A VERP return path (or a token) signed by one node is checked by
whichever node the reply reaches, so every node must hold the same ``[server]
secret_file``. Each heartbeat carries the secret's *fingerprint* — an HMAC of a fixed
label keyed with the secret, never the secret — and a node whose fingerprint differs from
an alive node's refuses to start (:meth:`NodeRegistry.join`). One that only meets the
others later (Redis was down at its start) logs ``event=cluster_secret_mismatch`` and is
flagged by ``mtaserver cluster status``.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

from mtaserver.clock import Clock
from mtaserver.cluster.client import RedisDown, ShapingScripts, connect, guarded
from mtaserver.config.cluster import ClusterConfig
from mtaserver.errors import ConfigError
from mtaserver.log import get_logger, kv

log = get_logger("cluster")

KEEP = 86400.0  # how long a silent node stays listed
MISSED = 3  # heartbeats a node may miss before it is shown as not alive

FINGERPRINT_LABEL = b"mtaserver cluster: server.secret_file fingerprint v1"

Counts = Callable[[], Awaitable[Mapping[str, int]]]
Shaping = Callable[[], Mapping[str, int]]


def fingerprint(secret: bytes) -> str:
    """What nodes compare: HMAC-SHA256(secret, fixed label), 16 hex digits (64 bits).

    Equal secrets give equal fingerprints; the secret cannot be recovered from it."""
    return hmac.new(secret, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]


def fingerprints(secrets: Mapping[str, bytes]) -> str:
    """``key=fp,key=fp``: one fingerprint per secret the nodes must share, by config key
    (``server.secret_file``, and ``tracking.secret_file`` where links are signed)."""
    return ",".join(f"{key}={fingerprint(value)}" for key, value in secrets.items())


def _parts(value: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in value.split(",") if "=" in p)


def differing(ours: str, theirs: str) -> list[str]:
    """The config keys whose fingerprints differ, compared as the heartbeat script does:
    only the secrets both use (a node without tracking signs no links); a fingerprint
    without keys whole."""
    a, b = _parts(ours), _parts(theirs)
    if not a or not b:
        return ["server.secret_file"] if ours != theirs else []
    return sorted(k for k in a.keys() & b.keys() if a[k] != b[k])


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: str
    version: str
    started_at: float  # unix time, the node's clock
    age: float  # seconds since its last heartbeat, Redis's clock
    alive: bool
    counts: Mapping[str, int]
    fingerprint: str = ""
    shaping: Mapping[str, int] = field(default_factory=dict)  # degraded_total, errors, held
    secret_differs: bool = False  # its fingerprint is not the one most alive nodes share

    def as_dict(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "version": self.version,
            "started_at": self.started_at,
            "age": round(self.age, 3),
            "alive": self.alive,
            "counts": dict(self.counts),
            "fingerprint": self.fingerprint,
            "shaping": dict(self.shaping),
            "secret_differs": self.secret_differs,
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
        fingerprint: str | Callable[[], str] = "",  # a callable: read at the first beat
        shaping: Shaping | None = None,
        source: str = "config",
    ) -> None:
        self._cfg = cfg
        self._scripts = scripts
        self._clock = clock
        self._version = version
        self._counts = counts
        self._secrets = fingerprint
        self._fingerprint = fingerprint if isinstance(fingerprint, str) else ""
        self._shaping = shaping
        self._source = source  # the config file's name, for the operator's error
        self._started = clock.now()
        self._conflict = ""
        self.beats = 0

    async def beat(self, *, strict: bool = False) -> str:
        """Write the heartbeat; returns the id of an alive node with another secret, or ""."""
        if not isinstance(self._secrets, str) and not self._fingerprint:
            self._fingerprint = self._secrets()
        counts: Mapping[str, int] = {}
        if self._counts is not None:
            counts = await self._counts()
        shaping = dict(self._shaping()) if self._shaping is not None else {}
        got = await self._scripts.heartbeat(
            self._cfg.node_id, self._version, self._started, json.dumps(dict(counts)), KEEP,
            fingerprint=self._fingerprint, alive=MISSED * self._cfg.heartbeat, strict=strict,
            shaping=json.dumps(shaping),
        )  # fmt: skip
        if got.conflict and strict:
            keys = ", ".join(differing(self._fingerprint, got.theirs) or ["server.secret_file"])
            raise ConfigError(
                f"{self._source}: {keys}: fingerprint {self._fingerprint} differs from "
                f"{got.theirs} of node {got.conflict!r}: every node of the cluster must use "
                "the same secret (a VERP return path or a link signed by one node is checked "
                "by another); copy that node's file here"
            )
        if got.conflict != self._conflict:
            if got.conflict:
                log.error(kv(event="cluster_secret_mismatch", node=self._cfg.node_id,
                             fingerprint=self._fingerprint, other=got.conflict,
                             theirs=got.theirs))  # fmt: skip
            self._conflict = got.conflict
        self.beats += 1
        return got.conflict

    async def join(self) -> None:
        """The first heartbeat, at start: refuse (ConfigError) when an alive node's secret
        differs; written only when it does not, in one step with the check."""
        await self.beat(strict=True)

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
        await guarded(self._scripts.client.hdel(keys.fingerprints, self._cfg.node_id))
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
        out.append(
            NodeStatus(
                node_id=str(node_id),
                version=str(h.get("version", "")),
                started_at=float(h.get("started_at") or 0.0),
                age=age,
                alive=age < MISSED * heartbeat,
                counts=_ints(h.get("counts")),
                fingerprint=str(h.get("fingerprint", "")),
                shaping=_ints(h.get("shaping")),
            )
        )
    return _flag_secrets(out)


def _ints(raw: str | None) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads(raw or "{}").items()}
    except (ValueError, AttributeError, TypeError):
        return {}


def _flag_secrets(nodes: list[NodeStatus]) -> list[NodeStatus]:
    """Mark the nodes whose fingerprint is not the cluster's: the one most alive nodes
    carry (a tie goes to the longest-running node's)."""
    alive = [n for n in nodes if n.alive and n.fingerprint]
    if not alive:
        return nodes
    votes = collections.Counter(n.fingerprint for n in alive)
    first = min(alive, key=lambda n: n.started_at).fingerprint
    top = max(votes.values())
    cluster = first if votes[first] == top else votes.most_common(1)[0][0]
    return [
        replace(n, secret_differs=True)
        if n.fingerprint and differing(n.fingerprint, cluster)
        else n
        for n in nodes
    ]


async def read_status(cfg: ClusterConfig) -> list[NodeStatus]:
    """Connect, list the registry, close: what ``cluster status`` and ``/cluster`` show."""
    scripts = ShapingScripts(connect(cfg), cfg.prefix)
    try:
        return await status(scripts, cfg.heartbeat)
    finally:
        await scripts.client.aclose()
