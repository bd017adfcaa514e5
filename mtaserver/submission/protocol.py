"""The SMTP session: aiosmtpd's ``SMTP`` with the hardening it lacks (PITFALLS).

- RFC 3463 enhanced status codes on every reply (aiosmtpd's own replies get one added);
- idle timeout reset while DATA is streaming, and a maximum session time, both answered
  ``421 4.4.2`` before the close;
- a per-IP cap on concurrent sessions (``421 4.7.0`` at connect);
- DATA read here: only ``<CRLF>.<CRLF>`` ends it; bare LF normalized to CRLF or rejected;
  bare CR and NUL rejected (``550 5.6.0``); size enforced while reading (``552 5.3.4``);
- control characters and invalid UTF-8 in HELO/EHLO/MAIL/RCPT answer 501, and source
  routes (which aiosmtpd would silently drop) answer ``553 5.7.1``;
- an unexpected exception answers a generic ``451 4.3.0`` (``452 4.3.1`` when storage is
  full) instead of aiosmtpd's ``500`` with the exception text.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP

from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv
from mtaserver.submission.address import bad_argument, has_source_route
from mtaserver.submission.limits import ConnectionLimiter, SessionRegistry

log = get_logger("submission")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(?: |$)")
_DEFAULT_ENHANCED = {
    "220": "2.0.0",
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "252": "2.5.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "538": "5.7.11",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.0",
    "555": "5.5.4",
}
_NO_ENHANCED = {"334", "354"}
INTERNAL_ERROR = "451 4.3.0 Internal error, try again later"
STORAGE_FULL = "452 4.3.1 Insufficient system storage, try again later"
STORAGE_ERROR = "451 4.3.0 Temporary storage failure, try again later"


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """One listening socket's security posture."""

    name: str  # "submission", "submissions", "plain"
    implicit_tls: bool = False  # TLS from the first byte (465)
    starttls: bool = True  # offer STARTTLS (needs a certificate)
    require_tls: bool = True  # refuse MAIL/AUTH before STARTTLS


@dataclass(frozen=True, slots=True)
class SessionSettings:
    hostname: str
    max_message_size: int
    idle_timeout: float
    max_session_time: float
    bare_newline: str  # "normalize" | "reject"
    trusted_networks: tuple[Network, ...] = ()


def storage_reply(exc: BaseException) -> str:
    """The reply for a storage failure: 452 when full, else 451; never the error text."""
    if isinstance(exc, StorageError):
        return STORAGE_FULL if exc.full else STORAGE_ERROR
    if isinstance(exc, OSError) and exc.errno == 28:  # ENOSPC
        return STORAGE_FULL
    return INTERNAL_ERROR


def is_trusted(ip: str, networks: tuple[Network, ...]) -> bool:
    if not networks:
        return False
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


