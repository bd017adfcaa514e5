"""Relay matrix, sender binding, limits and their reply codes, on real sockets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.submission import RawClient, plain_auth, running

TRICKS = [
    "<x%evil.example@dest.example>",
    "<evil.example!x@dest.example>",
    '<"x@evil.example"@dest.example>',
    "<@dest.example:x@evil.example>",
    "<@dest.example,@relay.example:x@evil.example>",
    "<x@[192.0.2.1]>",
    "<x@[IPv6:2001:db8::1]>",
]


async def session(env, listener: str, *, auth: bool) -> RawClient:  # type: ignore[no-untyped-def]
    """A session ready for MAIL: TLS done as the listener wants, authenticated if asked."""
    implicit = listener == "submissions"
    c = await RawClient.connect(env.port(listener), env.client_context() if implicit else None)
    assert (await c.reply()).startswith("220")
    await c.cmd("EHLO client.test")
    if listener == "submission":
        assert (await c.cmd("STARTTLS")).startswith("220")
        await c.starttls(env.client_context())
        await c.cmd("EHLO client.test")
    if auth:
        assert (await c.cmd(f"AUTH PLAIN {plain_auth()}")).startswith("235 2.7.0")
    return c


@pytest.mark.parametrize("listener", ["submission", "submissions", "plain"])
async def test_open_relay_matrix_unauthenticated(tmp_path: Path, listener: str) -> None:
    async with running(tmp_path) as env:
        c = await session(env, listener, auth=False)
        assert (await c.cmd("MAIL FROM:<someone@example.com>")).startswith("250")
        for rcpt in ["<x@dest.example>", "<alice@example.com>", *TRICKS]:
            reply = await c.cmd(f"RCPT TO:{rcpt}")
            assert reply[:3] in ("553", "554") and " 5.7.1 " in reply, (rcpt, reply)
        assert (await c.cmd("DATA")).startswith("503 5.5.1")
        await c.close()
        assert env.messages() == []


@pytest.mark.parametrize("listener", ["submission", "submissions"])
async def test_relay_tricks_refused_even_when_authenticated(tmp_path: Path, listener: str) -> None:
    async with running(tmp_path) as env:
        c = await session(env, listener, auth=True)
        assert (await c.cmd("MAIL FROM:<alice@example.com>")).startswith("250 2.1.0")
        for rcpt in TRICKS:
            reply = await c.cmd(f"RCPT TO:{rcpt}")
            assert reply.startswith("553 5.7.1"), (rcpt, reply)
        assert (await c.cmd("RCPT TO:<x@dest.example>")).startswith("250 2.1.5")
        await c.close()


async def test_trusted_network_may_send_without_auth_on_plain(tmp_path: Path) -> None:
    async with running(tmp_path, trusted_networks=["127.0.0.0/8"]) as env:
        c = await session(env, "plain", auth=False)
        assert (await c.cmd("MAIL FROM:<app@anything.example>")).startswith("250")
        for rcpt in TRICKS:
            assert (await c.cmd(f"RCPT TO:{rcpt}")).startswith("553 5.7.1")
        assert (await c.cmd("RCPT TO:<x@dest.example>")).startswith("250")
        assert (await c.cmd("DATA")).startswith("354")
        reply = await c.cmd(b"Subject: t\r\n\r\nbody\r\n.")
        assert reply.startswith("250 2.0.0 Ok: queued as")
        await c.close()
        (row,) = env.messages()
        assert row["user"] is None and row["sender"] == "app@anything.example"


async def test_sender_binding(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        c = await session(env, "submissions", auth=True)
        assert (await c.cmd("MAIL FROM:<alice@bob.example>")).startswith("553 5.7.1")
        assert (await c.cmd("MAIL FROM:<alice@sub.example.com>")).startswith("553 5.7.1")
        assert (await c.cmd("MAIL FROM:<Alice@EXAMPLE.com>")).startswith("250")
        assert (await c.cmd("RSET")).startswith("250 2.0.0")
        cases = [
            (b"From: x@bob.example\r\n", "553 5.7.1"),
            (b'From: "alice@example.com" <x@evil.example>\r\n', "553 5.7.1"),
            (b"From: alice@example.com, x@evil.example\r\n", "553 5.7.1"),
            (b"From: alice@example.com\r\nFrom: x@evil.example\r\n", "550 5.6.0"),
            (b"Subject: no from\r\n", "550 5.6.0"),
            (b"From: <x@evil.example>@example.com\r\n", "553 5.7.1"),
            (b"From: " + b"(" * 300 + b"x@example.com\r\n", "550 5.6.0"),
            (b"From: Alice <alice@alice.example>\r\n", "250 2.0.0"),
        ]
        for header, expected in cases:
            assert (await c.cmd("MAIL FROM:<alice@example.com>")).startswith("250")
            assert (await c.cmd("RCPT TO:<x@dest.example>")).startswith("250")
            assert (await c.cmd("DATA")).startswith("354")
            reply = await c.cmd(header + b"Subject: t\r\n\r\nbody\r\n.")
            assert reply.startswith(expected), (header, reply)
        await c.close()
        assert len(env.messages()) == 1


async def test_size_limits(tmp_path: Path) -> None:
    async with running(tmp_path, max_message_size="10KiB") as env:
        c = await session(env, "submissions", auth=True)
        assert "SIZE 10240" in await c.cmd("EHLO client.test")
        assert (await c.cmd("MAIL FROM:<alice@example.com> SIZE=20000")).startswith("552 5.3.4")
        assert (await c.cmd("MAIL FROM:<alice@example.com> SIZE=2000")).startswith("250")
        assert (await c.cmd("RCPT TO:<x@dest.example>")).startswith("250")
        assert (await c.cmd("DATA")).startswith("354")
        big = b"From: alice@example.com\r\n\r\n" + (b"x" * 70 + b"\r\n") * 300
        assert (await c.cmd(big + b".")).startswith("552 5.3.4")
        # the session goes on: a message within the limit is taken
        assert (await c.cmd("MAIL FROM:<alice@example.com>")).startswith("250")
        assert (await c.cmd("RCPT TO:<x@dest.example>")).startswith("250")
        assert (await c.cmd("DATA")).startswith("354")
        assert (await c.cmd(b"From: alice@example.com\r\n\r\nsmall\r\n.")).startswith("250")
        await c.close()
        assert len(env.messages()) == 1


async def test_header_size_limit(tmp_path: Path) -> None:
    async with running(tmp_path, max_header_size="1KiB") as env:
        c = await session(env, "submissions", auth=True)
        await c.cmd("MAIL FROM:<alice@example.com>")
        await c.cmd("RCPT TO:<x@dest.example>")
        await c.cmd("DATA")
        header = b"From: alice@example.com\r\n" + b"X-Filler: " + b"y" * 60 + b"\r\n"
        reply = await c.cmd(header * 30 + b"\r\nbody\r\n.")
        assert reply.startswith("552 5.3.4"), reply
        await c.close()
        assert env.messages() == []


async def test_max_recipients(tmp_path: Path) -> None:
    async with running(tmp_path, max_recipients=3) as env:
        c = await session(env, "submissions", auth=True)
        await c.cmd("MAIL FROM:<alice@example.com>")
        for i in range(3):
            assert (await c.cmd(f"RCPT TO:<r{i}@dest.example>")).startswith("250")
        assert (await c.cmd("RCPT TO:<r3@dest.example>")).startswith("452 4.5.3")
        await c.close()


async def test_user_rate(tmp_path: Path) -> None:
    async with running(tmp_path, user_rate="1/h", user_burst=2) as env:
        c = await session(env, "submissions", auth=True)
        for _ in range(2):
            assert (await c.cmd("MAIL FROM:<alice@example.com>")).startswith("250")
            await c.cmd("RSET")
        assert (await c.cmd("MAIL FROM:<alice@example.com>")).startswith("451 4.7.1")
        await c.close()


async def test_connections_per_ip(tmp_path: Path) -> None:
    async with running(tmp_path, max_connections_per_ip=2) as env:
        port = env.port("plain")
        first = [await RawClient.connect(port) for _ in range(2)]
        for c in first:
            assert (await c.reply()).startswith("220")
        third = await RawClient.connect(port)
        assert (await third.reply()).startswith("421 4.7.0")
        assert await third.reader.read() == b""
        await first[0].cmd("QUIT")
        await first[0].close()
        # the slot is given back once the first session is gone
        deadline = time.monotonic() + 5
        while env.server.connections.count("127.0.0.1") > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        again = await RawClient.connect(port)
        assert (await again.reply()).startswith("220")
        for c in (first[1], third, again):
            await c.close()


async def test_idle_timeout_answers_421(tmp_path: Path) -> None:
    async with running(tmp_path, idle_timeout="1s") as env:
        c = await RawClient.connect(env.port("plain"))
        await c.reply()
        started = time.monotonic()
        assert (await c.reply(timeout=10)).startswith("421 4.4.2")
        assert time.monotonic() - started >= 0.9
        assert await c.reader.read() == b""


async def test_idle_timeout_reset_while_data_streams(tmp_path: Path) -> None:
    async with running(tmp_path, idle_timeout="2s", trusted_networks=["127.0.0.0/8"]) as env:
        c = await session(env, "plain", auth=False)
        await c.cmd("MAIL FROM:<app@example.com>")
        await c.cmd("RCPT TO:<x@dest.example>")
        assert (await c.cmd("DATA")).startswith("354")
        await c.send(b"Subject: slow\r\n\r\n")
        for i in range(8):  # a slow client: 4 s of DATA, never 2 s silent
            await asyncio.sleep(0.5)
            await c.send(b"line %d\r\n" % i)
        assert (await c.cmd(b".")).startswith("250 2.0.0")
        await c.close()


async def test_max_session_time(tmp_path: Path) -> None:
    async with running(tmp_path, max_session_time="1s", idle_timeout="30s") as env:
        c = await RawClient.connect(env.port("plain"))
        await c.reply()
        assert (await c.cmd("EHLO client.test")).startswith("250")
        assert (await c.reply(timeout=10)).startswith("421 4.4.2")
        assert await c.reader.read() == b""


async def test_suppressed_recipient_rejected_at_rcpt(tmp_path: Path) -> None:
    class Suppressed:
        def __init__(self) -> None:
            self.asked: list[tuple[str, str]] = []

        async def check(self, address: str, sender_domain: str) -> str | None:
            self.asked.append((address, sender_domain))
            return "hard-bounce" if address == "gone@dest.example" else None

    store = Suppressed()
    async with running(tmp_path, suppressions=store) as env:
        c = await session(env, "submissions", auth=True)
        await c.cmd("MAIL FROM:<alice@example.com>")
        reply = await c.cmd("RCPT TO:<gone@dest.example>")
        assert reply.startswith("550 5.7.1") and "hard-bounce" in reply
        assert (await c.cmd("RCPT TO:<ok@dest.example>")).startswith("250")
        await c.close()
        assert ("gone@dest.example", "example.com") in store.asked


async def test_real_suppression_store_at_rcpt(tmp_path: Path) -> None:
    async with running(tmp_path, real_suppressions=True) as env:
        assert env.suppressions is not None
        await env.suppressions.add("Gone@Dest.example", "hard-bounce")
        await env.suppressions.add("scoped@dest.example", "complaint", scope="bob.example")
        c = await session(env, "submissions", auth=True)
        await c.cmd("MAIL FROM:<alice@example.com>")
        reply = await c.cmd("RCPT TO:<gone@dest.example>")
        assert reply.startswith("550 5.7.1") and "hard-bounce" in reply, reply
        assert (await c.cmd("RCPT TO:<scoped@dest.example>")).startswith("250")
        await c.close()


async def test_accept_and_drop_stores_the_suppressed_recipient_with_an_event(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, real_suppressions=True, drop_suppressed=True) as env:
        assert env.suppressions is not None
        await env.suppressions.add("gone@dest.example", "hard-bounce")
        c = await session(env, "submissions", auth=True)
        await c.cmd("MAIL FROM:<alice@example.com>")
        assert (await c.cmd("RCPT TO:<gone@dest.example>")).startswith("250")
        assert (await c.cmd("RCPT TO:<ok@dest.example>")).startswith("250")
        assert (await c.cmd("DATA")).startswith("354")
        reply = await c.cmd("From: alice@example.com\r\nSubject: hi\r\n\r\nbody\r\n.")
        assert reply.startswith("250"), reply
        await c.close()
        queue_id = reply.split()[-1]
        info = await env.spool.show(queue_id)
        assert info is not None
        assert [(r.address, r.state) for r in info.recipients] == [
            ("gone@dest.example", "suppressed"),
            ("ok@dest.example", "queued"),
        ]
        jobs = await env.spool.claim_due(now=time.time() + 1, limit=10, lease_seconds=60)
        assert [r.address for j in jobs for r in j.recipients] == ["ok@dest.example"]
        events = await env.db.read(
            lambda conn: conn.execute(
                "SELECT recipient, data FROM events WHERE type='suppressed'"
            ).fetchall()
        )
        assert len(events) == 1 and events[0][0] == "gone@dest.example"
        assert "hard-bounce" in events[0][1]
