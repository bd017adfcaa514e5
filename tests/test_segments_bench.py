"""The segments benchmark runs end to end with a tiny N (its asserts check that the store
and the hand-written SQL find the same contacts, counted and paged)."""

from __future__ import annotations

from bench import segments


def test_benchmark_runs() -> None:
    out = segments.main(["--n", "3000"])
    assert set(out) == {"attrs", "engaged"} and all(a > 0 and b > 0 for a, b in out.values())
