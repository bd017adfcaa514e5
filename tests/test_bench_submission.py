"""The submission benchmark runs end to end with a tiny N (servers in child processes)."""

from __future__ import annotations

from bench import submission


def test_benchmark_runs() -> None:
    results = submission.main(["--sessions", "3", "--messages", "12", "--repeat", "1"])
    assert {(r.server, r.mode) for r in results} == {
        (s, m) for s in ("sink", "mtaserver") for m in ("plain", "tls+auth")
    }
    assert all(r.messages == 12 and r.rate > 0 for r in results)
