"""Recipient recall/precision, status, kind and ARF recall over every bounce corpus.

Run: ``.venv/bin/python -m bench.bounce_corpus [-v]``

Corpora: ``tests/data/bounces`` (the development corpus) and each
``tests/data/corpora/<name>/`` (public test data of other bounce parsers, see their
SOURCE files). About 30% of every added corpus is *held out*, chosen by a fixed hash of
``<name>/<file>`` decided before any rule was written for it; rules are tuned on the
in-sample part only, and the held-out figures are printed separately so they say how the
parser does on mail it was not fitted to. Expected answers live in each ``expected.txt``.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mtaserver.dsn import parse_bounce
from mtaserver.dsn.recipient import reason_kind_of
from mtaserver.model import BounceReport

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
HELD_OUT_PERCENT = 30
GOALS = {"recall": 0.97, "precision": 0.99, "status": 0.90, "kind": 0.90, "arf_recall": 0.97}


def held_out(corpus: str, file: str) -> bool:
    """The fixed split: sha256 of ``corpus/file``; never changed after rules were written."""
    digest = hashlib.sha256(f"{corpus}/{file}".encode()).hexdigest()
    return int(digest[:8], 16) % 100 < HELD_OUT_PERCENT


@dataclass(frozen=True)
class Entry:
    corpus: str
    file: str
    mta: str
    type: str  # failed | delayed | complaint | autoreply | none | noaddr
    recipients: tuple[tuple[str, str, str], ...]  # (address lower-cased, status, kind)
    held_out: bool
    path: Path


def _load(corpus: str, directory: Path, split: bool) -> list[Entry]:
    out = []
    legacy_held = False
    for line in (directory / "expected.txt").read_text().splitlines():
        if line.startswith("# Held out"):
            legacy_held = True
        if not line.strip() or line.startswith("#"):
            continue
        file, mta, typ, rcpts = (x.strip() for x in line.split("|"))
        recs = []
        for r in rcpts.split(";"):
            if r.strip():
                addr, status, kind = r.split()
                recs.append((addr.lower(), status, kind))
        held = held_out(corpus, file) if split else legacy_held
        out.append(Entry(corpus, file, mta, typ, tuple(recs), held, directory / file))
    return out


def load_all() -> list[Entry]:
    entries = _load("bounces", DATA / "bounces", split=False)
    for d in sorted((DATA / "corpora").iterdir()):
        if (d / "expected.txt").is_file():
            entries.extend(_load(d.name, d, split=True))
    return entries


@dataclass
class Scores:
    messages: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    judged: int = 0
    kind_judged: int = 0
    status_ok: int = 0
    kind_ok: int = 0
    arf_tp: int = 0
    arf_fn: int = 0
    type_errors: int = 0
    problems: list[str] = field(default_factory=list)

    @staticmethod
    def _ratio(a: int, b: int) -> float:
        return a / b if b else 1.0

    @property
    def recall(self) -> float:
        return self._ratio(self.tp, self.tp + self.fn)

    @property
    def precision(self) -> float:
        return self._ratio(self.tp, self.tp + self.fp)

    @property
    def status(self) -> float:
        return self._ratio(self.status_ok, self.judged)

    @property
    def kind(self) -> float:
        return self._ratio(self.kind_ok, self.kind_judged)

    @property
    def arf_recall(self) -> float:
        return self._ratio(self.arf_tp, self.arf_tp + self.arf_fn)

    def metrics(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in GOALS}


def _type_ok(e: Entry, rep: BounceReport | None) -> bool:
    if e.type in ("autoreply", "none"):
        return rep is None
    if e.type == "complaint":
        return rep is not None and rep.is_complaint
    if e.type in ("failed", "delayed"):
        if rep is None or rep.is_complaint:
            return False
        return all(r.action == e.type for r in rep.recipients)
    return True  # noaddr: a failure notice without a usable address


def score(entries: Sequence[Entry]) -> Scores:
    s = Scores()
    for e in entries:
        s.messages += 1
        rep = parse_bounce(e.path.read_bytes())
        name = f"{e.corpus}/{e.file}"
        if not _type_ok(e, rep):
            s.type_errors += 1
            s.problems.append(f"{name}: type {e.type}, got {rep and rep.recipients}")
        got = {r.recipient.lower(): r for r in rep.recipients} if rep else {}
        want = {a: (st, k) for a, st, k in e.recipients}
        for addr, r in got.items():
            if addr not in want:
                s.fp += 1
                s.problems.append(f"{name}: extra recipient {addr}")
                continue
            s.tp += 1
            s.arf_tp += e.type == "complaint"
            status, kind = want[addr]
            rkind = reason_kind_of(r)
            status_bad = status != "-" and r.status != status
            kind_bad = kind != "-" and rkind != kind
            s.judged += status != "-"
            s.status_ok += status != "-" and not status_bad
            s.kind_judged += kind != "-"
            s.kind_ok += kind != "-" and not kind_bad
            if status_bad or kind_bad:
                s.problems.append(
                    f"{name}: {addr} {r.status}/{rkind} ({getattr(r, 'reason', '?')}),"
                    f" want {status}/{kind}"
                )
        for addr in want:
            if addr not in got:
                s.fn += 1
                s.arf_fn += e.type == "complaint"
                s.problems.append(f"{name}: missed {addr}")
    return s


def _row(label: str, s: Scores) -> str:
    return (
        f"| {label:<22} | {s.messages:>4} | {s.tp + s.fn:>4} | {s.recall:.3f} | {s.precision:.3f}"
        f" | {s.status:.3f} | {s.kind:.3f} | {s.arf_recall:.3f} ({s.arf_tp + s.arf_fn:>2}) |"
        f" {s.type_errors:>3} |"
    )


def table(title: str, entries: Sequence[Entry], verbose: bool = False) -> Scores:
    print(f"\n{title}\n")
    print(
        "| corpus                 | msgs | rcpt | recall | precision | status | kind "
        "| ARF recall (n) | type errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    corpora = sorted({e.corpus for e in entries})
    for c in corpora:
        part = score([e for e in entries if e.corpus == c])
        print(_row(c, part))
    total = score(entries)
    public = [e for e in entries if e.corpus != "generated"]
    if len(public) != len(entries):
        print(_row("all public (not ours)", score(public)))
    print(_row("**all**", total))
    if verbose:
        for p in total.problems:
            print("  ", p)
    return total


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="list in-sample misses")
    ap.add_argument("--held-out-problems", action="store_true",
                    help="also list held-out misses (only after the rules are final)")  # fmt: skip
    args = ap.parse_args(argv)
    entries = load_all()
    ins = table("In-sample (rules were written looking at these)",
                [e for e in entries if not e.held_out], args.verbose)  # fmt: skip
    held = table("Held out (never looked at while writing rules)",
                 [e for e in entries if e.held_out], args.held_out_problems)  # fmt: skip
    print(f"\ngoals: {GOALS}")
    return {"in_sample": ins.metrics(), "held_out": held.metrics()}


if __name__ == "__main__":
    main()
