"""The HTTP send API and SMTP submission spend the same per-user rate, and API mail's
``Received:`` field says it came over HTTP(S), not ESMTPA.

One daemon with ``[submission] user_rate`` and both the AUTH submission listeners and the
API over HTTPS: a user that has spent its burst over the API is refused over SMTP and the
other way round, until a SIGHUP takes the rate away from both; the mail that did go out is
traced with the protocol it really used.
"""

from __future__ import annotations

import asyncio
import email
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest

from tests.support.apiserver import ApiDaemon

MSG = b"From: <app@example.com>\r\nTo: <s@dest.example>\r\nSubject: smtp\r\n\r\nover smtp\r\n"


def body(n: int) -> dict[str, Any]:
    return {
        "personalizations": [{"to": [{"email": f"a{n}@dest.example"}]}],
        "from": {"email": "app@example.com"},
        "subject": f"api {n}",
        "content": [{"type": "text/plain", "value": "over the API"}],
    }


async def api_send(api: ApiDaemon, ctx: ssl.SSLContext, n: int) -> int:
    host, port = api.cfg.address("api", "listen")
    async with aiohttp.ClientSession() as s, s.post(
        f"https://{host}:{port}/v3/mail/send", json=body(n), ssl=ctx,
        headers={"Authorization": f"Bearer {api.key}"},
    ) as r:  # fmt: skip
        await r.read()
        return r.status


async def smtp_send(api: ApiDaemon, ctx: ssl.SSLContext) -> None:
    _, port = api.cfg.address("submission", "listen_tls")
    client = aiosmtplib.SMTP(hostname="localhost", port=port, use_tls=True, tls_context=ctx,
                             timeout=10)  # fmt: skip
    async with client:
        await client.login("app", "a long password")
        await client.sendmail("app@example.com", ["s@dest.example"], MSG)


async def test_api_and_smtp_share_the_users_rate(tmp_path: Path) -> None:
    api = ApiDaemon(tmp_path, api={"tls": True}, tls=True)
    api.cfg.set("submission", user_rate="1/h", user_burst=3)
    ctx = ssl.create_default_context()
    api.cfg.ca.configure_trust(ctx)
    async with api:
        assert await api_send(api, ctx, 0) == 202
        assert await api_send(api, ctx, 1) == 202
        await smtp_send(api, ctx)  # the third token of the burst
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await smtp_send(api, ctx)
        assert refused.value.code == 451
        assert await api_send(api, ctx, 2) == 429  # the same bucket, now empty
        assert api.queued() == 3
        await api.wait_messages(3)
        by_to = {email.message_from_bytes(m.data)["To"]: m.data for m in api.sink.messages}
        api_mail = by_to["a0@dest.example"]
        head = api_mail.split(b"\r\n\r\n", 1)[0]
        assert b"with HTTPS (TLSv1." in head, head
        assert b"ESMTP" not in head
        assert b"Received: from [127.0.0.1]\r\n\tby mta.test (mtaserver) with HTTPS" in api_mail
        assert b"with ESMTPSA (TLSv1." in by_to["<s@dest.example>"]
        # SIGHUP without a user_rate: neither way is limited any more
        assert api.daemon is not None
        del api.cfg.data["submission"]["user_rate"]
        api.cfg.write()
        await asyncio.to_thread(api.daemon.reload)
        assert await api_send(api, ctx, 3) == 202
        await smtp_send(api, ctx)
        assert await api_send(api, ctx, 4) == 202
        assert api.queued() == 6
