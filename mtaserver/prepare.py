"""Cleanup of a submitted message (Postfix's ``cleanup(8)``), as a pure function.

The header section is handled as raw byte fields and every field we do not change is kept
byte for byte: re-serializing headers through the ``email`` package can turn an encoded
newline into a real injected header (CVE-2024-6923, PITFALLS). We add ``Received:``
(top), ``Message-ID:`` and ``Date:`` when missing, remove ``Bcc:`` and our control headers
``X-Mtaserver-Track`` / ``X-Mtaserver-Campaign`` (returning their values), and cap the
header size and MIME nesting depth without ever building a MIME tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from mtaserver.model import Submission

_FIELD_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_MSGID = re.compile(rb"<([^<>\s]+)>")
_HELO_SAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")
_BOUNDARY = re.compile(rb'boundary[ \t]*=[ \t]*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.I)
_MULTIPART = re.compile(rb"^[ \t]*multipart/", re.I)
REMOVED = (b"bcc", b"resent-bcc", b"x-mtaserver-track", b"x-mtaserver-campaign")


class PrepareError(ValueError):
    """The message cannot be accepted as it is; ``reply`` is the SMTP reply to send."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Header:
    """The header section as raw fields (each with its folded lines and final CRLF)."""

    fields: tuple[bytes, ...]
    body: bytes  # everything after the header section (and its blank line, if any)
    separated: bool  # a blank line ended the header section
    size: int  # bytes of the header section

    def values(self, name: bytes) -> list[bytes]:
        """Unfolded values of every field called ``name`` (lower-case)."""
        return [field_value(f) for f in self.fields if field_name(f) == name]


@dataclass(frozen=True, slots=True)
class Cleaned:
    data: bytes
    message_id: str  # without angle brackets
    track: str | None  # X-Mtaserver-Track value, if the message had one
    campaign: str | None  # X-Mtaserver-Campaign value
    # ``data`` already split: its header fields and its body, so DKIM need not parse again.
    fields: tuple[bytes, ...] = ()
    body: bytes = b""


def field_name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def field_value(field: bytes) -> bytes:
    value = field.split(b":", 1)[1] if b":" in field else b""
    return re.sub(rb"\r\n([ \t])", rb"\1", value).strip()


def split_header(data: bytes, max_header_size: int | None = None) -> Header:
    """Split CRLF-normalized message data into raw header fields and the body.

    A line that is neither a field nor a continuation ends the header section (it then
    belongs to the body); raise PrepareError when the section exceeds ``max_header_size``.
    """
    limit = max_header_size
    fields: list[bytearray] = []
    pos = 0
    separated = False
    while pos < len(data):
        nl = data.find(b"\r\n", pos)
        line_end = len(data) if nl < 0 else nl + 2
        line = data[pos:line_end]
        if line == b"\r\n":
            separated = True
            pos = line_end
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif _FIELD_NAME.match(line):
            fields.append(bytearray(line))
        else:
            break
        pos = line_end
        if limit is not None and pos > limit:
            raise PrepareError("552 5.3.4 Message header size exceeds limit")
    header_size = pos
    for f in fields:
        if not f.endswith(b"\r\n"):
            f += b"\r\n"
    return Header(
        fields=tuple(bytes(f) for f in fields),
        body=data[pos:],
        separated=separated,
        size=header_size,
    )


def sanitize_helo(helo: str) -> str:
    """A HELO name safe to put in a header: no spaces, parentheses, or control characters."""
    clean = _HELO_SAFE.sub("", helo)[:255]
    return clean or "unknown"


