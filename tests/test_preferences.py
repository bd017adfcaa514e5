"""The preferences page against a real daemon's tracking host: the signed link lists the
owner's lists with the person's choices; GET changes nothing; POST saves exactly the ticked
lists; unsubscribe-from-all suppresses the address for the owner's domain and unsubscribes
the contact in the same step; a tampered link or another kind of token is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mtaserver.config.storage import PostgresConfig
from mtaserver.storage.postgres.contacts import PgContactStore
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.tracking.preferences import preferences_url
from mtaserver.tracking.tokens import TokenCodec
from tests.test_contacts_api import Client
from tests.test_optin import SECRET, OptInDaemon

pytestmark = pytest.mark.pg_pending("optin")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[OptInDaemon]:
    async with OptInDaemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def memberships(api: OptInDaemon, address: str) -> dict[str, str]:
    rows = api.query(
        "SELECT l.name, m.status FROM list_members m JOIN lists l ON l.id = m.list_id "
        "JOIN contacts c ON c.id = m.contact_id WHERE c.address=?",
        address,
    )
    return dict(rows)


async def may_receive(api: OptInDaemon, address: str, list_name: str | None) -> bool:
    """The daemon's contact store says so (either backend's)."""
    storage = api.cfg.data.get("storage", {})
    if storage.get("backend") == "postgresql":
        password = Path(storage["password_file"]).read_text().strip()
        pg = PgDatabase(PostgresConfig(dsn=storage["dsn"], tls="disable"), password=password)
        await pg.open(migrate=False)
        try:
            return await PgContactStore(pg).may_receive("app", address, list_name)
        finally:
            await pg.close()
    db = Database(api.cfg.database)
    await db.open()
    try:
        return await ContactStore(db).may_receive("app", address, list_name)
    finally:
        await db.close()


async def test_pages_change_lists_and_unsubscribe_all(
    api: OptInDaemon, session: aiohttp.ClientSession
) -> None:
    c = Client(api, session, api.key)
    for name in ("news", "offers", "events"):
        assert (await c.call("POST", "/v1/lists", {"name": name}))[0] == 201
    for name in ("news", "offers"):
        st, _ = await c.call("POST", f"/v1/lists/{name}/members", {"emails": ["pat@x.test"]})
        assert st == 200
    url = preferences_url(TokenCodec((SECRET,)), api.tracking, "app", "pat@x.test")
    key = TokenCodec((SECRET,)).key  # the bytes form: the codec's signing key
    assert url == preferences_url(key, api.tracking + "/", "app", "PAT@x.test")  # pure
    assert "pat" not in url.split("/p/")[1].lower()
    async with session.get(url) as r:
        assert r.status == 200
        page = await r.text()
        assert r.headers["Cache-Control"].startswith("no-store")
    assert 'value="news" checked' in page and 'value="offers" checked' in page
    assert 'value="events">' in page and 'method="post"' in page and "<script" not in page
    # Save: keep news, drop offers, join events.
    async with session.post(url, data=[("action", "save"), ("list", "news"),
                                       ("list", "events")]) as r:  # fmt: skip
        assert r.status == 200, await r.text()
        assert "saved" in (await r.text()).lower()
    assert memberships(api, "pat@x.test") == {
        "news": "subscribed", "offers": "unsubscribed", "events": "subscribed",
    }  # fmt: skip
    assert await may_receive(api, "pat@x.test", "events")
    assert not await may_receive(api, "pat@x.test", "offers")
    # Unsubscribe from all: suppression (the owner's domain) and consent together.
    async with session.post(url, data={"action": "unsubscribe_all"}) as r:
        assert r.status == 200
        assert "unsubscribed from all" in (await r.text()).lower()
    rows = api.query("SELECT scope, reason, source FROM suppressions WHERE address='pat@x.test'")
    assert rows == [("example.com", "unsubscribe", "preferences")]
    st, body = await c.call("GET", "/v1/contacts/pat@x.test")
    assert body["consent"]["status"] == "unsubscribed"
    assert body["consent"]["source"] == "unsubscribe"
    assert set(memberships(api, "pat@x.test").values()) == {"unsubscribed"}
    assert not await may_receive(api, "pat@x.test", None)
    # Mail from the API to the address is now dropped, not delivered.
    before = len(api.sink.messages)
    st, _ = await c.call("POST", "/v3/mail/send", {
        "personalizations": [{"to": [{"email": "pat@x.test"}]}],
        "from": {"email": "shop@example.com"}, "subject": "hi",
        "content": [{"type": "text/plain", "value": "hello"}],
    })  # fmt: skip
    assert st == 202
    # Stored before the 202 as final (suppressed): never handed to delivery.
    rows = api.query("SELECT state FROM recipients WHERE address='pat@x.test'")
    assert rows == [("suppressed",)], rows
    assert len(api.sink.messages) == before


async def test_refused_tokens_and_get_is_safe(
    api: OptInDaemon, session: aiohttp.ClientSession
) -> None:
    c = Client(api, session, api.key)
    assert (await c.call("POST", "/v1/lists", {"name": "news"}))[0] == 201
    assert (await c.call("POST", "/v1/lists/news/members", {"emails": ["q@x.test"]}))[0] == 200
    url = preferences_url(TokenCodec((SECRET,)), api.tracking, "app", "q@x.test")
    base, token = url.rsplit("/", 1)
    forged = preferences_url(b"another secret of 32 bytes......", api.tracking, "app", "q@x.test")
    confirm = api.tokens().confirm_token("app", "news", "q@x.test", 0)
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (forged, f"{base}/{confirm}", f"{base}/{flipped}"):
        async with session.post(bad, data={"action": "unsubscribe_all"}) as r:
            assert r.status == 404, bad
    async with session.post(url, data={"action": "delete-everything"}) as r:
        assert r.status == 400
    for _ in range(3):  # scanners GET links: nothing changes
        async with session.get(url) as r:
            assert r.status == 200
    assert memberships(api, "q@x.test") == {"news": "subscribed"}
    assert api.query("SELECT count(*) FROM suppressions")[0][0] == 0
    # Another owner's token for the same address sees that owner's (no) contact.
    other = preferences_url(TokenCodec((SECRET,)), api.tracking, "someone-else", "q@x.test")
    async with session.get(other) as r:
        assert r.status == 404
