"""SMTP replies as values: parsing, disposition, retry hints, and local failures.

Everything aiosmtplib raises is translated here into an ``SmtpReply`` so the rest of
delivery deals only in values (rule 6: third-party exceptions are translated where they
enter; when in doubt, defer).
"""

from __future__ import annotations

import re
import ssl

import aiosmtplib

from mtaserver.model import Disposition, SmtpReply

_SURROGATE = re.compile("[\ud800-\udfff]")
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}
_RETRY_HINT = re.compile(
    r"(?:retry|try(?:\s+again)?|come\s+back|wait)\s+(?:in|after|later\s+in)?\s*"
    r"(\d{1,6})\s*(" + "|".join(sorted(_UNITS, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
MAX_RETRY_HINT = 86400.0


def parse_reply(code: int, message: str) -> SmtpReply:
    """An SMTP reply from its code and (possibly multi-line) text."""
    # aiosmtplib keeps bytes that are not UTF-8 (a Latin-1 "für") as lone surrogates, which
    # SQLite refuses to store: make them U+FFFD here, where the text enters.
    message = _SURROGATE.sub("\ufffd", message)
    lines = [line.strip() for line in message.replace("\r", "").split("\n") if line.strip()]
    enhanced: str | None = None
    texts: list[str] = []
    for line in lines:
        m = _ENHANCED.match(line)
        if m:
            if enhanced is None:
                enhanced = line[: m.end()]
            line = line[m.end() :].strip()
        texts.append(line)
    if enhanced is not None and enhanced[0] != str(code)[0]:
        enhanced = None  # RFC 3463: the class must match the reply code's
    return SmtpReply(code, " ".join(t for t in texts if t), enhanced)


def disposition_of(reply: SmtpReply) -> Disposition:
    """2xx delivered, 5xx bounced, everything else (4xx, odd codes) deferred."""
    if 200 <= reply.code < 300:
        return Disposition.DELIVERED
    if 500 <= reply.code < 600:
        return Disposition.BOUNCED
    return Disposition.DEFERRED


def retry_hint(text: str) -> float | None:
    """Seconds from "retry in 30 seconds"/"try again in 5 minutes" style hints."""
    m = _RETRY_HINT.search(text)
    if not m:
        return None
    seconds = int(m.group(1)) * _UNITS[m.group(2).lower()]
    return min(seconds, MAX_RETRY_HINT) if seconds > 0 else None


def local(enhanced: str, text: str, code: int = 451) -> SmtpReply:
    """A reply we synthesize for a local or network failure (never the exception text)."""
    return SmtpReply(code, text, enhanced)


def unexpected(what: str, command: str, code: int, message: str) -> SmtpReply | None:
    """A "refusal" in the 1xx-3xx range: no reply RFC 5321 allows there (aiosmtplib raises
    for anything but 250/251 to MAIL and RCPT, 354 to DATA, 250 to the final dot). Taken at
    face value a 2xx would read as delivered though the body was never sent: defer."""
    if code >= 400:
        return None
    return local(
        "4.5.0", f"{what} gave an unexpected reply to {command}: {parse_reply(code, message)}"
    )


def from_exception(exc: BaseException, what: str) -> SmtpReply:
    """Translate an exception raised while talking to ``what`` (e.g. "mx1.example [ip]")."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if exc.code > 0:
            return parse_reply(exc.code, exc.message)
        # aiosmtplib could not parse what the server sent (code -1): the remote's fault
        kind = "an overlong reply" if "too long" in exc.message else "a reply that is not SMTP"
        return local("4.5.0", f"{what} sent {kind}")
    if isinstance(exc, aiosmtplib.SMTPConnectTimeoutError):
        return local("4.4.1", f"timed out connecting to {what}")
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        return local("4.4.1", f"connection to {what} failed")
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return local("4.4.2", f"timed out talking to {what}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or "certificate verification failed"
        return local("4.7.5", f"TLS certificate of {what} not verified: {reason}")
    if isinstance(exc, ssl.SSLError):
        return local("4.7.5", f"TLS handshake with {what} failed")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError):
        return local("4.4.2", f"connection to {what} lost")
    if isinstance(exc, OSError):
        return local("4.4.2", f"network error talking to {what}")
    return local("4.3.0", f"local error talking to {what}")
