"""aiosmtpd sinks standing in for remote MX hosts, with scripted replies.

Several sinks can listen on the same port on different loopback addresses (127.0.0.2,
127.0.0.3, … all reach loopback on Linux), so one ``[delivery] port`` reaches every MX of
a test domain:

    async with SinkGroup(["127.0.0.2", "127.0.0.3"]) as group:
        group["127.0.0.2"].rcpt_replies["bad@example.test"] = "550 5.1.1 no such user"
        ...  # deliver to port group.port
        msg = group["127.0.0.3"].messages[0]

Each sink counts TCP connections and records the commands of each connection, so tests can
prove connection reuse (one connection, RSET between messages) and TLS use.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from aiosmtpd.smtp import SMTP, Envelope, Session

_conn_ids = itertools.count(1)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    conn: int  # connection number at this sink
    tls: bool
    tls_version: str | None
    at: float = field(default_factory=time.monotonic)  # when DATA was accepted


@dataclass
class SinkState:
    """What a sink saw, and the replies it is told to give."""

    host: str
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address → full reply line
    mail_reply: str | None = None
    data_reply: str | None = None  # e.g. "451 4.3.0 try later"; None = accept
    messages: list[Received] = field(default_factory=list)
    connections: int = 0
    open_connections: int = 0
    peak_open_connections: int = 0  # most connections open at once
    commands: list[tuple[int, str]] = field(default_factory=list)  # (conn, VERB)

    def verbs(self, conn: int | None = None) -> list[str]:
        return [v for c, v in self.commands if conn is None or c == conn]


class _Handler:
    def __init__(self, state: SinkState) -> None:
        self.state = state

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.state.mail_reply:
            return self.state.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        reply = self.state.rcpt_replies.get(address)
        if reply is not None and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return reply or "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.state.data_reply:
            return self.state.data_reply
        ssl_obj = None
        if session.ssl is not None:
            ssl_obj = session.ssl.get("ssl_object")
        content = envelope.original_content or b""
        self.state.messages.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=bytes(content),
                conn=getattr(server, "conn_id", 0),
                tls=session.ssl is not None,
                tls_version=ssl_obj.version() if ssl_obj is not None else None,
            )
        )
        return "250 2.0.0 Ok: queued as SINK"


class _CountingSMTP(SMTP):  # type: ignore[misc]
    def __init__(self, state: SinkState, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._state = state
        self.conn_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and self.conn_id == 0:
            self.conn_id = next(_conn_ids)
            self._state.connections += 1
            self._state.open_connections += 1
            self._state.peak_open_connections = max(
                self._state.peak_open_connections, self._state.open_connections
            )
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.conn_id:
            self._state.open_connections -= 1
        super().connection_lost(error)

    async def smtp_RSET(self, arg: str) -> None:
        self._state.commands.append((self.conn_id, "RSET"))
        await super().smtp_RSET(arg)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._state.commands.append((self.conn_id, "EHLO " + hostname))
        await super().smtp_EHLO(hostname)

    async def smtp_MAIL(self, arg: str) -> None:
        self._state.commands.append((self.conn_id, "MAIL"))
        await super().smtp_MAIL(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:
        self._state.commands.append((self.conn_id, "STARTTLS"))
        await super().smtp_STARTTLS(arg)

    async def smtp_QUIT(self, arg: str) -> None:
        self._state.commands.append((self.conn_id, "QUIT"))
        await super().smtp_QUIT(arg)


class SinkGroup:
    """aiosmtpd sinks on several loopback addresses sharing one port.

    ``tls`` maps a host to the server SSLContext it offers STARTTLS with (none = no
    STARTTLS). ``extra`` hosts get scripted raw behaviours instead of a sink:
    ``"421"`` answers a 421 greeting and closes; ``"silent"`` accepts and never speaks.
    Hosts listed in ``refuse`` get no listener at all (connection refused).
    """

    def __init__(
        self,
        hosts: Iterable[str],
        *,
        tls: dict[str, ssl.SSLContext] | None = None,
        raw: dict[str, str] | None = None,
        refuse: Iterable[str] = (),
    ) -> None:
        self.hosts = list(hosts)
        self.tls = tls or {}
        self.raw = raw or {}
        self.refuse = list(refuse)
        self.states = {h: SinkState(h) for h in self.hosts}
        self.port = 0
        self._servers: list[asyncio.Server] = []
        self._raw_writers: list[asyncio.StreamWriter] = []

    def __getitem__(self, host: str) -> SinkState:
        return self.states[host]

    async def start(self) -> SinkGroup:
        for _ in range(50):
            try:
                await self._start_all()
                return self
            except OSError:
                await self._close_servers()
        raise RuntimeError("no common free port for the sink group")

    async def _start_all(self) -> None:
        loop = asyncio.get_running_loop()
        self.port = 0
        for host in [*self.hosts, *self.raw]:
            if host in self.raw:
                server = await asyncio.start_server(
                    self._raw_handler(self.raw[host]), host, self.port
                )
            else:
                state = self.states[host]
                ctx = self.tls.get(host)

                def factory(state: SinkState = state, ctx: ssl.SSLContext | None = ctx) -> SMTP:
                    return _CountingSMTP(
                        state,
                        _Handler(state),
                        tls_context=ctx,
                        hostname=f"sink-{state.host}",
                        timeout=30,
                    )

                server = await loop.create_server(factory, host, self.port)
            self._servers.append(server)
            if self.port == 0:
                self.port = server.sockets[0].getsockname()[1]
        for host in self.refuse:  # make sure nothing else listens there
            with socket.socket() as s:
                if s.connect_ex((host, self.port)) == 0:
                    raise OSError("port in use on a refuse host")

    def _raw_handler(
        self, mode: str
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._raw_writers.append(writer)
            if mode == "421":
                writer.write(b"421 4.3.2 Service not available, closing channel\r\n")
                await writer.drain()
                writer.close()
                return
            with contextlib.suppress(Exception):
                await reader.read()  # "silent": hold the connection open, say nothing

        return handle

    async def _close_servers(self) -> None:
        for w in self._raw_writers:
            w.close()
        self._raw_writers.clear()
        for server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        self._servers.clear()

    async def stop(self) -> None:
        await self._close_servers()

    async def __aenter__(self) -> SinkGroup:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


_T = TypeVar("_T")


async def eventually(
    fetch: Callable[[], Awaitable[_T]], ok: Callable[[_T], bool], timeout: float = 5.0
) -> _T:
    """Poll ``await fetch()`` until ``ok`` holds for its value; return the last value (on
    timeout too: the caller's assertion on it then shows what was seen)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await fetch()
        if ok(value) or loop.time() > deadline:
            return value
        await asyncio.sleep(0.01)


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``cond`` until true or fail after ``timeout`` seconds (never a bare sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
