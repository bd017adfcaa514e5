"""``[submission] user_rate`` with ``workers = 2``: one bucket per user for the whole daemon.

The rate is checked in the owner when a worker hands a message over, so it is the same
bucket whichever worker the connection landed on, and the same one the HTTP API spends.
AUTH (implicit TLS, scrypt) runs in the workers, against the users in the database.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import aiosmtplib
import pytest

from tests.support.apiserver import ApiDaemon
from tests.test_api_rate import api_send, smtp_send


async def test_user_rate_is_one_bucket_across_workers_and_the_api(tmp_path: Path) -> None:
    api = ApiDaemon(tmp_path, api={"tls": True}, tls=True)
    api.cfg.set("server", workers=2)
    api.cfg.set("submission", user_rate="1/h", user_burst=5)
    ctx = ssl.create_default_context()
    api.cfg.ca.configure_trust(ctx)
    async with api:
        assert api.daemon is not None
        assert api.daemon.log().count("event=worker_ready") == 2
        for _ in range(4):  # a new connection each: the kernel spreads them over workers
            await smtp_send(api, ctx)
        assert await api_send(api, ctx, 0) == 202  # the fifth token
        for _ in range(4):
            with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
                await smtp_send(api, ctx)
            assert refused.value.code == 451
            assert "rate limit" in refused.value.message
        assert await api_send(api, ctx, 1) == 429
        assert api.queued() == 5
        await api.wait_messages(5)
        assert all(api.dkim_ok(m.data) for m in api.sink.messages)
