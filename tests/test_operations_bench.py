"""The operations benchmark runs (tiny N): its numbers in the README stay reproducible."""

from __future__ import annotations

import pytest

from bench import operations


async def test_bench_runs_with_tiny_n(capsys: pytest.CaptureFixture[str]) -> None:
    await operations.main(30)
    out = capsys.readouterr().out
    for what in ("secure_delete:", "encryption:", "webhooks:", "erase:"):
        assert what in out
