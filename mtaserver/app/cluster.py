"""``[cluster]``: the shared shaping and the node registry, as one service.

Started before the scheduler (so the first delivery already knows whether Redis answers),
it runs the lease renewals, the reconnect loop and the heartbeats; when the daemon stops it
gives back the leases it still holds and leaves the registry, so the other nodes need not
wait out a lease TTL. A node killed with -9 does neither: its leases expire after
``[cluster] lease`` and its registry entry goes stale.

Both backends wire it the same way: the queue counts in the heartbeat come from the node's
queue (on PostgreSQL, the cluster's). At start, with Redis up, the node joins the registry
and refuses to run when an alive node's ``[server] secret_file`` (or ``[tracking]
secret_file``) fingerprint differs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mtaserver import __version__
from mtaserver.app.service import SimpleService
from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.devsetup import read_secret
from mtaserver.errors import MtaError
from mtaserver.log import get_logger, kv
from mtaserver.metrics import Metrics
from mtaserver.model import QueueGauges
from mtaserver.shaper import Shaper
from mtaserver.tracking.tokens import load_secrets

if TYPE_CHECKING:  # the cluster modules (the redis client) load in build_cluster
    from mtaserver.cluster.shared import SharedShaping

log = get_logger("cluster")

CLOSE_TIMEOUT = 2.0
_STATES = ("queued", "leased", "held")


class QueueCounts(Protocol):
    """What the heartbeat reads of the queue (SQLite ``Spool`` and ``PgQueue`` alike)."""

    async def gauges(self, states: Sequence[str], top: int, now: float) -> QueueGauges: ...


@dataclass(frozen=True)
class ClusterParts:
    shared: SharedShaping
    service: SimpleService


def shared_secrets(cfg: Config) -> str:
    """The fingerprints of the secrets every node must share: ``[server] secret_file``
    (VERP), and ``[tracking] secret_file`` where this node signs links. Read at the first
    heartbeat, once the stages that create a missing file have run."""
    from mtaserver.cluster.registry import fingerprints  # [cluster] only, like its caller

    secrets = {"server.secret_file": read_secret(cfg.server.secret_file)}
    t = cfg.tracking
    if t.base_url is not None and t.secret_file is not None and t.secret_file.exists():
        with contextlib.suppress(ValueError):  # tracking refuses to start on it, named
            secrets["tracking.secret_file"] = b"\n".join(load_secrets(t.secret_file))
    return fingerprints(secrets)


def build_cluster(
    cfg: Config, shaper: Shaper, spool: QueueCounts, clock: Clock, metrics: Metrics
) -> ClusterParts | None:
    c = cfg.cluster
    if c is None or (c.redis is None and c.nodes == 1):
        return None  # this node's own shaper: nothing to share, nothing to split
    # The redis client and the shared shaping: loaded only by a node in a cluster.
    from mtaserver.cluster.client import RedisDown, ShapingScripts, connect
    from mtaserver.cluster.metrics import ClusterCollector
    from mtaserver.cluster.registry import NodeRegistry
    from mtaserver.cluster.shared import SharedShaping

    scripts = ShapingScripts(connect(c), c.prefix) if c.redis is not None else None
    shared = SharedShaping(c, shaper, clock, scripts)
    metrics.registry.register(ClusterCollector(shared))
    registry = None
    if scripts is not None:

        async def counts() -> dict[str, int]:
            try:
                g = await spool.gauges(_STATES, 0, clock.now())
            except (MtaError, OSError):  # the database is down: the beat still goes out
                return {}
            return dict(g.by_state)

        def shaping() -> dict[str, int]:
            return {"degraded_total": shared.degraded_total, "errors": shared.errors,
                    "held": shared.held()}  # fmt: skip

        registry = NodeRegistry(
            c, scripts, clock, version=__version__, counts=counts, shaping=shaping,
            fingerprint=lambda: shared_secrets(cfg),
            source=cfg.source.name,
        )  # fmt: skip

    async def start() -> None:
        await shared.start()
        if registry is not None and shared.redis_up:
            try:
                await registry.join()  # ConfigError: another secret than the cluster's
            except RedisDown as exc:
                log.warning(kv(event="heartbeat_failed", node=c.node_id, error=str(exc)))

    async def run() -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(shared.run(), name="cluster-shaping")
                if registry is not None:
                    tg.create_task(registry.run(), name="cluster-heartbeat")
        finally:
            with contextlib.suppress(RedisDown, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    if registry is not None and shared.redis_up:
                        await registry.forget()
                    await shared.close()

    return ClusterParts(shared, SimpleService("cluster", on_start=start, on_run=run))
