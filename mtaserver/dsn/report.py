"""RFC 3464 delivery-status and RFC 5965 feedback-report fields."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_FIELD_RE = re.compile(r"^([A-Za-z][A-Za-z0-9-]{0,60})\s*:\s?(.*)$")
_RECIPIENT_FIELDS = frozenset(
    {"final-recipient", "original-recipient", "action", "status", "diagnostic-code", "remote-mta"}
)
_STARTS_RECORD = frozenset({"final-recipient", "original-recipient", "action", "status"})


def fields(text: str, max_fields: int = 5000) -> list[tuple[str, str]]:
    """Unfolded ``(lower-case name, value)`` pairs in order; blank lines are ignored."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[:1] in (" ", "\t") and out:
            name, value = out[-1]
            out[-1] = (name, f"{value} {line.strip()}")
            continue
        m = _FIELD_RE.match(line)
        if m:
            out.append((m.group(1).lower(), m.group(2).strip()))
            if len(out) >= max_fields:
                break
    return out


@dataclass(slots=True)
class DsnRecord:
    """The per-recipient fields of one delivery-status block."""

    values: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str:
        return self.values.get(name, "")


def delivery_status(text: str) -> tuple[dict[str, str], list[DsnRecord]]:
    """Per-message fields and per-recipient records.

    Records are split whenever a recipient field repeats, so a report without the blank
    lines RFC 3464 asks for (seen from several MTAs) still yields one record per recipient.
    """
    per_message: dict[str, str] = {}
    records: list[DsnRecord] = []
    current: DsnRecord | None = None
    for name, value in fields(text):
        if name in _RECIPIENT_FIELDS:
            if current is None or (name in _STARTS_RECORD and name in current.values):
                current = DsnRecord()
                records.append(current)
            current.values.setdefault(name, value)
        elif current is None:
            per_message.setdefault(name, value)
        else:
            current.values.setdefault(name, value)
    return per_message, [
        r for r in records if r.get("final-recipient") or r.get("original-recipient")
    ]


def address_of(value: str) -> str | None:
    """The address in a ``Final-Recipient: rfc822; <a@b>`` style value, if it has one."""
    if not value:
        return None
    kind, sep, rest = value.partition(";")
    candidate = rest if sep else kind
    typed = sep and kind.strip().lower() not in ("rfc822", "utf-8", "smtp", "rfc-822", "internet")
    if typed and ("@" not in candidate or candidate.strip().startswith("/")):
        return None
    candidate = candidate.strip().strip("<>").strip()
    if "@" not in candidate or " " in candidate or len(candidate) > 320:
        return None
    return candidate


def mta_name(value: str) -> str | None:
    """``dns; mx.example.com [192.0.2.1]`` -> ``mx.example.com``."""
    if not value:
        return None
    _, sep, rest = value.partition(";")
    name = (rest if sep else value).strip().split()
    if not name:
        return None
    return name[0].strip("[]")[:255] or None


def diagnostic_text(value: str) -> str:
    """Diagnostic-Code without its type: ``smtp; 550 5.1.1 ...`` -> ``550 5.1.1 ...``."""
    kind, sep, rest = value.partition(";")
    if sep and re.fullmatch(r"\s*[A-Za-z][A-Za-z0-9-]{0,20}\s*", kind):
        return rest.strip()
    return value.strip()


def feedback_report(text: str) -> tuple[str, list[str], dict[str, str]]:
    """Feedback-Type, the Original-Rcpt-To addresses, and the other fields of an ARF report."""
    ftype = ""
    rcpts: list[str] = []
    other: dict[str, str] = {}
    for name, value in fields(text):
        if name == "feedback-type":
            ftype = value.strip().lower()
        elif name in ("original-rcpt-to", "removed-recipient"):
            addr = address_of(value)
            if addr and addr not in rcpts:
                rcpts.append(addr)
        else:
            other.setdefault(name, value)
    return ftype, rcpts, other
