"""Scrape-time metric families built from the shaper's per-destination state."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from mtaserver.metrics.ports import ShapingView


def shaping_families(shaper: ShapingView, top: int, now: float) -> Iterator[Metric]:
    rows: list[tuple[str, int, float | None, float | None]] = []
    for dest in shaper.destinations():
        until = shaper.suspended_until(dest)
        rows.append((dest, shaper.active(dest), until, shaper.rate(dest)))
    # The busiest and the suspended ones are those worth a label.
    rows.sort(key=lambda r: (-(r[2] is not None), -r[1], r[0]))
    rows = rows[:top]
    total = GaugeMetricFamily(
        "mtaserver_shaping_connections_total", "Delivery connections in use, all destinations",
        value=shaper.active(None),
    )  # fmt: skip
    yield total
    conns = GaugeMetricFamily(
        "mtaserver_shaping_connections", "Delivery connections in use, by destination",
        labels=["destination"],
    )  # fmt: skip
    susp = GaugeMetricFamily(
        "mtaserver_shaping_suspended",
        "1 while a destination is suspended (reactive rule or dead-destination back-off)",
        labels=["destination"],
    )
    left = GaugeMetricFamily(
        "mtaserver_shaping_suspended_seconds",
        "Seconds until a suspended destination is tried again",
        labels=["destination"],
    )
    rate = GaugeMetricFamily(
        "mtaserver_shaping_rate",
        "Current message rate limit per second (absent when unlimited)",
        labels=["destination"],
    )
    for dest, active, until, per_second in rows:
        conns.add_metric([dest], active)
        susp.add_metric([dest], 1 if until is not None else 0)
        left.add_metric([dest], max(0.0, until - now) if until is not None else 0.0)
        if per_second is not None:
            rate.add_metric([dest], per_second)
    yield from (conns, susp, left, rate)
