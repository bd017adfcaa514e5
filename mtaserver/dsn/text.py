"""Free-form bounces: finding failed recipients in human-readable text.

About half of real bounces carry no (usable) RFC 3464 report: qmail, old Exchange, Lotus
Notes, Yahoo, filtering gateways and many ISPs write prose. The approach here is positional,
not per-vendor: an address counts as a failed recipient only where such notices put one —
alone on its line (``<a@b>:``, ``* a@b``, ``a@b on <date>``), or right after a recipient
word (``Recipient:``, ``to``, ``for``, ``userid:``, ``RCPT TO:``, ``SMTP=``). Header lines,
sender lines, contact addresses and the notice's own addresses are ignored, and the scan
stops where the returned copy of the original message begins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ADDR = (
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+"
)
ADDR_RE = re.compile(ADDR)

# Where the returned copy of the original message starts: stop scanning there.
_CUT_RE = re.compile(
    r"below (?:this|the next) line is a copy|this is a copy of (?:the|your) message"
    r"|-{2,}\s*original message\s*-{2,}|original message (?:follows|headers|details|as received)"
    r"|the original message follows|message headers? follows?|header of the original message"
    r"|included is a copy of the message|here is a copy of the first part"
    r"|a summary of the undelivered message|your message reads \(in part\)"
    r"|the first \d+ lines of your original|the header and top \d+ lines|unsent message below"
    r"|returned mail follows|-{3,}\s*returned mail\s*-{3,}|message text follows"
    r"|below is a copy of the original|header of the source mail|mensaje original adjunto"
    r"|attachment is a copy of the message|the non-delivered message is attached"
    r"|^\s*>?\s*(?:return-path|received):",
    re.IGNORECASE | re.MULTILINE,
)
_HEADERISH_RE = re.compile(
    r"^\s*\*?\s*(?:from|to|cc|bcc|sender|reply-to|errors-to|return-path|message-id|in-reply-to"
    r"|references|subject|date|received|delivered-to|envelope-to|x-[\w-]+|list-[\w-]+"
    r"|mail from|envelope-from|sent)\s*:",
    re.IGNORECASE,
)
_SKIP_LINE_RE = re.compile(
    r"mail from|sender ok|mailto:|https?://|contact|reply to|send mail to|envelope-from"
    r"|\bhelo\b|\behlo\b|\btry\b|\binstead\b",
    re.IGNORECASE,
)
_SKIP_LOCAL = frozenset(
    {
        "postmaster",
        "mailer-daemon",
        "abuse",
        "root",
        "noreply",
        "no-reply",
        "daemon",
        "mailerdaemon",
    }
)
_BULLET = r"[\s*>\-•\"'<\[(|]*"
_AT_START_RE = re.compile(
    rf"^{_BULLET}({ADDR})(?=[>\"'\]]*\s*(?:$|[:;,(<\[]|on\s|\.\.\.|-\s|[45]\d\d\s))"
)
_PREFIX_RE = re.compile(r"^(?:smtp|rfc822|mailto|sip)[=:]", re.IGNORECASE)
_KEYWORD_BEFORE_RE = re.compile(
    r"(?:recipients?|address(?:es)?|addressed(?: to)?,?|addressee|\bto|\bfor|\buser|userid"
    r"|mailbox|account|attempts|error-for|smtp|rcpt to|deliver(?:ed|y)? to|undeliverable to)"
    r"\s*(?:\(s\))?\s*[:=]?\s*[<\"'\[(]*\s*$"
    r"|(?:size|quota|unknown|full|invalid|failed|rejected|disabled|exist|suspended)\s*:\s*<?$",
    re.IGNORECASE,
)
_ANGLE_RE = re.compile(rf"<({ADDR})>")
_ORIGINAL_RE = re.compile(
    rf"(?:\((?:ultimately )?(?:expanded|generated) from:?|originally addressed to|was addressed to"
    rf"|original address:)\s*<?({ADDR})>?\)?",
    re.IGNORECASE,
)
DELAY_RE = re.compile(
    r"\b(?:delayed|not yet been delivered|has not yet been|will (?:continue|be retried|retry"
    r"|keep trying)|still being retried|continue trying|no action is required"
    r"|do not need to resend|warning message only|this is (?:just |only )?a warning"
    r"|advisory[- ]only|postponed)\b",
    re.IGNORECASE,
)
CODE_RE = re.compile(r"(?:^|[\s:(\[<'\"=])([45]\d\d)(?=[\s\-:;,\]]|$)")
_HOST_RE = re.compile(r"\bhost\s+([A-Za-z0-9][A-Za-z0-9.-]*\.[A-Za-z]{2,})\.?\s*\[")


def cut_original(text: str) -> str:
    """The notice text before the returned copy of the original message."""
    m = _CUT_RE.search(text)
    return text[: m.start()] if m else text


@dataclass(slots=True)
class Found:
    address: str
    line: int  # index of the line where it was found
    context: list[str]
    alias: str | None = None  # the expanded address this original was reported under


def _usable(addr: str, ignore: frozenset[str]) -> bool:
    local = addr.rsplit("@", 1)[0].lower()
    return local not in _SKIP_LOCAL and addr.lower() not in ignore


def find_recipients(text: str, ignore: frozenset[str], limit: int) -> list[Found]:
    """Failed recipients named in notice text, each with the lines that follow it."""
    lines = text.splitlines()
    found: list[Found] = []
    index: dict[str, Found] = {}

    def add(addr: str, i: int) -> None:
        addr = _PREFIX_RE.sub("", addr.strip("'\"`."))
        key = addr.lower()
        if key in index or not _usable(addr, ignore) or len(found) >= limit:
            return
        f = Found(addr, i, [])
        index[key] = f
        found.append(f)

    for i, line in enumerate(lines):
        if _HEADERISH_RE.match(line):
            continue
        original = _ORIGINAL_RE.search(line)
        if original:
            addr = original.group(1)
            recent = [f for f in found if i - f.line <= 2]
            if recent and _usable(addr, ignore):
                prev = recent[-1]
                del index[prev.address.lower()]
                prev.alias = prev.address
                prev.address = addr
                index.setdefault(addr.lower(), prev)
            else:
                add(addr, i)
            line = line[: original.start()] + line[original.end() :]
        if _SKIP_LINE_RE.search(line):
            continue
        m = _AT_START_RE.match(line)
        if m:
            add(m.group(1), i)
        for am in ADDR_RE.finditer(line):
            start = am.start()
            pm = _PREFIX_RE.match(am.group(0))
            if pm:
                start += pm.end()
            if _KEYWORD_BEFORE_RE.search(line[max(0, start - 40) : start]):
                add(am.group(0), i)
        if "from" not in line.lower() and "sender" not in line.lower():
            for am in _ANGLE_RE.finditer(line):
                add(am.group(1), i)
    # Each recipient's context: its line and the following ones up to the next recipient.
    starts = sorted({f.line for f in found})
    for f in found:
        nxt = [s for s in starts if s > f.line]
        end = min(nxt[0] if nxt else len(lines), f.line + 8)
        f.context = lines[f.line : max(end, f.line + 1)]
    return found


def to_lines(text: str, ignore: frozenset[str]) -> list[str]:
    """Addresses on ``To:`` lines of the notice (last resort when nothing else names one)."""
    out: list[str] = []
    for line in text.splitlines():
        if re.match(r"^\s*to\s*:", line, re.IGNORECASE):
            out.extend(a for a in ADDR_RE.findall(line) if _usable(a, ignore))
    return out


def reply_code(text: str) -> int | None:
    m = CODE_RE.search(text)
    return int(m.group(1)) if m else None


def remote_host(text: str) -> str | None:
    m = _HOST_RE.search(text)
    return m.group(1).lower() if m else None
