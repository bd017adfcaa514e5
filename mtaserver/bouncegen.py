"""RFC 3464 delivery status notifications for the envelope sender.

One DSN per message (every failed recipient of it in one report), in the shape Postfix's
``bounce(8)`` sends: ``multipart/report; report-type=delivery-status`` with a human part,
the ``message/delivery-status`` part and the original headers as ``text/rfc822-headers``.
The same builder makes the "delayed" warning (Action: delayed, Will-Retry-Until).

Bytes are assembled by hand rather than through ``email.generator``: the original headers
are copied verbatim (re-serializing them is how encoded newlines become injected headers,
see PITFALLS), and every field we write is sanitized to one printable line.

Never a DSN to the null sender, never a DSN about a DSN: the caller checks ``is_dsn`` and
the builder checks again (flag and content), returning ``None``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Protocol

from mtaserver.model import SmtpReply

MAX_HEADERS = 64 * 1024  # original headers copied into the report, at most
_CTRL = re.compile(r"[\x00-\x1f\x7f]+")
_DSN_CT = re.compile(
    rb"^content-type:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*", re.IGNORECASE | re.MULTILINE
)
_MSGID = re.compile(rb"^message-id:\s*(<[^<>\s]{1,250}>)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One recipient the report is about."""

    address: str
    status: str  # RFC 3463, e.g. "5.1.1"; "4.x.x" for a delay warning
    diagnostic: str = ""  # e.g. str(SmtpReply): "550 5.1.1 no such user"
    diagnostic_type: str = "smtp"  # "smtp" for a remote reply; "X-Mtaserver" for ours
    remote_mta: str | None = None  # MX host name that gave the reply
    last_attempt: float | None = None  # unix time
    will_retry_until: float | None = None  # delay warnings: when the queue gives up
    action: str = "failed"  # "failed" or "delayed"


@dataclass(frozen=True, slots=True)
class DsnRequest:
    """What to report about one message."""

    queue_id: str
    sender: str  # the original envelope sender: the DSN goes there
    original: bytes  # the original message (only its header block is used)
    arrival: float  # when we accepted it (unix time)
    recipients: tuple[DsnRecipient, ...]
    is_dsn: bool = False  # the original is itself a DSN


@dataclass(frozen=True, slots=True)
class DsnMessage:
    """A DSN ready to enqueue: MAIL FROM <> (null sender), RCPT TO ``recipient``."""

    recipient: str
    data: bytes
    message_id: str  # without angle brackets


def original_headers(data: bytes) -> bytes:
    """The header block of ``data`` (CRLF line ends, no final blank line), capped."""
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    if len(head) > MAX_HEADERS:
        cut = head.rfind(b"\r\n", 0, MAX_HEADERS)
        head = head[: cut + 2] if cut > 0 else b""
    if head and not head.endswith(b"\r\n"):
        head += b"\r\n"
    return head


def looks_like_dsn(data: bytes) -> bool:
    """True when the message's own Content-Type says it is a delivery status report."""
    head = original_headers(data)
    for m in _DSN_CT.finditer(head):
        value = re.sub(rb"\s+", b"", m.group(0).lower())
        if (
            b"multipart/report" in value
            and b"report-type=" in value
            and b"delivery-status" in value.split(b"report-type=", 1)[1][:20]
        ):
            return True
    return False


def _line(text: str, limit: int = 900) -> str:
    """One printable line: control characters (CR/LF included) become spaces."""
    return _CTRL.sub(" ", text).strip()[:limit]


def _fold(name: str, value: str) -> str:
    """``Name: value`` folded at spaces so no line exceeds 78 characters where possible."""
    words = value.split(" ")
    lines: list[str] = []
    cur = f"{name}:"
    for w in words:
        if len(cur) + 1 + len(w) > 78 and cur.strip() and not cur.endswith(":"):
            lines.append(cur)
            cur = " " + w
        else:
            cur = f"{cur} {w}"
    lines.append(cur)
    return "\r\n".join(lines)


def _date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC))


def _addr_type(address: str) -> str:
    return "rfc822" if address.isascii() else "utf-8"


