"""The contact import benchmark runs end to end with a tiny N, through a daemon too (its
asserts check the counts)."""

from __future__ import annotations

from bench import contacts_import


def test_benchmark_runs() -> None:
    rows = contacts_import.main(["--n", "3000"])
    assert len(rows) == 4 and all(rate > 0 for rate in rows.values())
