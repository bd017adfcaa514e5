"""``[cluster]``: the shared shaping and the node registry, as one service.

Started before the scheduler (so the first delivery already knows whether Redis answers),
it runs the lease renewals, the reconnect loop and the heartbeats; when the daemon stops it
gives back the leases it still holds and leaves the registry, so the other nodes need not
wait out a lease TTL. A node killed with -9 does neither: its leases expire after
``[cluster] lease`` and its registry entry goes stale.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from mtaserver import __version__
from mtaserver.app.service import SimpleService
from mtaserver.clock import Clock
from mtaserver.cluster.client import RedisDown, ShapingScripts, connect
from mtaserver.cluster.metrics import ClusterCollector
from mtaserver.cluster.registry import NodeRegistry
from mtaserver.cluster.shared import SharedShaping
from mtaserver.config import Config
from mtaserver.metrics import Metrics
from mtaserver.shaper import Shaper
from mtaserver.storage.sqlite.queue import Spool

CLOSE_TIMEOUT = 2.0
_STATES = ("queued", "leased", "held")


@dataclass(frozen=True)
class ClusterParts:
    shared: SharedShaping
    service: SimpleService


def build_cluster(
    cfg: Config, shaper: Shaper, spool: Spool, clock: Clock, metrics: Metrics
) -> ClusterParts | None:
    c = cfg.cluster
    if c is None:
        return None
    scripts = ShapingScripts(connect(c), c.prefix) if c.redis is not None else None
    shared = SharedShaping(c, shaper, clock, scripts)
    metrics.registry.register(ClusterCollector(shared))
    registry = None
    if scripts is not None:

        async def counts() -> dict[str, int]:
            g = await spool.gauges(_STATES, 0, clock.now())
            return dict(g.by_state)

        registry = NodeRegistry(c, scripts, clock, version=__version__, counts=counts)

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

    return ClusterParts(shared, SimpleService("cluster", on_start=shared.start, on_run=run))
