"""``GET /v1/contacts/{addr}/activity`` against a real daemon: the key's user's messages to
the contact and their events (queued, delivered, opened with its human/machine verdict,
clicked) in time order, paged by cursor, and nothing of another user's mail to the same
address."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.mxsink import eventually
from tests.test_contacts_api import Client, other_key
from tests.test_optin import OptInDaemon

ADDR = "tim@x.test"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[OptInDaemon]:
    daemon = OptInDaemon(tmp_path)
    daemon.cfg.set("tracking", scanner_window="1s", burst_window="1s")
    async with daemon:
        yield daemon


def mail(sender: str, subject: str) -> dict[str, object]:
    return {
        "personalizations": [{"to": [{"email": ADDR}]}],
        "from": {"email": sender}, "subject": subject,
        "content": [{"type": "text/html",
                     "value": '<p>hi <a href="https://shop.example/x">shop</a></p>'}],
        "tracking_settings": {"open_tracking": {"enable": True},
                              "click_tracking": {"enable": True}},
    }  # fmt: skip


async def test_timeline_in_order_paged_and_owner_scoped(api: OptInDaemon) -> None:
    async with aiohttp.ClientSession() as session:
        c = Client(api, session, api.key)
        assert (await c.call("PUT", "/v1/contacts", {"email": ADDR}))[0] == 201
        for subject in ("one", "two"):
            assert (await c.call("POST", "/v3/mail/send", mail("shop@example.com", subject)))[
                0
            ] == 202
        other = Client(api, session, await other_key(api))
        assert (await other.call("PUT", "/v1/contacts", {"email": ADDR}))[0] == 201
        assert (await other.call("POST", "/v3/mail/send", mail("news@example.net", "x")))[0] == 202
        await api.wait_messages(3)
        first = next(m for m in api.sink.messages if b"Subject: one" in m.data)
        body = first.data.decode("utf-8", "replace").replace("=\r\n", "").replace("=3D", "=")
        pixel = re.search(r"(http://127\.0\.0\.1:\d+/o/[A-Za-z0-9_-]+\.gif)", body)
        click = re.search(r"(http://127\.0\.0\.1:\d+/c/[A-Za-z0-9_-]+)", body)
        assert pixel and click, body
        headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"}
        async with session.get(pixel.group(1), headers=headers) as r:
            assert r.status == 200
        async with session.get(click.group(1), headers=headers, allow_redirects=False) as r:
            assert r.status == 302

        async def types() -> list[str]:
            st, page = await c.call("GET", f"/v1/contacts/{ADDR}/activity")
            assert st == 200, page
            return [a["type"] for a in page["activity"]]

        got = await eventually(
            types, lambda g: g.count("delivered") == 2 and "opened" in g and "clicked" in g, 40
        )
        assert got.count("delivered") == 2 and "opened" in got and "clicked" in got, got
        assert got.count("queued") == 2 and got[0] == "queued"
        st, page = await c.call("GET", f"/v1/contacts/{ADDR}/activity")
        items = page["activity"]
        assert [a["at"] for a in items] == sorted(a["at"] for a in items)
        opened = next(a for a in items if a["type"] == "opened")
        assert isinstance(opened["machine"], bool)
        assert next(a for a in items if a["type"] == "clicked")["url"] == "https://shop.example/x"
        # Only this user's two messages: the other user's mail to the address is not here.
        assert len({a["queue_id"] for a in items}) == 2
        st, page2 = await other.call("GET", f"/v1/contacts/{ADDR}/activity")
        assert {a["queue_id"] for a in page2["activity"]}.isdisjoint(a["queue_id"] for a in items)
        # Paging: two at a time gives the same sequence.
        seen: list[dict[str, object]] = []
        after = None
        while True:
            params = {"limit": "2", **({"after": after} if after else {})}
            st, p = await c.call("GET", f"/v1/contacts/{ADDR}/activity", params=params)
            assert st == 200
            seen += p["activity"]
            after = p["next"]
            if after is None:
                break
        assert seen == items
        assert (await c.call("GET", f"/v1/contacts/{ADDR}/activity?after=zzz"))[0] == 400
        assert (await c.call("GET", "/v1/contacts/nobody@x.test/activity"))[0] == 404
