"""Prometheus families of the cluster link, registered on the process's metrics registry."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mtaserver.cluster.shared import SharedShaping


class ClusterCollector:
    """Read at scrape time from :class:`SharedShaping`, so the numbers cannot drift."""

    def __init__(self, shared: SharedShaping) -> None:
        self._shared = shared

    def collect(self) -> Iterable[Metric]:
        s = self._shared
        yield GaugeMetricFamily(
            "mtaserver_cluster_redis_up",
            "1 while cluster-wide shaping in Redis is in use, 0 while degraded to limit/nodes",
            value=1.0 if s.redis_up else 0.0,
        )
        yield CounterMetricFamily(
            "mtaserver_cluster_degraded",
            "Times this node fell back to local shaping at limit/nodes",
            value=s.degraded_total,
        )
        yield CounterMetricFamily(
            "mtaserver_cluster_grace_timeouts",
            "Returns from degraded whose grace ended at its limit ([cluster] lease), "
            "a node known before the outage not heard from",
            value=s.grace_timeouts,
        )
        yield CounterMetricFamily(
            "mtaserver_cluster_redis_calls", "Round trips to Redis for shaping", value=s.calls
        )
        yield CounterMetricFamily(
            "mtaserver_cluster_redis_errors", "Redis calls that failed", value=s.errors
        )
        yield CounterMetricFamily(
            "mtaserver_cluster_leases_lost",
            "Connection leases found expired at a renewal and taken by another node "
            "(their connections closed)",
            value=s.lost_total,
        )
        leases = GaugeMetricFamily(
            "mtaserver_cluster_connections_held",
            "Connection leases this node holds (deliveries and idle pooled connections), "
            "by destination",
            labels=["destination"],
        )
        idle = GaugeMetricFamily(
            "mtaserver_cluster_connections_idle",
            "Idle pooled connections holding a lease, by destination",
            labels=["destination"],
        )
        for dest in s.destinations():
            leases.add_metric([dest], s.held(dest))
            idle.add_metric([dest], s.idle(dest))
        yield leases
        yield idle
