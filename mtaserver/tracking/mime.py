"""Find the text/html parts of a raw message as byte ranges, without re-serializing it.

Python's email generator re-folds and re-encodes headers it did not need to touch (and an
encoded newline in a header becomes a real one, the CVE-2024-6923 family). Tracking only
rewrites bodies of text/html parts, so this walker reads the MIME tree straight from the
bytes and reports where each HTML body lives; everything outside those ranges, headers
included, goes back on the wire byte for byte.
"""

from __future__ import annotations

import email.message
import re
from dataclasses import dataclass

MAX_DEPTH = 32
MAX_PARTS = 512
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD_START = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)


class MimeError(ValueError):
    """The structure is too deep, too wide or too broken to rewrite safely."""


@dataclass(frozen=True, slots=True)
class HeaderField:
    name: str  # lower-cased field name
    value: str  # unfolded value, decoded as latin-1 (never written back)
    start: int  # byte offset of the field's first line
    end: int  # byte offset just after the field's last line break


@dataclass(frozen=True, slots=True)
class HtmlPart:
    """The body of one text/html leaf: ``data[start:end]``, still transfer-encoded."""

    start: int
    end: int
    encoding: str  # lower-cased Content-Transfer-Encoding ("7bit" when absent)
    charset: str | None


def header_block(data: bytes, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """Return (end of the header fields, start of the body) for the entity at ``start``."""
    stop = len(data) if end is None else end
    if data.startswith(b"\r\n", start):
        return start, start + 2
    if data.startswith(b"\n", start):
        return start, start + 1
    m = _HEADER_END.search(data, start, stop)
    if m is None:
        return stop, stop
    # The field block ends after the last field's line break.
    brk = data.index(b"\n", m.start()) + 1
    return brk, m.end()


def header_fields(data: bytes, start: int, end: int) -> list[HeaderField]:
    """Split the raw header block ``data[start:end]`` into fields with their byte ranges."""
    fields: list[HeaderField] = []
    starts = [m for m in _FIELD_START.finditer(data, start, end)]
    # A line that starts with whitespace is a continuation, never a new field.
    for i, m in enumerate(starts):
        f_end = starts[i + 1].start() if i + 1 < len(starts) else end
        raw = data[m.end() : f_end]
        value = re.sub(rb"\r?\n[ \t]", b" ", raw).strip().decode("latin-1")
        fields.append(HeaderField(m.group(1).decode("latin-1").lower(), value, m.start(), f_end))
    return fields


def _content_info(fields: list[HeaderField]) -> tuple[str, str | None, str | None, str, bool]:
    """Content type, boundary, charset, transfer encoding, is-attachment of one entity."""
    msg = email.message.Message()
    ctype = next((f.value for f in fields if f.name == "content-type"), None)
    cte = next((f.value for f in fields if f.name == "content-transfer-encoding"), "7bit")
    disp = next((f.value for f in fields if f.name == "content-disposition"), "")
    if ctype is not None:
        msg["Content-Type"] = ctype
    boundary = msg.get_boundary()
    charset = msg.get_content_charset()
    attachment = disp.split(";", 1)[0].strip().lower() == "attachment"
    return msg.get_content_type(), boundary, charset, cte.strip().lower(), attachment


def html_parts(data: bytes) -> tuple[int, int, list[HtmlPart]]:
    """Walk the message; return (top header end, top body start, html leaves in order)."""
    h_end, b_start = header_block(data)
    out: list[HtmlPart] = []
    try:
        _walk(data, 0, h_end, b_start, len(data), 0, out)
    except RecursionError:
        raise MimeError("MIME structure too deep") from None
    return h_end, b_start, out


def _walk(
    data: bytes, h_start: int, h_end: int, b_start: int, end: int, depth: int, out: list[HtmlPart]
) -> None:
    if depth > MAX_DEPTH:
        raise MimeError("MIME structure too deep")
    ctype, boundary, charset, cte, attachment = _content_info(header_fields(data, h_start, h_end))
    if ctype.startswith("multipart/"):
        if not boundary:
            return
        for p_start, p_end in _split_multipart(data, b_start, end, boundary):
            if len(out) > MAX_PARTS:
                raise MimeError("too many MIME parts")
            ph_end, pb_start = header_block(data, p_start, p_end)
            _walk(data, p_start, ph_end, pb_start, p_end, depth + 1, out)
    elif ctype == "text/html" and not attachment:
        out.append(HtmlPart(b_start, end, cte, charset))


def _split_multipart(data: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int]]:
    """Byte ranges of the body parts; the line break before a delimiter belongs to it."""
    try:
        b = boundary.encode("ascii")
    except UnicodeEncodeError:
        raise MimeError("non-ASCII boundary") from None
    delim = re.compile(rb"^--" + re.escape(b) + rb"(--)?[ \t]*\r?$", re.M)
    parts: list[tuple[int, int]] = []
    part_start: int | None = None
    for m in delim.finditer(data, start, end):
        line_start = m.start()
        if part_start is not None:
            p_end = line_start
            if p_end > part_start and data[p_end - 1 : p_end] == b"\n":
                p_end -= 1
                if p_end > part_start and data[p_end - 1 : p_end] == b"\r":
                    p_end -= 1
            parts.append((part_start, max(p_end, part_start)))
        if m.group(1):
            return parts
        nl = data.find(b"\n", m.end(), end)
        part_start = end if nl < 0 else nl + 1
    # No close delimiter: the last part runs to the end.
    if part_start is not None and part_start < end:
        parts.append((part_start, end))
    return parts