class SubmissionSMTP(SMTP):
    """One client session. Per-session policy state lives here; the handler reads it."""

    def __init__(
        self,
        handler: Any,
        *,
        listener: ListenerSpec,
        settings: SessionSettings,
        connections: ConnectionLimiter,
        tls_context: ssl.SSLContext | None,
        sessions: SessionRegistry[SubmissionSMTP] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        starttls_ctx = tls_context if (listener.starttls and not listener.implicit_tls) else None
        super().__init__(
            handler,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.hostname,
            ident="ESMTP",
            tls_context=starttls_ctx,
            require_starttls=bool(starttls_ctx) and listener.require_tls,
            timeout=settings.idle_timeout,
            auth_required=False,
            # With implicit TLS the transport is already encrypted; aiosmtpd only knows
            # about STARTTLS, so it must not insist on it.
            auth_require_tls=not listener.implicit_tls,
            loop=loop or asyncio.get_running_loop(),
        )
        self.listener = listener
        self.settings = settings
        self._connections = connections
        self.client_ip = ""
        self.trusted = False
        self.user: Any = None  # auth.User once authenticated
        self.busy = False  # a handler is committing: timeouts wait for its reply
        self.in_data = False  # DATA is streaming in
        self._last_rx = 0.0  # loop time of the last bytes received
        self._sessions = sessions if sessions is not None else SessionRegistry()
        self._registered = False
        self._refused = False
        self._greeted = False
        self._in_ehlo = False
        self._close_after_reply: str | None = None
        self._session_timer: asyncio.TimerHandle | None = None

    # -- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._registered:
            self._registered = True
            peer = transport.get_extra_info("peername")
            self.client_ip = str(peer[0]) if peer else ""
            self.trusted = is_trusted(self.client_ip, self.settings.trusted_networks)
            if not self._connections.acquire(self.client_ip):
                self._refused = True
            self._session_timer = self.loop.call_later(
                self.settings.max_session_time, self._session_expired
            )
            self._sessions.add(self)
            observer = getattr(self.event_handler, "observer", None)
            if observer is not None:
                observer.session_started(self.listener.name)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._registered:
            self._registered = False
            if not self._refused:
                self._connections.release(self.client_ip)
            if self._session_timer is not None:
                self._session_timer.cancel()
            self._sessions.discard(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self._refused:
            log.warning(kv(event="connection_refused", client_ip=self.client_ip, reason="per-ip"))
            await self.push("421 4.7.0 Too many connections from your address, try later")
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    @property
    def tls_version(self) -> str | None:
        if self.transport is None:
            return None
        obj = self.transport.get_extra_info("ssl_object")
        return str(obj.version()) if obj is not None else None

    @property
    def encrypted(self) -> bool:
        return self.listener.implicit_tls or self._tls_protocol is not None

    # -- timeouts ------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._last_rx = self.loop.time()
        super().data_received(data)

    def _timeout_cb(self) -> None:
        if self.busy:
            self._reset_timeout()
            return
        # DATA is read in large chunks, so count any bytes received as activity
        remaining = self._last_rx + self.settings.idle_timeout - self.loop.time()
        if self.in_data and remaining > 0.01:
            self._reset_timeout(remaining)
            return
        log.info(kv(event="timeout", kind="idle", client_ip=self.client_ip))
        self._say_and_close("421 4.4.2 Idle timeout exceeded, closing connection")

    def _session_expired(self) -> None:
        line = "421 4.4.2 Maximum session time exceeded, closing connection"
        if self.busy:
            self._close_after_reply = line
            return
        log.info(kv(event="timeout", kind="session", client_ip=self.client_ip))
        self._say_and_close(line)

    def shutdown(self) -> None:
        """Server stopping: close now if idle, else right after the transaction's reply."""
        line = "421 4.3.2 Service shutting down, try again later"
        if self.busy or self.in_data:
            self._close_after_reply = line
        else:
            self._say_and_close(line)

    def _say_and_close(self, line: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            self._writer.write(line.encode("ascii") + b"\r\n")
        except Exception:  # the peer may already be gone
            log.debug(kv(event="write_failed", client_ip=self.client_ip))
        transport.close()

    # -- replies -------------------------------------------------------------------------
    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            await super().push(self._enhanced(status))
        else:
            await super().push(status)

    def _enhanced(self, status: str) -> str:
        greeting = not self._greeted
        self._greeted = True
        code, sep, text = status[:3], status[3:4], status[4:]
        if not code.isdigit() or sep not in (" ", "-", ""):
            return status
        if code in _NO_ENHANCED or self._in_ehlo or (greeting and code == "220"):
            return status
        if _ENHANCED.match(text):
            return status
        if code == "500" and "not recognized" in text:
            text = "Error: command not recognized"
        enhanced = _DEFAULT_ENHANCED.get(code, f"{code[0]}.0.0")
        return f"{code}{sep or ' '}{enhanced} {text}".rstrip()

    async def handle_exception(self, error: Exception) -> str:
        reply = storage_reply(error)
        log.error(
            kv(event="session_error", client_ip=self.client_ip, reply=reply[:9]),
            exc_info=(type(error), error, error.__traceback__),
        )
        return reply

    # -- command hygiene -----------------------------------------------------------------
    async def _argument_ok(self, arg: str | None) -> bool:
        if arg is None:
            return True
        problem = bad_argument(arg)
        if problem is not None:
            await self.push(f"501 5.5.4 Syntax error: {problem}")
            return False
        return True

    async def smtp_HELO(self, hostname: str) -> None:
        if await self._argument_ok(hostname):
            await super().smtp_HELO(hostname)

    async def smtp_EHLO(self, hostname: str) -> None:
        if not await self._argument_ok(hostname):
            return
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not await self._argument_ok(arg):
            return
        if arg and has_source_route(arg, "FROM:"):
            await self.push("553 5.7.1 Source routes are not accepted")
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not await self._argument_ok(arg):
            return
        if arg and has_source_route(arg, "TO:"):
            await self.push("553 5.7.1 Source routes are not accepted")
            return
        await super().smtp_RCPT(arg)

    async def smtp_VRFY(self, arg: str) -> None:
        await self.push("252 2.5.0 Cannot VRFY user, but will accept message")

    async def smtp_EXPN(self, arg: str) -> None:
        await self.push("502 5.5.1 EXPN not implemented")

    # -- DATA ----------------------------------------------------------------------------
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.in_data = True
        try:
            content, problem = await self._read_data()
        finally:
            self.in_data = False
        if problem is not None:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(problem)
            self._maybe_close()
            return
        self.envelope.content = content
        self.envelope.original_content = content
        self.busy = True
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self.busy = False
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            self._reset_timeout()
        await self.push(status)
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._close_after_reply is not None:
            line, self._close_after_reply = self._close_after_reply, None
            self._say_and_close(line)

    async def _read_data(self) -> tuple[bytes, str | None]:
        """Read up to ``<CRLF>.<CRLF>``; return (clean CRLF content, problem or None).

        The stream is searched for ``.<CRLF>`` in large chunks (C speed) and a match only
        ends DATA when the two bytes before it are CRLF; every other variant (``<LF>.<LF>``,
        ``<CR>.<CR>``, ``<LF>.<CRLF>``, NUL around the dot …) is content, and then refused or
        normalized by :func:`clean_data`.
        """
        limit = self.settings.max_message_size
        reader = self._reader
        saved_limit = reader._limit  # type: ignore[attr-defined]
        reader._limit = max(saved_limit, 1 << 18)  # type: ignore[attr-defined]
        chunks: list[bytes] = []
        size = 0
        over = False
        tail = b"\r\n"  # DATA content starts at the beginning of a line
        try:
            while True:
                sep = b"\r\n.\r\n"
                if tail == b"\r\n":
                    # At a line start the terminator is a bare ".<CRLF>" whose CRLF was
                    # already consumed: peek at the buffer (aiosmtpd does the same) or,
                    # with too little buffered, search for ".<CRLF>" and check what precedes.
                    buffered = reader._buffer  # type: ignore[attr-defined]
                    if len(buffered) >= 3:
                        if buffered[:3] == b".\r\n":
                            await reader.readexactly(3)
                            size += 3
                            break
                    else:
                        sep = b".\r\n"
                try:
                    piece: bytes = await reader.readuntil(sep)
                    found = True
                except asyncio.LimitOverrunError as exc:
                    piece = await reader.read(exc.consumed)
                    found = False
                except asyncio.IncompleteReadError:
                    raise ConnectionResetError("connection closed during DATA") from None
                self._reset_timeout()
                size += len(piece)
                if found:
                    content = piece[:-3]
                    if (tail + content)[-2:] == b"\r\n":
                        over = over or size > limit
                        if not over:
                            chunks.append(content)
                        break
                if not over:
                    chunks.append(piece)
                    if size > limit:
                        over = True
                        chunks.clear()
                tail = (tail + piece)[-2:]
        finally:
            reader._limit = saved_limit  # type: ignore[attr-defined]
        if over:
            return b"", "552 5.3.4 Message size exceeds fixed maximum message size"
        return clean_data(b"".join(chunks), normalize=self.settings.bare_newline != "reject")


def clean_data(raw: bytes, *, normalize: bool) -> tuple[bytes, str | None]:
    """Dot-unstuff wire content and enforce line-end hygiene; (content, problem or None).

    NUL and bare CR are refused; bare LF becomes CRLF (or is refused when ``normalize`` is
    off); lines over 998 octets are refused. The result has CRLF line ends only.
    """
    if b"\x00" in raw:
        return b"", "550 5.6.0 NUL character in message content"
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf:
        return b"", "550 5.6.0 Bare CR in message content; use CRLF line ends"
    if raw.startswith(b"."):
        raw = raw[1:]
    raw = raw.replace(b"\r\n.", b"\r\n")
    if raw.count(b"\n") != crlf:
        if not normalize:
            return b"", "550 5.6.0 Bare LF in message content; use CRLF line ends"
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if len(raw) > 1000 and max(map(len, raw.split(b"\r\n"))) > 998:
        return b"", "550 5.6.0 Line too long (RFC 5322 allows 998 octets)"
    return raw, None


def install_log_redaction() -> None:
    """Redact AUTH arguments in aiosmtpd's per-command log lines (defence in depth: it masks
    them itself) and drop its per-AUTH deprecation warning."""
    logger = logging.getLogger("mail.log")
    if not any(isinstance(f, _AuthRedactor) for f in logger.filters):
        logger.addFilter(_AuthRedactor())


class _AuthRedactor(logging.Filter):
    _AUTH = re.compile(rb"^\s*AUTH\s+(\S+)\s+\S+", re.I)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Session.login_data is"):
            return False  # aiosmtpd's own deprecation notice, once per successful AUTH
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(self._redact(a) for a in record.args)
        return True

    def _redact(self, value: object) -> object:
        if isinstance(value, bytes | bytearray):
            m = self._AUTH.match(value)
            if m:
                return b"AUTH " + m.group(1) + b" <redacted>"
        elif isinstance(value, str):
            m = self._AUTH.match(value.encode("utf-8", "replace"))
            if m:
                return "AUTH " + m.group(1).decode("ascii", "replace") + " <redacted>"
        return value