def received_field(sub: Submission, queue_id: str, hostname: str) -> bytes:
    """Our trace field. ``for <rcpt>`` only with one recipient, so Bcc lists never leak.

    Mail from the HTTP send API (``listener == "api"``) says ``with HTTP``/``HTTPS`` and
    names only the client address: it never spoke SMTP, so it has no HELO to report.
    """
    ip = _HELO_SAFE.sub("", sub.client_ip)
    if sub.listener == "api":
        with_ = "HTTPS" if sub.tls_version else "HTTP"
        source = f"[{ip}]"
    else:
        with_ = "ESMTP"
        if sub.tls_version:
            with_ += "S"
        if sub.user is not None:
            with_ += "A"
        source = f"{sanitize_helo(sub.helo)} ([{ip}])"
    tls = f" ({sub.tls_version})" if sub.tls_version else ""
    for_ = f"\r\n\tfor <{sub.recipients[0]}>" if len(sub.recipients) == 1 else ""
    date = format_datetime(datetime.fromtimestamp(sub.received_at, UTC))
    text = (
        f"Received: from {source}\r\n"
        f"\tby {hostname} (mtaserver) with {with_}{tls} id {queue_id}{for_};\r\n"
        f"\t{date}\r\n"
    )
    return text.encode("utf-8", "replace")


def mime_depth(header: Header, max_depth: int) -> int:
    """Nesting depth of multipart boundaries, found by a line scan (no MIME tree is built).

    Stops and returns ``max_depth + 1`` as soon as the cap is passed.
    """
    top = _multipart_boundary(header.fields)
    if top is None:
        return 0
    stack = [top]
    depth = 1
    lines = header.body.split(b"\r\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith(b"--") or not stack:
            continue
        text = line.rstrip(b" \t")
        for level in range(len(stack) - 1, -1, -1):
            b = stack[level]
            if text == b"--" + b + b"--":
                del stack[level:]
                break
            if text == b"--" + b:
                del stack[level + 1 :]
                part_fields: list[bytes] = []
                while i < len(lines) and lines[i] != b"":
                    if lines[i][:1] in (b" ", b"\t") and part_fields:
                        part_fields[-1] += b"\r\n" + lines[i]
                    else:
                        part_fields.append(lines[i])
                    i += 1
                inner = _multipart_boundary(tuple(f + b"\r\n" for f in part_fields))
                if inner is not None:
                    stack.append(inner)
                    depth = max(depth, len(stack))
                    if depth > max_depth:
                        return depth
                break
    return depth


def _multipart_boundary(fields: tuple[bytes, ...]) -> bytes | None:
    for f in fields:
        if field_name(f) == b"content-type":
            value = field_value(f)
            if not _MULTIPART.match(value):
                return None
            m = _BOUNDARY.search(value)
            if m is None:
                return None
            return m.group(1) if m.group(1) is not None else m.group(2)
    return None


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def cleanup(
    sub: Submission,
    *,
    queue_id: str,
    hostname: str,
    max_header_size: int | None = None,
    max_mime_depth: int = 50,
    header: Header | None = None,
) -> Cleaned:
    """Return the message as it will be queued (before tracking and DKIM).

    ``header`` is ``split_header(sub.data, max_header_size)`` when the caller already has
    it (the submission handler splits it for its From: check): one split per message.
    """
    if header is None:
        header = split_header(sub.data, max_header_size)
    if mime_depth(header, max_mime_depth) > max_mime_depth:
        raise PrepareError("554 5.6.0 MIME nesting too deep")
    track = campaign = None
    kept: list[bytes] = []
    message_id = ""
    has_date = False
    for f in header.fields:
        name = field_name(f)
        if name in REMOVED:
            if name == b"x-mtaserver-track":
                track = _text(field_value(f))
            elif name == b"x-mtaserver-campaign":
                campaign = _text(field_value(f))[:200] or None
            continue
        if name == b"message-id" and not message_id:
            m = _MSGID.search(field_value(f))
            message_id = _text(m.group(1)) if m else _text(field_value(f))[:250]
        elif name == b"date":
            has_date = True
        kept.append(f)
    added: list[bytes] = []
    if not message_id:
        message_id = f"{queue_id}@{hostname}"
        added.append(f"Message-ID: <{message_id}>\r\n".encode())
    if not has_date:
        date = format_datetime(datetime.fromtimestamp(sub.received_at, UTC))
        added.append(f"Date: {date}\r\n".encode())
    fields = (received_field(sub, queue_id, hostname), *kept, *added)
    parts = [*fields]
    if header.separated or header.body:
        parts.append(b"\r\n")
    parts.append(header.body)
    return Cleaned(
        data=b"".join(parts),
        message_id=message_id,
        track=track,
        campaign=campaign,
        fields=fields,
        body=header.body,
    )
