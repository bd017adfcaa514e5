"""What a failure reply or bounce diagnostic means: a reason, its kind, and a status.

One classifier serves the synchronous replies delivery receives and the diagnostics of
asynchronous bounces, so a "mailbox full" means the same thing whichever way it arrives.
The knowledge lives in ``mtaserver/data/classify.toml`` (policy is data); this module only
walks that ordered rule table. Each rule names a *reason* from sisimai's taxonomy
(``userunknown``, ``mailboxfull``, ``spamdetected``...); the reason decides the kind, never
the reply class: only a dead address or domain is hard (5.2.2 mailbox full is soft, 4.1.1
unknown user is hard, a 5.7.1 spam verdict is soft), and a complaint is ``feedback``.
The older, coarser ``category`` (what suppression policy in config is keyed by) is derived
from the reason so both views always agree.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from mtaserver.model import BounceKind, Classification

REASONS = (
    "userunknown",
    "hostunknown",
    "hasmoved",
    "notaccept",
    "suspend",
    "mailboxfull",
    "exceedlimit",
    "mesgtoobig",
    "filtered",
    "rejected",
    "blocked",
    "spamdetected",
    "virusdetected",
    "policyviolation",
    "contenterror",
    "securityerror",
    "norelaying",
    "toomanyconn",
    "systemerror",
    "networkerror",
    "expired",
    "onhold",
    "syntaxerror",
    "vacation",
    "feedback",
    "undefined",
)
REASON_KINDS = ("hard", "soft", "feedback")

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
    "complaint",
)

# An RFC 3463 status inside free text: "5.1.1", "#5.2.2", "(4.7.0)"; not part of an IP.
STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_MAX_TEXT = 4096  # diagnostics longer than this carry no extra meaning, only cost


class ClassifyTableError(ValueError):
    """The classification table is malformed (a packaging bug, caught by the tests)."""


@dataclass(frozen=True, slots=True)
class Verdict(Classification):
    """A :class:`Classification` that also names the sisimai-style reason."""

    reason: str = "undefined"

    @property
    def reason_kind(self) -> str:
        """``hard`` | ``soft`` | ``feedback`` (the kind of the reason)."""
        return kind_of(self.reason)


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    kind: str  # "hard" | "soft" | "feedback"
    category: str
    status: str  # "X.0.0" style: X is the failure's class


@dataclass(frozen=True, slots=True)
class _Rule:
    reason: str
    text: re.Pattern[str] | None
    status: re.Pattern[str] | None
    klass: int | None

    def matches(self, klass: int | None, status: str | None, text: str) -> bool:
        if self.klass is not None and klass != self.klass:
            return False
        if self.status is not None and (status is None or not self.status.fullmatch(status)):
            return False
        return self.text is None or self.text.search(text) is not None


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


def _reasons(table: dict[str, Any]) -> dict[str, ReasonInfo]:
    raw = table.get("reasons")
    if not isinstance(raw, dict):
        raise ClassifyTableError("classify table: missing [reasons]")
    unknown = set(raw) - set(REASONS)
    if unknown:
        raise ClassifyTableError(f"classify table: unknown reasons {sorted(unknown)}")
    out: dict[str, ReasonInfo] = {}
    for name in REASONS:
        info = raw.get(name)
        if not isinstance(info, dict) or info.get("kind") not in REASON_KINDS:
            raise ClassifyTableError(f"classify table: reason {name!r} missing or bad kind")
        if info.get("category") not in CATEGORIES:
            raise ClassifyTableError(f"classify table: reason {name!r}: bad category")
        status = str(info.get("status", "X.0.0"))
        if not re.fullmatch(r"[X45]\.\d{1,3}\.\d{1,3}", status):
            raise ClassifyTableError(f"classify table: reason {name!r}: bad status {status!r}")
        out[name] = ReasonInfo(info["kind"], info["category"], status)
    return out


class Classifier:
    """An ordered rule table; the first rule whose conditions all hold decides."""

    def __init__(self, table: dict[str, Any]) -> None:
        self.reasons = _reasons(table)
        rules = []
        for i, raw in enumerate(table.get("rule", [])):
            reason = raw.get("reason")
            if reason not in self.reasons:
                raise ClassifyTableError(f"classify table: rule {i}: unknown reason {reason!r}")
            extra = set(raw) - {"reason", "text", "status", "class"}
            if extra:
                raise ClassifyTableError(f"classify table: rule {i}: unknown keys {extra}")
            try:
                # Matched against lower-cased text: several times faster than IGNORECASE.
                text = re.compile(_lower_literals(raw["text"])) if "text" in raw else None
            except re.error as exc:
                raise ClassifyTableError(f"classify table: rule {i}: {exc}") from exc
            status = _status_pattern(raw["status"]) if "status" in raw else None
            klass = raw.get("class")
            if klass not in (None, 4, 5):
                raise ClassifyTableError(f"classify table: rule {i}: bad class {klass!r}")
            rules.append(_Rule(reason, text, status, klass))
        if not rules or rules[-1].text or rules[-1].status or rules[-1].klass:
            raise ClassifyTableError("classify table: the last rule must be a catch-all")
        self._rules = tuple(rules)

    def default_status(self, reason: str, klass: int | None) -> str:
        """The status a reason implies, in the failure's class (for bounces that state none)."""
        status = self.reasons[reason].status
        if klass in (4, 5):
            status = f"{klass}{status[1:]}"
        elif status.startswith("X"):
            status = f"5{status[1:]}"
        return status

    def verdict(self, reason: str, status: str | None = None) -> Verdict:
        """The verdict for a reason decided elsewhere (a complaint, an expiry)."""
        info = self.reasons[reason]
        kind = BounceKind.HARD if info.kind == "hard" else BounceKind.SOFT
        return Verdict(info.category, kind, status, reason)

    def reason_of(self, code: int | None, status: str | None, text: str) -> str:
        """The first matching rule's reason; ``text`` is searched case-insensitively."""
        lowered = (text or "")[:_MAX_TEXT].lower()
        klass: int | None = None
        if code is not None and 200 <= code < 600:
            klass = code // 100
        elif status is not None:
            klass = int(status[0])
        for rule in self._rules:
            if rule.matches(klass, status, lowered):
                return rule.reason
        raise AssertionError("unreachable: the table ends with a catch-all")  # pragma: no cover

    def classify(self, code: int | None, enhanced: str | None, text: str) -> Verdict:
        """Classify one reply or diagnostic; ``status`` is the most specific one found."""
        text = (text or "")[:_MAX_TEXT]
        status = best_status(enhanced, text)
        return self.verdict(self.reason_of(code, status, text), status)


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
    # "5.0.0" says less than "5.6.0" (a content problem): keep the one with a subject.
    for status in found:
        vague = given is None or (given.split(".")[1] == "0" and given[0] == status[0])
        if status.split(".")[1] != "0" and vague:
            return status
    if given is not None:
        return given
    return found[0] if found else None


@functools.lru_cache(maxsize=1)
def default_classifier() -> Classifier:
    """The packaged table, loaded once (it is immutable data)."""
    data = resources.files("mtaserver").joinpath("data/classify.toml").read_bytes()
    return Classifier(tomllib.loads(data.decode("utf-8")))


def kind_of(reason: str) -> str:
    """``hard`` | ``soft`` | ``feedback`` for a reason name (unknown names are soft)."""
    info = default_classifier().reasons.get(reason)
    return info.kind if info is not None else "soft"


def category_of(reason: str) -> str:
    """The suppression category a reason belongs to (``other`` for unknown names)."""
    info = default_classifier().reasons.get(reason)
    return info.category if info is not None else "other"


def classify(code: int | None, enhanced: str | None, text: str) -> Verdict:
    """Classify an SMTP reply or bounce diagnostic with the packaged table."""
    return default_classifier().classify(code, enhanced, text)
