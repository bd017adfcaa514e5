"""The /metrics scrape benchmark runs end to end with a tiny queue (smoke test, not a figure)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_admin_metrics_benchmark_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.admin_metrics", "--sizes", "500", "--rounds", "1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    size, summary_ms, scrape_ms, _ratio, tail_ms = out.stdout.splitlines()[1].split()
    assert size == "500"
    assert 0 < float(scrape_ms) < 5000 and 0 < float(summary_ms) < 5000 and float(tail_ms) > 0
