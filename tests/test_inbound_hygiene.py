"""The inbound listener has submission's session hardening (``mtaserver.smtpd``), over real
sockets: DATA smuggling, bare CR/LF/NUL, long lines, size while reading, argument hygiene,
idle and session deadlines, connection refusal under uvloop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import uvloop

from mtaserver.clock import SystemClock
from mtaserver.config.inbound import InboundConfig
from mtaserver.inbound import InboundHandler, InboundServer, Outcome
from mtaserver.verp import Verp
from tests.support.submission import RawClient

BOUNCE_DOMAIN = "bounces.example.com"
VERP = Verp(b"k" * 32, "b", BOUNCE_DOMAIN)
RCPT = VERP.address("q1", 0)
SMUGGLED = (
    b"MAIL FROM:<>\r\nRCPT TO:<" + RCPT.encode() + b">\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n"
)
VARIANTS = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r.\n", b"\r\n.\n", b"\r\n.\r", b"\r\n\x00.\r\n"]


@dataclass
class Inbound:
    port: int
    server: InboundServer
    received: list[tuple[bytes, list[str]]] = field(default_factory=list)

    async def session(self) -> RawClient:
        c = await RawClient.connect(self.port)
        assert (await c.reply()).startswith("220")
        assert (await c.cmd("EHLO remote.example")).startswith("250")
        return c

    async def transaction(self, c: RawClient) -> None:
        assert (await c.cmd("MAIL FROM:<>")).startswith("250")
        assert (await c.cmd(f"RCPT TO:<{RCPT}>")).startswith("250")
        assert (await c.cmd("DATA")).startswith("354")


@asynccontextmanager
async def inbound(**kw: Any) -> AsyncIterator[Inbound]:
    cfg = replace(
        InboundConfig(
            listen=("127.0.0.1", 0),
            bounce_domain=BOUNCE_DOMAIN,
            verp_prefix="b",
            command_timeout=10.0,
        ),
        **kw,
    )
    received: list[tuple[bytes, list[str]]] = []

    async def record(raw: bytes, rcpts: Sequence[str]) -> Outcome:
        received.append((raw, list(rcpts)))
        return Outcome("not-a-bounce")

    server = InboundServer(cfg, InboundHandler(cfg, VERP, record), SystemClock(), "mx.test")
    _, port = await server.start("127.0.0.1", 0)
    try:
        yield Inbound(port, server, received)
    finally:
        await server.stop()


@pytest.mark.parametrize("variant", VARIANTS, ids=[repr(v) for v in VARIANTS])
async def test_smuggling_variants_produce_no_second_message(variant: bytes) -> None:
    async with inbound() as env:
        c = await env.session()
        await env.transaction(c)
        await c.send(b"Subject: first\r\n\r\nbody" + variant + SMUGGLED + b"\r\n.\r\n")
        first = await c.reply()
        assert first[:3] in ("250", "550"), first
        # exactly one reply for the whole DATA: nothing inside ran as a command
        assert (await c.cmd("NOOP")).startswith("250")
        await c.close()
        assert len(env.received) <= 1
        for raw, rcpts in env.received:
            assert rcpts == [RCPT]
            assert b"\x00" not in raw and raw.count(b"\r") == raw.count(b"\n") == raw.count(b"\r\n")


async def test_bare_lf_normalized_and_dots_unstuffed() -> None:
    async with inbound() as env:
        c = await env.session()
        await env.transaction(c)
        assert (await c.cmd(b"Subject: lf\n\none\r\n..two\r\n.")).startswith("250")
        await c.close()
        ((raw, _),) = env.received
        assert raw == b"Subject: lf\r\n\r\none\r\n.two\r\n"


@pytest.mark.parametrize(
    ("content", "reply"),
    [
        (b"Subject: x\r\n\r\nbare\rcr\r\n", "550 5.6.0 Bare CR"),
        (b"Subject: x\r\n\r\nnul\x00byte\r\n", "550 5.6.0 NUL"),
        (b"Subject: x\r\n\r\n" + b"y" * 999 + b"\r\n", "550 5.6.0 Line too long"),
    ],
)
async def test_bare_cr_nul_and_long_lines_refused(content: bytes, reply: str) -> None:
    async with inbound() as env:
        c = await env.session()
        await env.transaction(c)
        assert (await c.cmd(content + b".")).startswith(reply)
        assert (await c.cmd("MAIL FROM:<>")).startswith("250")  # the session goes on
        await c.close()
        assert env.received == []


async def test_size_enforced_while_reading_then_session_goes_on() -> None:
    async with inbound(max_message_size=4096) as env:
        c = await env.session()
        await env.transaction(c)
        big = b"Subject: big\r\n\r\n" + (b"z" * 70 + b"\r\n") * 2000  # 144 kB against 4 kB
        assert (await c.cmd(big + b".")).startswith("552 5.3.4")
        await env.transaction(c)
        assert (await c.cmd(b"Subject: small\r\n\r\nok\r\n.")).startswith("250")
        await c.close()
        assert [raw for raw, _ in env.received] == [b"Subject: small\r\n\r\nok\r\n"]


async def test_pipelined_command_after_data_is_answered() -> None:
    async with inbound() as env:
        c = await env.session()
        await env.transaction(c)
        await c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nNOOP\r\n")
        assert (await c.reply()).startswith("250")
        assert (await c.reply()).startswith("250")
        await c.close()


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"EHLO bad\xffhost", "501"),
        (b"HELO bad\x7fhost", "501"),
        (b"MAIL FROM:<a\xc3\x28b@x.example>", "501"),
        (b"MAIL FROM:<@relay.example:a@x.example>", "553 5.7.1"),
        (b"RCPT TO:<@relay.example:" + RCPT.encode() + b">", "553 5.7.1"),
    ],
)
async def test_invalid_utf8_and_source_routes_in_commands(line: bytes, code: str) -> None:
    async with inbound() as env:
        c = await env.session()
        if line.startswith(b"RCPT"):
            assert (await c.cmd("MAIL FROM:<>")).startswith("250")
        assert (await c.cmd(line)).startswith(code)
        await c.close()


async def test_idle_timeout_answers_421() -> None:
    async with inbound(command_timeout=1.0) as env:
        c = await RawClient.connect(env.port)
        await c.reply()
        started = time.monotonic()
        assert (await c.reply()).startswith("421 4.4.2 Idle timeout")
        assert time.monotonic() - started >= 0.9
        assert await c.reader.read() == b""


async def test_idle_timeout_reset_while_data_streams() -> None:
    async with inbound(command_timeout=1.0) as env:
        c = await env.session()
        await env.transaction(c)
        await c.send(b"Subject: slow\r\n\r\n")
        for i in range(6):  # a slow sender: 2.4 s of DATA, never 1 s silent
            await asyncio.sleep(0.4)
            await c.send(b"line %d\r\n" % i)
        assert (await c.cmd(b".")).startswith("250")
        await c.close()
        assert len(env.received) == 1


async def test_session_deadline_answers_421() -> None:
    # session limit = data_timeout + 10 * command_timeout = 3.1 s
    async with inbound(command_timeout=0.3, data_timeout=0.1) as env:
        c = await env.session()
        started = time.monotonic()
        reply = ""
        while time.monotonic() - started < 10:
            reply = await c.cmd("NOOP")  # busy, never idle
            if not reply.startswith("250"):
                break
            await asyncio.sleep(0.1)
        assert reply.startswith("421 4.4.2 Maximum session time"), reply
        assert 3.0 <= time.monotonic() - started < 6
        assert await c.reader.read() == b""


def test_connection_refusal_is_answered_under_uvloop() -> None:
    """The daemon runs on uvloop, whose transports are not ``asyncio.WriteTransport``s."""

    async def scenario() -> tuple[str, bytes]:
        async with inbound(max_connections_per_ip=1) as env:
            held = await env.session()
            refused = await RawClient.connect(env.port)
            line = await refused.reply()
            rest = await asyncio.wait_for(refused.reader.read(), 10)
            await held.close()
            await refused.close()
            return line, rest

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        line, rest = runner.run(scenario())
    assert line == "421 4.7.0 Too many connections from your address"
    assert rest == b""
