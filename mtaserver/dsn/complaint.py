"""Complaints: RFC 5965 feedback reports and the provider variants that bend it.

A feedback loop message may carry several reports (one per complained-about message),
and most providers redact ``Original-Rcpt-To``. The recipient then comes from the
returned message itself: Microsoft's ``X-HmXmrOriginalRecipient`` (JMRP), an
``X-Original-To`` / ``Delivered-To`` our own prepare stage or the provider left, or its
``To:`` when that names exactly one real address. When nothing names one, the report is
still a complaint with no recipients, and inbound attributes it by the VERP token or
Message-ID of the returned message. Only abuse-like feedback types count: ``not-spam``
and ``auth-failure`` reports are not complaints about the recipient's wishes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mtaserver.dsn import mime, report, text
from mtaserver.dsn.recipient import ParsedRecipient
from mtaserver.model import BounceKind, BounceReport

COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other", "complaint", "opt-out", ""})
_REDACTED_RE = re.compile(r"^(?:redacted|x+|\*+|unknown|undisclosed[-\w]*|recipient)$|\*", re.I)
_JMRP_SUBJECT_RE = re.compile(r"complaint about message from|^\s*\[?jmrp", re.I)
# Headers of the returned message that name its recipient, most specific first.
_RCPT_HEADERS = (
    "X-HmXmrOriginalRecipient",
    "X-Original-Rcpt-To",
    "X-Original-To",
    "X-Rcpt-To",
    "Delivered-To",
    "Envelope-To",
    "To",
)


def is_jmrp(msg: mime.Message, originals: Sequence[mime.Message]) -> bool:
    """A feedback message without an ARF part (old Microsoft JMRP, some forwarders)."""
    if any(o.get("X-HmXmrOriginalRecipient") is not None for o in originals):
        return True
    return bool(originals) and bool(_JMRP_SUBJECT_RE.search(mime.header(msg, "Subject")))


def _usable(addr: str) -> bool:
    local = addr.rsplit("@", 1)[0]
    return not _REDACTED_RE.search(local)


def recipient_of(original: mime.Message | None) -> str | None:
    """The one recipient the returned message names, if it names exactly one."""
    if original is None:
        return None
    for name in _RCPT_HEADERS:
        found: list[str] = [
            a for a in text.ADDR_RE.findall(mime.header(original, name, 2000)) if _usable(a)
        ]
        if len({a.lower() for a in found}) == 1:
            return found[0]
        if len(found) > 1:
            return None  # several recipients: the report does not say which complained
    return None


def parse(
    arf_texts: Sequence[str],
    originals: Sequence[mime.Message],
    orig_id: str | None,
    limit: int,
) -> BounceReport | None:
    """The complaint report; ``None`` when every report is of a non-complaint type."""
    reports = [report.feedback_report(t) for t in arf_texts] or [("abuse", [], {})]
    rcpts: list[tuple[str, str]] = []
    counted = 0
    for i, (ftype, named, _) in enumerate(reports):
        if ftype not in COMPLAINT_TYPES:
            continue
        counted += 1
        addrs = [a for a in named if _usable(a)]
        if not addrs:
            original = originals[i] if i < len(originals) else None
            if original is None and len(reports) == 1 and originals:
                original = originals[0]
            found = recipient_of(original)
            addrs = [found] if found else []
        rcpts.extend((a, ftype or "abuse") for a in addrs)
    if not counted:
        return None
    seen: set[str] = set()
    out = []
    for addr, ftype in rcpts[:limit]:
        if addr.lower() in seen:
            continue
        seen.add(addr.lower())
        out.append(
            ParsedRecipient(
                recipient=addr,
                action="complaint",
                status=None,
                reply_code=None,
                diagnostic=f"feedback-type={ftype}",
                remote_mta=None,
                category="complaint",
                kind=BounceKind.SOFT,
                reason="feedback",
            )
        )
    return BounceReport(recipients=tuple(out), is_complaint=True, original_message_id=orig_id)
