"""The queue-scale benchmark runs end to end with a tiny queue (smoke test, not a figure)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_queue_scale_benchmark_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.queue_scale", "--sizes", "1000", "--seconds", "0.3"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    row = out.stdout.splitlines()[1].split()
    assert row[0] == "1000"
    claim_ms, rss_mib = float(row[3]), float(row[6])
    assert 0 < claim_ms < 5000 and 10 < rss_mib < 1000
