"""250 only after the durable commit; storage failures answer 451/452; no internals leak."""

from __future__ import annotations

import asyncio
import base64
import logging
import sqlite3
from pathlib import Path

import pytest

from mtaserver.config.submission import AuthThrottleConfig
from tests.support.submission import PASSWORD, RawClient, plain_auth, running

MSG = b"From: alice@example.com\r\nSubject: t\r\n\r\nbody\r\n"


async def transaction(c: RawClient, data: bytes = MSG, rcpts: int = 1) -> str:
    assert (await c.cmd("MAIL FROM:<alice@example.com>")).startswith("250")
    for i in range(rcpts):
        assert (await c.cmd(f"RCPT TO:<r{i}@dest.example>")).startswith("250")
    assert (await c.cmd("DATA")).startswith("354")
    return await c.cmd(data + b".")


async def authed(env) -> RawClient:  # type: ignore[no-untyped-def]
    c = await RawClient.connect(env.port("submissions"), env.client_context())
    await c.reply()
    await c.cmd("EHLO client.test")
    assert (await c.cmd(f"AUTH PLAIN {plain_auth()}")).startswith("235")
    return c


async def test_250_never_precedes_the_commit(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        commits: list[int] = []
        env.db.on_commit.append(lambda seconds, ops: commits.append(ops))
        c = await authed(env)
        for _ in range(5):
            seen_before = len(commits)
            reply = await transaction(c)
            # at the instant the 250 arrives: a commit has happened and another connection
            # (what survives a crash) already sees the message
            assert reply.startswith("250 2.0.0 Ok: queued as "), reply
            assert len(commits) > seen_before
            queue_id = reply.rsplit(" ", 1)[1]
            conn = sqlite3.connect(env.db_path)
            try:
                row = conn.execute("SELECT body FROM messages WHERE id=?", (queue_id,)).fetchone()
            finally:
                conn.close()
            assert row is not None and row[0].endswith(b"body\r\n")
        await c.close()


async def test_accepted_event_carries_user_ip_size_recipients(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        c = await authed(env)
        reply = await transaction(c, rcpts=3)
        await c.close()
        queue_id = reply.rsplit(" ", 1)[1]
        (event,) = env.events("accepted")
        assert event["queue_id"] == queue_id
        import json

        data = json.loads(event["data"])
        assert data["user"] == "alice"
        assert data["client_ip"] == "127.0.0.1"
        assert data["recipients"] == 3
        assert data["size"] == len(bytes(env.messages()[0]["body"]))


async def test_full_database_answers_452_and_keeps_earlier_mail(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        c = await authed(env)
        first = await transaction(c)
        assert first.startswith("250")
        pages = await env.db.read(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
        await env.db.write(lambda conn: conn.execute(f"PRAGMA max_page_count={pages + 2}"))
        big = b"From: alice@example.com\r\n\r\n" + (b"z" * 76 + b"\r\n") * 4000
        reply = await transaction(c, big)
        assert reply.startswith("452 4.3.1"), reply
        assert "full" not in reply.lower() or "storage" in reply.lower()
        assert "sqlite" not in reply.lower() and "Error" not in reply
        # the session and the server go on; nothing committed earlier is lost
        assert (await c.cmd("NOOP")).startswith("250")
        rows = env.messages()
        assert [r["id"] for r in rows] == [first.rsplit(" ", 1)[1]]
        assert bytes(rows[0]["body"]).endswith(MSG.split(b"\r\n\r\n")[1])
        await env.db.write(lambda conn: conn.execute("PRAGMA max_page_count=1073741823"))
        assert (await transaction(c, big)).startswith("250")
        await c.close()
        assert len(env.messages()) == 2


async def test_unexpected_exception_answers_generic_451(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class ExplodingSigner:
        async def sign(self, data: bytes, *_split: object) -> bytes:
            raise RuntimeError("secret internals at /var/lib/key.pem")

    caplog.set_level(logging.INFO)
    async with running(tmp_path, pipeline_kwargs={"signer": ExplodingSigner()}) as env:
        c = await authed(env)
        reply = await transaction(c)
        assert reply.startswith("451 4.3.0"), reply
        assert "secret" not in reply and "RuntimeError" not in reply
        assert (await c.cmd("NOOP")).startswith("250")
        await c.close()
        assert env.messages() == []
    failures = [r for r in caplog.records if "enqueue_failed" in r.getMessage()]
    assert len(failures) == 1 and "queue_id=" in failures[0].getMessage()


async def test_passwords_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("mail.log").setLevel(logging.DEBUG)
    wrong = "Wr0ng-but-secret-passw0rd"
    secrets_ = [PASSWORD, wrong]
    throttle = AuthThrottleConfig(delay_after=100, lockout_after=100)
    async with running(tmp_path, throttle=throttle) as env:
        c = await RawClient.connect(env.port("submissions"), env.client_context())
        await c.reply()
        await c.cmd("EHLO client.test")
        assert (await c.cmd(f"AUTH PLAIN {plain_auth(password=wrong)}")).startswith("535 5.7.8")
        assert (await c.cmd("AUTH PLAIN")).startswith("334")
        assert (await c.cmd(plain_auth(password=wrong))).startswith("535 5.7.8")
        assert (await c.cmd("AUTH LOGIN")).startswith("334")
        assert (await c.cmd(base64.b64encode(b"alice").decode())).startswith("334")
        assert (await c.cmd(base64.b64encode(wrong.encode()).decode())).startswith("535")
        assert (await c.cmd("AUTH LOGIN " + base64.b64encode(b"alice").decode())).startswith("334")
        assert (await c.cmd(base64.b64encode(PASSWORD.encode()).decode())).startswith("235")
        await c.cmd("QUIT")
        await c.close()
        c = await RawClient.connect(env.port("submissions"), env.client_context())
        await c.reply()
        await c.cmd("EHLO client.test")
        assert (await c.cmd(f"AUTH PLAIN {plain_auth()}")).startswith("235")
        await c.close()
    text = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert "AUTH" in text  # the log really captured the sessions
    for secret in secrets_:
        forms = [
            secret,
            base64.b64encode(secret.encode()).decode(),
            plain_auth(password=secret),
            plain_auth(password=secret)[:-4],
        ]
        for form in forms:
            assert form not in text, form


async def test_storage_failure_answers_451_without_details(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        c = await authed(env)
        await env.db.close()  # the database goes away under a live session
        reply = await transaction(c)
        assert reply == "451 4.3.0 Temporary storage failure, try again later"
        await c.close()


async def test_drain_closes_idle_sessions_and_lets_a_transaction_finish(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        idle = await authed(env)
        busy = await authed(env)
        assert (await busy.cmd("MAIL FROM:<alice@example.com>")).startswith("250")
        assert (await busy.cmd("RCPT TO:<x@dest.example>")).startswith("250")
        assert (await busy.cmd("DATA")).startswith("354")
        await busy.send(b"From: alice@example.com\r\n\r\nhalf")
        closing = asyncio.create_task(env.server.close(10.0))
        assert (await idle.reply()).startswith("421 4.3.2")
        await busy.send(b" of the message\r\n.\r\n")
        assert (await busy.reply()).startswith("250 2.0.0")  # the transaction completes …
        assert (await busy.reply()).startswith("421 4.3.2")  # … then the session ends
        await closing
        assert len(env.messages()) == 1
        await idle.close()
        await busy.close()
