"""A remote MX on loopback that misbehaves on purpose, in the middle of a transaction.

A small raw asyncio SMTP server (not aiosmtpd: it must be able to hang, drop the socket
half-way through DATA, or answer something that is not SMTP). Faults are consumed one per
MAIL transaction, in the order transactions arrive, across all connections; once the list
is used up the server behaves::

    async with BadMx(faults=[("dot", "hang"), ("body", "drop")]) as mx:
        ...  # 1st transaction: no reply to the final dot; 2nd: socket closed mid-DATA;
        ...  # 3rd and later: accepted (mx.accepted)

A fault is ``(stage, action)``. Stages: ``mail``, ``rcpt`` (the first RCPT of the
transaction), ``data`` (the reply to DATA), ``body`` (after the first line of the message
has arrived), ``dot`` (the reply to the final "."). Actions: ``hang`` (say nothing, keep the
socket open), ``drop`` (close), ``reset`` (abort: RST), ``ok+drop`` (answer normally, then
close), ``delay N`` (answer normally after N seconds), or any other string: sent instead of the normal reply (a ``421`` is followed by
closing the connection, as RFC 5321 says; lone surrogates such as ``"\udcfc"`` go out as
the raw byte, for replies that are not UTF-8).

``rcpt_replies`` (address → reply line) refuses those recipients at every RCPT, whatever the
fault of the transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

Fault = tuple[str, str]


@dataclass
class Transaction:
    conn: int  # connection number at this server (1-based)
    mail_from: str
    rcpt_tos: list[str] = field(default_factory=list)
    data: bytes = b""


class _End(Exception):
    """The scripted fault ended the session."""


class BadMx:
    def __init__(self, host: str = "127.0.0.1", faults: Iterable[Fault | None] = ()) -> None:
        self.host = host
        self.port = 0
        self.faults: list[Fault | None] = list(faults)
        self.rcpt_replies: dict[str, str] = {}  # address → refusal, e.g. "550 5.1.1 unknown"
        self.accepted: list[Transaction] = []  # answered 250 after the final "."
        self.unanswered: list[Transaction] = []  # whole message received, no 250 given
        self.connections = 0
        self.open_connections = 0
        self.commands: list[tuple[int, str]] = []  # (conn, VERB)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def verbs(self, conn: int | None = None) -> list[str]:
        return [v for c, v in self.commands if conn is None or c == conn]

    @property
    def delivered_rcpts(self) -> list[str]:
        return [r for t in self.accepted for r in t.rcpt_tos]

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> BadMx:
        self._server = await asyncio.start_server(self._session, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    # -- one connection --------------------------------------------------------------------
    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        self._writers.add(writer)
        conn = self.connections
        try:
            await self._serve(conn, reader, writer)
        except (_End, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            writer.close()

    async def _serve(
        self, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._send(writer, b"220 badmx.test ESMTP\r\n")
        tx: Transaction | None = None
        fault: Fault | None = None
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].decode("ascii", "replace").upper()
            self.commands.append((conn, verb))
            arg = line[5:].decode("utf-8", "replace").strip()
            if verb in ("EHLO", "HELO"):
                await self._send(writer, b"250-badmx.test\r\n250 8BITMIME\r\n")
            elif verb == "MAIL":
                fault = self.faults.pop(0) if self.faults else None
                tx = Transaction(conn, _address(arg))
                await self._reply(reader, writer, fault, "mail", b"250 2.1.0 ok\r\n")
            elif verb == "RCPT" and tx is not None and _address(arg) in self.rcpt_replies:
                await self._send(writer, self.rcpt_replies[_address(arg)].encode() + b"\r\n")
            elif verb == "RCPT" and tx is not None:
                first = not tx.rcpt_tos
                tx.rcpt_tos.append(_address(arg))
                await self._reply(
                    reader, writer, fault if first else None, "rcpt", b"250 2.1.5 ok\r\n"
                )
            elif verb == "DATA" and tx is not None and tx.rcpt_tos:
                await self._reply(reader, writer, fault, "data", b"354 go ahead\r\n")
                tx.data = await self._body(reader, writer, fault)
                done, tx = tx, None
                if fault is None or fault[0] != "dot" or _accepts(fault[1]):
                    self.accepted.append(done)
                else:
                    self.unanswered.append(done)
                await self._reply(reader, writer, fault, "dot", b"250 2.0.0 queued\r\n")
            elif verb == "RSET":
                tx = None
                await self._send(writer, b"250 2.0.0 ok\r\n")
            elif verb == "NOOP":
                await self._send(writer, b"250 2.0.0 ok\r\n")
            elif verb == "QUIT":
                await self._send(writer, b"221 2.0.0 bye\r\n")
                return
            else:
                await self._send(writer, b"503 5.5.1 bad sequence of commands\r\n")

    async def _body(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fault: Fault | None
    ) -> bytes:
        lines: list[bytes] = []
        while True:
            line = await reader.readline()
            if not line:
                raise _End
            if line == b".\r\n":
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b".") else line)
            if len(lines) == 1 and fault is not None and fault[0] == "body":
                await self._act(reader, writer, fault[1], b"")

    async def _reply(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        fault: Fault | None,
        stage: str,
        normal: bytes,
    ) -> None:
        if fault is None or fault[0] != stage:
            await self._send(writer, normal)
        else:
            await self._act(reader, writer, fault[1], normal)

    async def _act(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        action: str,
        normal: bytes,
    ) -> None:
        if action == "hang":
            while await reader.read(65536):  # say nothing until the client gives up
                pass
            raise _End
        if action == "drop":
            raise _End
        if action == "reset":
            writer.transport.abort()
            raise _End
        if action.startswith("delay "):
            await asyncio.sleep(float(action.split()[1]))
            await self._send(writer, normal)
            return
        if action == "ok+drop":
            await self._send(writer, normal)
            raise _End
        await self._send(writer, action.encode("utf-8", "surrogateescape") + b"\r\n")
        if action.startswith("421"):
            raise _End

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()


def _address(arg: str) -> str:
    start, end = arg.find("<"), arg.find(">")
    return arg[start + 1 : end] if 0 <= start < end else arg


def _accepts(action: str) -> bool:
    """Whether a scripted reply to the final dot accepts the message (a valid 250 line)."""
    return (
        action in ("ok+drop",)
        or action.startswith("delay ")
        or (action.startswith("250 ") and len(action) <= 510)
    )
