from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

from tests.support.submission import PASSWORD, running

MSG = b"From: alice@example.com\r\nTo: x@dest.example\r\nSubject: hi\r\n\r\nhello\r\n"


async def test_smtplib_starttls_plain(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        port = env.port("submission")
        ctx = env.client_context()

        def send() -> dict:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as c:
                c.ehlo()
                c.starttls(context=ctx)
                c.ehlo()
                c.login("alice", PASSWORD)
                return c.sendmail("alice@example.com", ["x@dest.example"], MSG)

        assert await asyncio.to_thread(send) == {}
        rows = env.messages()
        assert len(rows) == 1
