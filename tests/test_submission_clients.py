"""Real clients (smtplib, aiosmtplib, swaks) over 587-style STARTTLS and 465-style TLS."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
from pathlib import Path

import aiosmtplib
import pytest

from tests.support.submission import PASSWORD, RawClient, running

MSG = b"From: Alice <alice@example.com>\r\nTo: x@dest.example\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("listener", ["submission", "submissions"])
async def test_smtplib(tmp_path: Path, mech: str, listener: str) -> None:
    async with running(tmp_path) as env:
        port = env.port(listener)
        ctx = env.client_context()

        def send() -> dict[str, tuple[int, bytes]]:
            client: smtplib.SMTP
            if listener == "submissions":
                client = smtplib.SMTP_SSL("localhost", port, context=ctx, timeout=10)
            else:
                client = smtplib.SMTP("localhost", port, timeout=10)
            with client as c:
                c.ehlo("client.test")
                if listener == "submission":
                    c.starttls(context=ctx)
                    c.ehlo("client.test")
                c.user, c.password = "alice", PASSWORD
                auth = c.auth_plain if mech == "PLAIN" else c.auth_login
                code, _ = c.auth(mech, auth, initial_response_ok=mech == "PLAIN")
                assert code == 235
                return c.sendmail("alice@example.com", ["x@dest.example"], MSG)

        assert await asyncio.to_thread(send) == {}
        rows = env.messages()
        assert len(rows) == 1
        assert rows[0]["user"] == "alice"
        assert env.recipients(rows[0]["id"]) == ["x@dest.example"]
        body = bytes(rows[0]["body"])
        assert body.startswith(b"Received: from client.test ([127.0.0.1])")
        assert b"with ESMTPSA (TLSv1.3)" in body


@pytest.mark.parametrize("mech", ["plain", "login"])
@pytest.mark.parametrize("listener", ["submission", "submissions"])
async def test_aiosmtplib(tmp_path: Path, mech: str, listener: str) -> None:
    async with running(tmp_path) as env:
        implicit = listener == "submissions"
        client = aiosmtplib.SMTP(
            hostname="localhost",
            port=env.port(listener),
            tls_context=env.client_context(),
            use_tls=implicit,
            start_tls=not implicit,
            timeout=10,
        )
        async with client:
            await client.ehlo()  # RFC 3207: the session restarts after STARTTLS
            await getattr(client, f"auth_{mech}")("alice", PASSWORD)
            errors, reply = await client.sendmail("alice@example.com", ["y@dest.example"], MSG)
        assert errors == {}
        assert reply.startswith("2.0.0 Ok: queued as ")
        queue_id = reply.rsplit(" ", 1)[1]
        assert [r["id"] for r in env.messages()] == [queue_id]


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("listener", ["submission", "submissions"])
async def test_swaks(tmp_path: Path, mech: str, listener: str) -> None:
    async with running(tmp_path) as env:
        tls = "--tls-on-connect" if listener == "submissions" else "--tls"
        proc = await asyncio.create_subprocess_exec(
            "swaks", "--server", f"127.0.0.1:{env.port(listener)}", tls,
            "--auth", mech, "--auth-user", "alice", "--auth-password", PASSWORD,
            "--from", "alice@example.com", "--to", "z@dest.example",
            "--helo", "swaks.test", "--timeout", "10",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text
        assert "250 2.0.0 Ok: queued as" in text
        assert len(env.messages()) == 1


async def test_ehlo_capabilities_and_auth_only_after_tls(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        c = await RawClient.connect(env.port("submission"))
        assert (await c.reply()).startswith("220 ")
        before = await c.cmd("EHLO client.test")
        for cap in ("SIZE 26214400", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                    "PIPELINING", "STARTTLS"):  # fmt: skip
            assert cap in before
        assert "AUTH" not in before
        assert (await c.cmd("AUTH PLAIN AGFsaWNlAHg=")).startswith("530 5.7.0")
        assert (await c.cmd("MAIL FROM:<alice@example.com>")).startswith("530 5.7.0")
        assert (await c.cmd("STARTTLS")).startswith("220 2.0.0")
        await c.starttls(env.client_context())
        after = await c.cmd("EHLO client.test")
        assert "AUTH LOGIN PLAIN" in after
        assert "STARTTLS" not in after
        assert (await c.cmd("QUIT")).startswith("221 2.0.0")
        await c.close()

        c = await RawClient.connect(env.port("submissions"), env.client_context())
        await c.reply()
        assert "AUTH LOGIN PLAIN" in await c.cmd("EHLO client.test")
        await c.close()

        c = await RawClient.connect(env.port("plain"))
        await c.reply()
        plain = await c.cmd("EHLO client.test")
        assert "AUTH" not in plain and "STARTTLS" not in plain
        assert (await c.cmd("AUTH PLAIN AGFsaWNlAHg=")).startswith("538 5.7.11")
        await c.close()


async def test_every_reply_has_an_enhanced_code(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        c = await RawClient.connect(env.port("submissions"), env.client_context())
        await c.reply()
        replies = [
            await c.cmd("HELO client.test"),
            await c.cmd("EHLO client.test"),
            await c.cmd("NOOP"),
            await c.cmd("BOGUS"),
            await c.cmd("RCPT TO:<x@dest.example>"),
            await c.cmd("DATA"),
            await c.cmd("MAIL FROM:"),
            await c.cmd("VRFY alice"),
            await c.cmd("EXPN list"),
            await c.cmd("HELP"),
            await c.cmd("RSET"),
            await c.cmd("AUTH CRAM-MD5"),
            await c.cmd("QUIT"),
        ]
        import re

        for reply in replies:
            for line in reply.splitlines():
                if line.startswith("250-") or (line.startswith("250 ") and "ENHANCED" in line):
                    continue  # EHLO lines are exempt (RFC 2034)
                assert re.match(r"^\d{3}[ -][245]\.\d+\.\d+ ", line), line
