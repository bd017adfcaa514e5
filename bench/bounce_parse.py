"""Bounces parsed per second over the real corpus, against a plain-parse baseline.

Run: ``.venv/bin/python -m bench.bounce_parse [--rounds 5]``

Both sides read the same messages in the same process: ``tests/data/bounces`` and every
corpus under ``tests/data/corpora`` (about 340 bounces, complaints and auto-replies from
60+ MTAs). The baseline is Python's plain
``email.message_from_bytes`` (structure only, no understanding); ``parse_bounce`` does that
plus the bounded walk, RFC 3464/5965 fields, free-form recipient extraction and
classification. The ratio says what understanding costs over merely parsing.
"""

from __future__ import annotations

import argparse
import email
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mtaserver.dsn import parse_bounce

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
CORPUS = DATA / "bounces"


def load_corpus() -> list[bytes]:
    files = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".txt", ".eml"))
    out = [p.read_bytes() for p in files if p.name != "expected.txt"]
    for expected in sorted((DATA / "corpora").glob("*/expected.txt")):
        for line in expected.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                out.append((expected.parent / line.split("|", 1)[0].strip()).read_bytes())
    return out


def rate(fn: Callable[[bytes], object], corpus: Sequence[bytes], rounds: int) -> float:
    """Messages per second, best of ``rounds`` passes over the corpus."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for raw in corpus:
            fn(raw)
        best = min(best, time.perf_counter() - start)
    return len(corpus) / best


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    corpus = load_corpus()
    baseline = rate(email.message_from_bytes, corpus, args.rounds)
    ours = rate(parse_bounce, corpus, args.rounds)
    size = sum(len(r) for r in corpus)
    print(f"corpus: {len(corpus)} messages, {size / 1024:.0f} KiB")
    print(f"email.message_from_bytes (baseline): {baseline:8.0f} msg/s")
    print(f"parse_bounce:                        {ours:8.0f} msg/s")
    print(f"parse_bounce / baseline:             {ours / baseline:8.2f}x")
    return {"messages": len(corpus), "baseline": baseline, "ours": ours, "ratio": ours / baseline}


if __name__ == "__main__":
    main()
