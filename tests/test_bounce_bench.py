"""The bounce-parse benchmark runs on the corpus (tiny N) and reports sane figures."""

from __future__ import annotations

from bench import bounce_parse


def test_benchmark_runs() -> None:
    out = bounce_parse.main(["--rounds", "1"])
    assert out["messages"] >= 100
    assert out["ours"] > 0 and out["baseline"] > out["ours"] * 0.5 > 0
