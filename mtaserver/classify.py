"""What a failure reply or bounce diagnostic means: category and hard/soft kind.

One classifier serves the synchronous replies delivery receives and the diagnostics of
asynchronous bounces, so a "mailbox full" means the same thing whichever way it arrives.
The knowledge lives in ``mtaserver/data/classify.toml`` (policy is data); this module only
walks that ordered rule table. Hard/soft is decided by the *reason*, not by the reply class:
5.2.2 (mailbox full) is soft, 4.1.1 (unknown user) is hard.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from mtaserver.model import BounceKind, Classification

CATEGORIES = (
    "unknown-recipient",
    "mailbox-full",
    "mailbox-disabled",
    "domain-not-found",
    "message-too-large",
    "content-rejected",
    "spam-blocked",
    "reputation-blocked",
    "rate-limited",
    "authentication-failed",
    "policy",
    "expired",
    "other",
)

# An RFC 3463 status inside free text: "5.1.1", "#5.2.2", "(4.7.0)"; not part of an IP.
STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_MAX_TEXT = 4096  # diagnostics longer than this carry no extra meaning, only cost


class ClassifyTableError(ValueError):
    """The classification table is malformed (a packaging bug, caught by the tests)."""


@dataclass(frozen=True, slots=True)
class _Rule:
    category: str
    kind: str | None
    text: re.Pattern[str] | None
    status: re.Pattern[str] | None
    klass: int | None

    def matches(self, klass: int | None, status: str | None, text: str) -> bool:
        if self.klass is not None and klass != self.klass:
            return False
        if self.status is not None and (status is None or not self.status.fullmatch(status)):
            return False
        return self.text is None or self.text.search(text) is not None


@dataclass(frozen=True, slots=True)
class _CategoryInfo:
    kind: str  # "hard" | "soft" | "by-class"
    status: str


def _status_pattern(spec: str) -> re.Pattern[str]:
    parts = spec.split(".")
    if len(parts) != 3:
        raise ClassifyTableError(f"classify table: bad status pattern {spec!r}")
    out = []
    for i, part in enumerate(parts):
        if part == "*":
            out.append(r"\d{1,3}")
        elif i == 0 and part.upper() == "X":
            out.append("[45]")
        else:
            if not re.fullmatch(r"[0-9\[\]-]+", part):
                raise ClassifyTableError(f"classify table: bad status pattern {spec!r}")
            out.append(part)  # digits, or a digit class such as 2[0-7]
    return re.compile(r"\.".join(out))


def _lower_literals(pattern: str) -> str:
    """Lower-case a pattern's literal characters, leaving escapes (``\\S``, ``\\D``) alone."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(pattern[i : i + 2])
            i += 2
            continue
        out.append(ch.lower())
        i += 1
    return "".join(out)


class Classifier:
    """An ordered rule table; the first rule whose conditions all hold decides."""

    def __init__(self, table: dict[str, Any]) -> None:
        cats = table.get("categories")
        if not isinstance(cats, dict):
            raise ClassifyTableError("classify table: missing [categories]")
        self._cats: dict[str, _CategoryInfo] = {}
        for name in CATEGORIES:
            info = cats.get(name)
            if not isinstance(info, dict) or info.get("kind") not in ("hard", "soft", "by-class"):
                raise ClassifyTableError(f"classify table: category {name!r} missing or bad")
            self._cats[name] = _CategoryInfo(info["kind"], str(info.get("status", "5.0.0")))
        unknown = set(cats) - set(CATEGORIES)
        if unknown:
            raise ClassifyTableError(f"classify table: unknown categories {sorted(unknown)}")
        rules = []
        for i, raw in enumerate(table.get("rule", [])):
            cat = raw.get("category")
            if cat not in self._cats:
                raise ClassifyTableError(f"classify table: rule {i}: unknown category {cat!r}")
            extra = set(raw) - {"category", "kind", "text", "status", "class"}
            if extra:
                raise ClassifyTableError(f"classify table: rule {i}: unknown keys {extra}")
            kind = raw.get("kind")
            if kind not in (None, "hard", "soft", "by-class"):
                raise ClassifyTableError(f"classify table: rule {i}: bad kind {kind!r}")
            try:
                # Matched against lower-cased text: several times faster than IGNORECASE.
                text = re.compile(_lower_literals(raw["text"])) if "text" in raw else None
            except re.error as exc:
                raise ClassifyTableError(f"classify table: rule {i}: {exc}") from exc
            status = _status_pattern(raw["status"]) if "status" in raw else None
            klass = raw.get("class")
            if klass not in (None, 4, 5):
                raise ClassifyTableError(f"classify table: rule {i}: bad class {klass!r}")
            rules.append(_Rule(cat, kind, text, status, klass))
        if not rules or rules[-1].text or rules[-1].status or rules[-1].klass:
            raise ClassifyTableError("classify table: the last rule must be a catch-all")
        self._rules = tuple(rules)

    def default_status(self, category: str, klass: int | None) -> str:
        """The status a category implies, in the failure's class (for bounces that state none)."""
        status = self._cats[category].status
        if klass in (4, 5):
            status = f"{klass}{status[1:]}"
        return status

    def classify(self, code: int | None, enhanced: str | None, text: str) -> Classification:
        """Classify one reply or diagnostic; ``status`` is the most specific one found."""
        text = (text or "")[:_MAX_TEXT]
        status = best_status(enhanced, text)
        lowered = text.lower()
        klass: int | None = None
        if code is not None and 200 <= code < 600:
            klass = code // 100
        elif status is not None:
            klass = int(status[0])
        for rule in self._rules:
            if rule.matches(klass, status, lowered):
                kind = rule.kind or self._cats[rule.category].kind
                if kind == "by-class":
                    kind = "soft" if klass == 4 else "hard"
                return Classification(rule.category, BounceKind(kind), status)
        raise AssertionError("unreachable: the table ends with a catch-all")  # pragma: no cover


def _normalize(enhanced: str | None) -> str | None:
    if not enhanced:
        return None
    m = STATUS_RE.search(enhanced.strip())
    return ".".join(m.groups()) if m else None


def is_generic(status: str) -> bool:
    """True for statuses that say "failed" without saying why (X.0.0, X.Y.0, X.4.7)."""
    _, subject, detail = status.split(".")
    return detail == "0" or (subject, detail) == ("4", "7")


def best_status(enhanced: str | None, text: str) -> str | None:
    """The given status unless it is generic and the text carries a specific one."""
    given = _normalize(enhanced)
    if given is not None and not is_generic(given):
        return given
    found = [".".join(m.groups()) for m in STATUS_RE.finditer(text[:_MAX_TEXT])]
    for status in found:
        if not is_generic(status):
            return status
    if given is not None:
        return given
    return found[0] if found else None


@functools.lru_cache(maxsize=1)
def default_classifier() -> Classifier:
    """The packaged table, loaded once (it is immutable data)."""
    data = resources.files("mtaserver").joinpath("data/classify.toml").read_bytes()
    return Classifier(tomllib.loads(data.decode("utf-8")))


def classify(code: int | None, enhanced: str | None, text: str) -> Classification:
    """Classify an SMTP reply or bounce diagnostic with the packaged table."""
    return default_classifier().classify(code, enhanced, text)
