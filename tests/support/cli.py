"""Running ``python -m mtaserver`` as an operator does, and judging its answer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import ROOT


def run_as(
    user: str, config: Path, *argv: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``mtaserver ARGV --user USER -c CONFIG``, never reading $MTASERVER_CONFIG."""
    env = {k: v for k, v in os.environ.items() if k != "MTASERVER_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "mtaserver", *argv, "--user", user, "-c", str(config)],
        input=stdin, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )  # fmt: skip


def fails(r: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2, one line on stderr naming ``words``, no traceback."""
    report = f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert r.returncode == 2, report
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtaserver: "), report
    for w in words:
        assert w in lines[0], report


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout
