"""The real-bounce corpus under tests/data/bounces/ and its expected results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "data" / "bounces"


@dataclass(frozen=True)
class Expected:
    file: str
    mta: str
    type: str  # failed | delayed | complaint | autoreply | none | noaddr
    recipients: tuple[tuple[str, str, str], ...]  # (address lower-cased, status, kind)
    held_out: bool = False  # labelled before the parser ever ran on it

    @property
    def path(self) -> Path:
        return CORPUS / self.file


def load_expected() -> list[Expected]:
    out = []
    held_out = False
    for line in (CORPUS / "expected.txt").read_text().splitlines():
        if line.startswith("# Held out"):
            held_out = True
        if not line.strip() or line.startswith("#"):
            continue
        file, mta, typ, rcpts = (x.strip() for x in line.split("|"))
        recs = []
        for r in rcpts.split(";"):
            if r.strip():
                addr, status, kind = r.split()
                recs.append((addr.lower(), status, kind))
        out.append(Expected(file, mta, typ, tuple(recs), held_out))
    return out


@dataclass
class Scores:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    status_ok: int = 0
    kind_ok: int = 0
    judged: int = 0
    type_errors: int = 0

    @property
    def recall(self) -> float:
        return self.tp / max(1, self.tp + self.fn)

    @property
    def precision(self) -> float:
        return self.tp / max(1, self.tp + self.fp)

    @property
    def status_accuracy(self) -> float:
        return self.status_ok / max(1, self.judged)

    @property
    def kind_accuracy(self) -> float:
        return self.kind_ok / max(1, self.judged)

    def summary(self) -> str:
        return (
            f"recipients: recall {self.recall:.3f} precision {self.precision:.3f} "
            f"(tp={self.tp} fp={self.fp} fn={self.fn}); status accuracy "
            f"{self.status_accuracy:.3f}, kind accuracy {self.kind_accuracy:.3f} "
            f"over {self.judged}; message-type errors {self.type_errors}"
        )
