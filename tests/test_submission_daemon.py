"""The real daemon: a user made with the CLI submits over 587 and 465; SIGTERM drains."""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path

import aiosmtplib

from tests.support.daemon import Daemon, TestConfig, free_port

PASSWORD = "daemon password 123"
MSG = b"From: App <app@example.com>\r\nTo: x@dest.example\r\nSubject: hi\r\n\r\nhello\r\n"


async def test_daemon_submission_with_cli_user(tmp_path: Path) -> None:
    cfg = TestConfig(tmp_path)
    cfg.set("submission", trusted_networks=["10.99.0.0/16"])  # loopback is not trusted
    cfg.set("delivery", relay_host=f"127.0.0.1:{free_port()}", tls="none")  # nothing there
    ctx = ssl.create_default_context()
    cfg.ca.configure_trust(ctx)
    daemon = Daemon(cfg)
    await asyncio.to_thread(daemon.start)
    try:
        added = await asyncio.to_thread(
            daemon.cli, "user", "add", "app", "--domain", "example.com", "--password-stdin",
            input=PASSWORD.encode() + b"\n",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        ids = []
        for key, implicit in (("listen", False), ("listen_tls", True)):
            host, port = cfg.address("submission", key)
            client = aiosmtplib.SMTP(hostname="localhost", port=port, tls_context=ctx,
                                     use_tls=implicit, start_tls=not implicit, timeout=15)  # fmt: skip
            async with client:
                await client.login("app", PASSWORD)
                errors, reply = await client.sendmail("app@example.com", ["x@dest.example"], MSG)
                assert errors == {}
                ids.append(reply.rsplit(" ", 1)[1])
                # sender binding holds in the daemon too
                try:
                    await client.sendmail("app@other.example", ["x@dest.example"], MSG)
                    raise AssertionError("foreign sender accepted")
                except aiosmtplib.SMTPSenderRefused as exc:
                    assert exc.code == 553
        # no AUTH without a password, and no relay for the unauthenticated on the plain port
        host, port = cfg.address("submission", "listen_plain")
        plain = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=15)
        async with plain:
            try:
                await plain.sendmail("app@example.com", ["x@dest.example"], MSG)
                raise AssertionError("relay from an untrusted client")
            except aiosmtplib.SMTPRecipientsRefused as exc:
                assert exc.recipients[0].code == 554
    finally:
        code = await asyncio.to_thread(daemon.stop)
    log = daemon.log()
    assert code == 0, log
    stored = {r[0] for r in cfg.query("""SELECT id FROM messages WHERE "user"='app'""")}
    assert stored == set(ids)
    for queue_id in ids:
        assert f"queue_id={queue_id}" in log
    for form in (PASSWORD, base64.b64encode(f"\0app\0{PASSWORD}".encode()).decode()):
        assert form not in log
    assert "auth_ok" in log  # the debug-level log really covered the sessions
