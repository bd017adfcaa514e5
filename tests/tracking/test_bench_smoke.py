"""The tracking benchmark runs (tiny durations; the figures themselves are in README)."""

from __future__ import annotations

import shutil

import pytest

from bench import tracking_http


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_tracking_benchmark_runs() -> None:
    r = tracking_http.run(duration=1, connections=4, threads=1, rounds=1)
    for kind in ("baseline", "mtaserver", "mtaserver-logged"):
        for what in ("pixel", "click"):
            assert r[f"{kind}_{what}"] > 0
            assert r[f"{kind}_{what}_cpu_us"] > 0
    assert r["mtaserver_pixel_ratio"] > 0 and r["mtaserver_click_cpu_ratio"] > 0
    # Every hit mtaserver answered was recorded as an event; none was dropped.
    assert r["mtaserver_recorded_events"] > 0
    assert r["mtaserver_dropped_hits"] == 0
