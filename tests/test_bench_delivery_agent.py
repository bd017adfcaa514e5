"""The delivery-agent benchmark runs end to end with a few messages (smoke test, not a figure)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    not (shutil.which("smtp-sink") or Path("/usr/sbin/smtp-sink").exists()),
    reason="needs Postfix's smtp-sink",
)
def test_delivery_agent_benchmark_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.delivery_agent", "-n", "40", "-c", "4"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[2:]]
    assert len(rows) == 3
    for row in rows:
        assert row[-2] == "40"  # every message delivered by every sender
