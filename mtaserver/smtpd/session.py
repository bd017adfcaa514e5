"""The hardened SMTP session every listener (submission, inbound) is built on.

aiosmtpd's ``SMTP`` plus what it lacks (PITFALLS), once for every port:

- a per-IP (and total, and per-IP rate) cap on connections, answered with a 421 at connect
  and never reaching aiosmtpd's session loop;
- an idle timeout reset while DATA is streaming, and a maximum session time, both answered
  ``421 4.4.2`` before the close — but never while a handler is committing (its reply
  comes first);
- DATA read here (:func:`~mtaserver.smtpd.hygiene.read_data`): only ``<CRLF>.<CRLF>`` ends
  it; size enforced while reading (``552 5.3.4``); bare CR and NUL refused, bare LF
  normalized or refused, lines over 998 octets refused (``550 5.6.0``);
- control characters and invalid UTF-8 in HELO/EHLO/MAIL/RCPT answer 501, source routes
  (which aiosmtpd would silently drop) ``553 5.7.1``;
- a handler exception answers the handler's ``handle_exception`` or a generic ``451 4.3.0``
  (``452 4.3.1`` when storage is full), never aiosmtpd's ``500`` with the exception text;
- optionally, RFC 3463 enhanced status codes on every reply.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, AnyStr, Generic, Protocol, TypeVar

from mtaserver.log import get_logger, kv
from mtaserver.ratelimit import Refusal
from mtaserver.smtpd.aiosmtpd_compat import CompatSMTP
from mtaserver.smtpd.hygiene import (
    SIZE_EXCEEDED,
    bad_argument,
    clean_data,
    has_source_route,
    read_data,
)
from mtaserver.smtpd.replies import (
    IDLE_TIMEOUT,
    SESSION_TIMEOUT,
    SHUTTING_DOWN,
    enhance,
    storage_reply,
)

T = TypeVar("T")

TOO_MANY = "421 4.7.0 Too many connections from your address, try later"


class Admission(Protocol):
    """Counts open connections per client IP: ``mtaserver.ratelimit.ConnectionLimiter`` in
    one process, ``mtaserver.workers.conncap.SharedConnectionCap`` across worker processes."""

    max_per_ip: int

    def admit(self, ip: str) -> Refusal | None: ...

    def release(self, ip: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Guard:
    """One listener's session limits and how it answers a refused connection."""

    max_message_size: int
    idle_timeout: float
    max_session_time: float
    bare_newline: str = "normalize"  # "normalize" | "reject"
    enhanced_codes: bool = True  # add RFC 3463 codes to every reply
    refusals: tuple[tuple[Refusal, str], ...] = ((Refusal.PER_IP, TOO_MANY),)

    def refusal_line(self, why: Refusal) -> str:
        for reason, line in self.refusals:
            if reason is why:
                return line
        return TOO_MANY


class SessionRegistry(Generic[T]):
    """The open sessions, so a drain can end them and wait until none is left."""

    def __init__(self) -> None:
        self._items: set[T] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, item: T) -> None:
        self._items.add(item)
        self._empty.clear()

    def discard(self, item: T) -> None:
        self._items.discard(item)
        if not self._items:
            self._empty.set()

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    async def wait_empty(self) -> None:
        await self._empty.wait()


def _write(transport: asyncio.BaseTransport, data: bytes) -> None:
    # uvloop's TCPTransport is not an asyncio.WriteTransport subclass, but it has write()
    write = getattr(transport, "write", None)
    if write is not None:
        write(data)


