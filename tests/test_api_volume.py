"""A request whose messages would be huge once composed (a big attachment copied into
every personalization) is refused with SendGrid's 413 naming ``attachments``, before
anything is rendered, spent from the rate or queued."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp

from mtaserver.storage.sqlite.db import Database
from tests.support.apiinproc import in_process_api


async def test_attachment_times_personalizations_over_the_cap_is_413(db: Database) -> None:
    blob = base64.b64encode(b"\0" * (2 * 1024 * 1024)).decode()  # 2 MiB, x1000 = 2.6 GiB
    people = [{"to": [{"email": f"r{i}@dest.test"}]} for i in range(1000)]
    body: dict[str, Any] = {
        "personalizations": people,
        "from": {"email": "app@example.com"}, "subject": "s",
        "content": [{"type": "text/plain", "value": "see attached"}],
        "attachments": [{"content": blob, "filename": "big.bin"}],
    }  # fmt: skip
    async with in_process_api(db) as api, aiohttp.ClientSession() as s:
        async with s.post(api.base_url + "/v3/mail/send", data=json.dumps(body),
                          headers={"Authorization": f"Bearer {api.key}"}) as r:  # fmt: skip
            status, answer = r.status, await r.json()
        assert status == 413
        (err,) = answer["errors"]
        assert err["field"] == "attachments" and "MiB" in err["message"]
        assert await api.recipients() == []
        body["personalizations"] = people[:10]  # 27 MiB: accepted
        async with s.post(api.base_url + "/v3/mail/send", data=json.dumps(body),
                          headers={"Authorization": f"Bearer {api.key}"}) as r:  # fmt: skip
            assert r.status == 202
        assert len(await api.recipients()) == 10
