"""Reading untrusted MIME with hard limits.

Bounces come from anyone on the internet, so everything here is bounded: the bytes looked
at, the length of a line, the size of the top-level header block, MIME depth and the number
of parts. Python's ``email`` package is used for the structure, but only through a walk of
our own that stops at ``max_depth``; deep nesting that still trips the package (it recurses
in places) is caught by the caller and parsed as flat text instead.
"""

from __future__ import annotations

import email.header
import email.message
import html
import quopri
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import compat32

from mtaserver.dsn.limits import ParseLimits

Message = email.message.Message

_TAG_RE = re.compile(r"<(?:br|p|div|tr|li|/p|/div|/tr|/li|/h\d)\b[^>]*>", re.IGNORECASE)
_ANY_TAG_RE = re.compile(r"<[^>]{0,500}>")


def sanitize(raw: bytes, limits: ParseLimits) -> bytes:
    """Cut the input to the limits: total size, line length, top-level header size."""
    raw = raw[: limits.max_bytes]
    lines = raw.split(b"\n")
    out: list[bytes] = []
    header_bytes = 0
    in_header = True
    for line in lines:
        if len(line) > limits.max_line:
            line = line[: limits.max_line]
        if in_header:
            if line in (b"", b"\r"):
                in_header = False
            else:
                header_bytes += len(line)
                if header_bytes > limits.max_header_bytes:
                    continue  # drop the excess of an oversized header block
        out.append(line)
    return b"\n".join(out)


def parse_message(raw: bytes) -> Message:
    return BytesParser(policy=compat32).parsebytes(raw)


@dataclass(frozen=True, slots=True)
class Part:
    """One leaf (or report) part met during a bounded walk."""

    content_type: str
    message: Message
    depth: int
    after_original: bool  # comes after an attached original message


def walk(msg: Message, limits: ParseLimits) -> Iterator[Part]:
    """Depth-first walk that never goes deeper than ``max_depth`` nor past ``max_parts``."""
    count = 0
    seen_original = False
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack and count < limits.max_parts:
        part, depth = stack.pop()
        count += 1
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
            yield Part(ctype, part, depth, seen_original)
            seen_original = True
            continue
        if ctype in (
            "message/delivery-status",
            "message/feedback-report",
            "message/global-delivery-status",
            "message/xdelivery-status",
        ):
            yield Part(ctype, part, depth, seen_original)
            continue
        if part.is_multipart():
            if depth >= limits.max_depth:
                continue
            payload = part.get_payload()
            if isinstance(payload, list):
                children = [p for p in payload[: limits.max_parts] if isinstance(p, Message)]
                stack.extend((c, depth + 1) for c in reversed(children))
            continue
        if ctype.startswith("multipart/"):
            ctype = "text/plain"  # boundary lost to a broken header: read it as text
        yield Part(ctype, part, depth, seen_original)


def charset_of(part: Message) -> str:
    cs = part.get_content_charset() or "utf-8"
    try:
        "".encode(cs)
    except (LookupError, ValueError):
        return "latin-1"
    return cs


def part_bytes(part: Message, limits: ParseLimits) -> bytes:
    """The decoded payload of a leaf part (base64/QP undone), bounded."""
    payload = part.get_payload()
    if isinstance(payload, list):
        # message/delivery-status is parsed into sub-messages by the email package.
        chunks = []
        for sub in payload[: limits.max_parts]:
            if isinstance(sub, Message):
                chunks.append(
                    "\n".join(f"{k}: {v}" for k, v in sub.items()).encode("utf-8", "replace")
                )
        return b"\n\n".join(chunks)[: limits.max_bytes]
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if not isinstance(payload, str):
        return b""
    try:
        data = payload.encode("ascii", "surrogateescape")[: limits.max_bytes]
    except UnicodeEncodeError:
        data = payload.encode("utf-8", "replace")[: limits.max_bytes]
    if cte == "base64":
        try:
            decoded = part.get_payload(decode=True)
        except Exception:
            return data
        return decoded if isinstance(decoded, bytes) else data
    if cte == "quoted-printable":
        try:
            return quopri.decodestring(data)
        except Exception:
            return data
    return data


def part_text(part: Message, limits: ParseLimits) -> str:
    """Readable text of a leaf part: decoded, charset applied (invalid bytes replaced)."""
    data = part_bytes(part, limits)
    text = data.decode(charset_of(part), "replace")
    if part.get_content_type() == "text/html":
        text = html_to_text(text)
    return text


def html_to_text(text: str) -> str:
    text = _TAG_RE.sub("\n", text)
    text = _ANY_TAG_RE.sub("", text)
    return html.unescape(text)


def header(msg: Message, name: str, limit: int = 1000) -> str:
    """A header value as text, cut to ``limit`` characters before any decoding.

    Encoded words are decoded only within that bound (long encoded headers parse in
    quadratic time in the email package).
    """
    value = msg.get(name)
    if value is None:
        return ""
    raw = str(value)[:limit]
    if "=?" not in raw:
        return raw
    try:
        parts = email.header.decode_header(raw)
        return "".join(
            p.decode(cs or "latin-1", "replace") if isinstance(p, bytes) else p for p, cs in parts
        )[:limit]
    except (LookupError, ValueError, UnicodeError):
        return raw
