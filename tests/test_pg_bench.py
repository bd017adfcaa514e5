"""The body-placement benchmark runs end to end on a tiny queue (smoke test, not a figure)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pg_queue_benchmark_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.pg_queue", "--n", "60", "--sizes", "512", "--concurrency", "4"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    assert [r[1] for r in rows] == ["sqlite", "pg-bytea", "pg-local"]
    assert all(float(r[2]) > 0 and float(r[4]) > 0 for r in rows)


def test_pg_claim_scale_benchmark_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.pg_claim_scale", "--sizes", "1000"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    size, _fill, claim_ms = out.stdout.splitlines()[1].split()
    assert size == "1000" and 0 < float(claim_ms) < 5000