def build_dsn(
    req: DsnRequest, *, hostname: str, now: float, delayed: bool | None = None
) -> DsnMessage | None:
    """The DSN for ``req``, or None when none may be sent.

    ``delayed=True`` makes every recipient ``Action: delayed`` (the warning variant);
    ``None`` keeps each recipient's own ``action`` and words the report as a warning only
    when all of them are delayed.
    """
    if not req.sender or req.sender == "<>" or not req.recipients:
        return None
    if req.is_dsn or looks_like_dsn(req.original):
        return None
    actions = ["delayed" if delayed else r.action for r in req.recipients]
    if delayed is None:
        delayed = all(a == "delayed" for a in actions)
    hostname = _line(hostname) or "localhost"
    headers = original_headers(req.original)
    mid_match = _MSGID.search(headers)
    kind = "delay" if delayed else "dsn"
    digest = hashlib.sha256(
        b"%s|%s|%d|%s" % (req.queue_id.encode(), kind.encode(), int(now * 1000), headers)
    ).hexdigest()
    message_id = f"{kind}.{_line(req.queue_id)}.{digest[:12]}@{hostname}"
    boundary = f"=_mtaserver_{digest[12:36]}"

    # -- human-readable part -------------------------------------------------------------
    human: list[str] = [f"This is the mail system at host {hostname}.", ""]
    if delayed:
        human += [
            "####################################################################",
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
            "####################################################################",
            "",
            "Your message could not be delivered yet to the recipients below.",
            "The mail system will keep trying.",
        ]
    else:
        human += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
        ]
    human.append("")
    for r in req.recipients:
        why = _line(r.diagnostic) or f"status {r.status}"
        where = f"host {_line(r.remote_mta)} said: " if r.remote_mta else ""
        human.append(f"<{_line(r.address)}>: {where}{why}")
        if delayed and r.will_retry_until is not None:
            human.append(f"    (will retry until {_date(r.will_retry_until)})")
    human.append("")

    # -- message/delivery-status ---------------------------------------------------------
    status: list[str] = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Mtaserver-Queue-ID: {_line(req.queue_id)}",
        f"Arrival-Date: {_date(req.arrival)}",
    ]
    for r, action in zip(req.recipients, actions, strict=True):
        addr = _line(r.address)
        status += [
            "",
            f"Final-Recipient: {_addr_type(addr)}; {addr}",
            f"Action: {_line(action, 20) or 'failed'}",
            f"Status: {_line(r.status, 20)}",
        ]
        if r.remote_mta:
            status.append(f"Remote-MTA: dns; {_line(r.remote_mta)}")
        if r.diagnostic:
            dtype = _line(r.diagnostic_type, 40) or "smtp"
            status.append(_fold("Diagnostic-Code", f"{dtype}; {_line(r.diagnostic)}"))
        status.append(f"Last-Attempt-Date: {_date(r.last_attempt or now)}")
        if action == "delayed" and r.will_retry_until is not None:
            status.append(f"Will-Retry-Until: {_date(r.will_retry_until)}")
    status.append("")

    # -- envelope of the report ----------------------------------------------------------
    sender = _line(req.sender)
    top = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        "Subject: "
        + (
            "Delayed Mail (still being retried)"
            if delayed
            else "Undelivered Mail Returned to Sender"
        ),
        f"Date: {_date(now)}",
        f"Message-ID: <{message_id}>",
    ]
    if mid_match:
        orig_mid = mid_match.group(1).decode("ascii", "replace")
        top += [f"In-Reply-To: {orig_mid}", f"References: {orig_mid}"]
    top += [
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
    ]
    crlf = "\r\n"
    body = bytearray(b"This is a MIME-encapsulated message.\r\n\r\n")
    body += f"--{boundary}\r\n".encode()
    body += b"Content-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n"
    body += b"Content-Transfer-Encoding: 8bit\r\n\r\n"
    body += crlf.join(human).encode("utf-8") + b"\r\n"
    body += f"--{boundary}\r\n".encode()
    body += b"Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n"
    body += b"\r\n"
    body += crlf.join(status).encode("utf-8") + b"\r\n"
    body += f"--{boundary}\r\n".encode()
    desc = "Undelivered Message Headers" if not delayed else "Delayed Message Headers"
    body += f"Content-Description: {desc}\r\nContent-Type: text/rfc822-headers\r\n".encode()
    if not headers.isascii():
        body += b"Content-Transfer-Encoding: 8bit\r\n"
    body += b"\r\n" + headers
    body += f"\r\n--{boundary}--\r\n".encode()
    if not body.isascii():
        top.append("Content-Transfer-Encoding: 8bit")
    out = crlf.join(top).encode("utf-8") + b"\r\n\r\n" + bytes(body)
    return DsnMessage(recipient=sender, data=out, message_id=message_id)


class _DsnRecipientLike(Protocol):
    @property
    def address(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def reply(self) -> SmtpReply: ...
    @property
    def remote_mta(self) -> str | None: ...


class _DsnRequestLike(Protocol):
    @property
    def queue_id(self) -> str: ...
    @property
    def sender(self) -> str: ...
    @property
    def original(self) -> bytes: ...
    @property
    def received_at(self) -> float: ...
    @property
    def recipients(self) -> Sequence[_DsnRecipientLike]: ...
    @property
    def now(self) -> float: ...


class DsnBuilder:
    """Adapter for the scheduler's ``DsnBuilder`` protocol: ``build(request) -> bytes``.

    Returns ``b""`` when no DSN may be sent (null sender, or the original is a DSN).
    A recipient with a ``remote_mta`` gets an ``smtp;`` diagnostic, others (expiry, DNS)
    an ``X-Mtaserver;`` one.
    """

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname

    def build(self, request: _DsnRequestLike) -> bytes:
        recipients = tuple(
            DsnRecipient(
                address=r.address,
                status=r.status
                or r.reply.enhanced
                or ("5.0.0" if r.reply.code >= 500 else "4.0.0"),
                diagnostic=str(r.reply),
                diagnostic_type="smtp" if r.remote_mta else "X-Mtaserver",
                remote_mta=r.remote_mta,
                last_attempt=request.now,
                action=r.action,
            )
            for r in request.recipients
        )
        dsn = build_dsn(
            DsnRequest(
                queue_id=request.queue_id,
                sender=request.sender,
                original=request.original,
                arrival=request.received_at,
                recipients=recipients,
            ),
            hostname=self._hostname,
            now=request.now,
        )
        return dsn.data if dsn is not None else b""