class GuardedSMTP(CompatSMTP):
    """One client session on a hardened listener. ``listener_name`` names it in logs."""

    log: logging.Logger = get_logger("smtpd")

    def __init__(
        self,
        handler: Any,
        *,
        guard: Guard,
        connections: Admission,
        listener_name: str,
        sessions: SessionRegistry[Any] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        **smtp_options: Any,
    ) -> None:
        super().__init__(
            handler,
            data_size_limit=guard.max_message_size,
            timeout=guard.idle_timeout,
            decode_data=False,
            loop=loop or asyncio.get_running_loop(),
            **smtp_options,
        )
        self.guard = guard
        self.listener_name = listener_name
        self.client_ip = ""
        self.busy = False  # a handler is committing: timeouts wait for its reply
        self.in_data = False  # DATA is streaming in
        self._connections = connections
        self._sessions = sessions if sessions is not None else SessionRegistry()
        self._last_rx = 0.0  # loop time of the last bytes received
        self._registered = False
        self._refused = False
        self._greeted = False
        self._in_ehlo = False
        self._close_after_reply: str | None = None
        self._session_timer: asyncio.TimerHandle | None = None

    # -- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again by aiosmtpd after STARTTLS, with the TLS transport: admit only once.
        if not self._registered:
            self._registered = True
            peer = transport.get_extra_info("peername")
            self.client_ip = str(peer[0]) if peer else ""
            observer = getattr(self.event_handler, "observer", None)
            if observer is not None:
                observer.session_started(self.listener_name)
            refusal = self._connections.admit(self.client_ip)
            if refusal is not None:
                # Refused before aiosmtpd sees the connection: no session, no greeting.
                self._refused = True
                line = self.guard.refusal_line(refusal)
                self.log.warning(kv(event="connection_refused", client_ip=self.client_ip,
                                    reason=refusal.value))  # fmt: skip
                _write(transport, line.encode("ascii") + b"\r\n")
                transport.close()
                return
            self._session_timer = self.loop.call_later(
                self.guard.max_session_time, self._session_expired
            )
            self._sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return  # aiosmtpd never saw this connection
        if self._registered:
            self._registered = False
            self._connections.release(self.client_ip)
            if self._session_timer is not None:
                self._session_timer.cancel()
            self._sessions.discard(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._last_rx = self.loop.time()
        super().data_received(data)

    # -- timeouts ------------------------------------------------------------------------
    def idle_timeout_expired(self) -> None:
        if self.busy:
            self.reset_idle_timer()
            return
        # DATA is read in large chunks, so count any bytes received as activity
        remaining = self._last_rx + self.guard.idle_timeout - self.loop.time()
        if self.in_data and remaining > 0.01:
            self.reset_idle_timer(remaining)
            return
        self.log.info(kv(event="timeout", kind="idle", client_ip=self.client_ip))
        self.say_and_close(IDLE_TIMEOUT)

    def _session_expired(self) -> None:
        if self.busy:
            self._close_after_reply = SESSION_TIMEOUT
            return
        self.log.info(kv(event="timeout", kind="session", client_ip=self.client_ip))
        self.say_and_close(SESSION_TIMEOUT)

    def shutdown(self) -> None:
        """Server stopping: close now if idle, else right after the transaction's reply."""
        if self.busy or self.in_data:
            self._close_after_reply = SHUTTING_DOWN
        else:
            self.say_and_close(SHUTTING_DOWN)

    def say_and_close(self, line: str) -> None:
        """Send ``line`` (a 421) and close, whatever the session was doing."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            _write(transport, line.encode("ascii") + b"\r\n")
        except Exception:  # the peer may already be gone
            self.log.debug(kv(event="write_failed", client_ip=self.client_ip))
        transport.close()

    def _maybe_close(self) -> None:
        if self._close_after_reply is not None:
            line, self._close_after_reply = self._close_after_reply, None
            self.say_and_close(line)

    # -- replies -------------------------------------------------------------------------
    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and self.guard.enhanced_codes:
            greeting = not self._greeted
            self._greeted = True
            if not (self._in_ehlo or (greeting and status.startswith("220"))):
                status = enhance(status)
        await super().push(status)

    async def handle_exception(self, error: Exception) -> str:
        if hasattr(self.event_handler, "handle_exception"):
            return await super().handle_exception(error)
        reply = storage_reply(error)
        self.log.error(
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
            raw, too_big = await read_data(
                self.stream_reader, self.guard.max_message_size, self.reset_idle_timer
            )
        finally:
            self.in_data = False
        content, problem = (
            (b"", SIZE_EXCEEDED)
            if too_big
            else clean_data(raw, normalize=self.guard.bare_newline != "reject")
        )
        if problem is not None:
            self.reset_envelope()
            await self.push(problem)
            self._maybe_close()
            return
        self.envelope.content = content
        self.envelope.original_content = content
        self.busy = True
        try:
            status = await self.call_hook("DATA")
        finally:
            self.busy = False
            self.reset_envelope()
            self.reset_idle_timer()
        await self.push(status)
        self._maybe_close()
