"""Double opt-in against a real daemon: a contact put on a double opt-in list (API members,
import, CLI) gets one confirmation mail at the test MX, nothing else until it confirms; the
link's GET shows a page and changes nothing, its POST confirms and records the proof; an
expired or tampered link is refused."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mtaserver.tracking.consent_tokens import CONFIRM_MAX_AGE, ConsentTokens
from mtaserver.tracking.tokens import TokenCodec
from tests.support.apiserver import ApiDaemon
from tests.support.daemon import free_port
from tests.support.mxsink import wait_for
from tests.test_contacts_api import Client

pytestmark = pytest.mark.pg_pending("optin")

SECRET = b"0123456789abcdef0123456789abcdef"
LINK = re.compile(r"(http://127\.0\.0\.1:\d+/s/[A-Za-z0-9_-]+)")


class OptInDaemon(ApiDaemon):
    """The API daemon with the tracking host listening (it serves the confirm links)."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        port = free_port()
        self.tracking = f"http://127.0.0.1:{port}"
        secret = tmp_path / "tracking.key"
        secret.write_bytes(SECRET + b"\n")
        self.cfg.set("tracking", listen=f"127.0.0.1:{port}", base_url=self.tracking,
                     secret_file=str(secret))  # fmt: skip

    def tokens(self) -> ConsentTokens:
        return ConsentTokens(TokenCodec((SECRET,)))


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[OptInDaemon]:
    async with OptInDaemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def body_of(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


async def mail_to(api: OptInDaemon, address: str, n: int = 1) -> list[bytes]:
    def got() -> list[bytes]:
        return [m.data for m in api.sink.messages if address in m.rcpt_tos]

    await wait_for(lambda: len(got()) >= n, 30)
    return got()


async def test_confirm_flow(api: OptInDaemon, session: aiohttp.ClientSession) -> None:
    c = Client(api, session, api.key)
    st, body = await c.call("POST", "/v1/lists", {"name": "news", "double_opt_in": True,
                            "confirm": {"subject": "Confirm {{list}} please"}})  # fmt: skip
    assert st == 201, body
    assert body["confirm"]["subject"] == "Confirm {{list}} please"
    st, body = await c.call("POST", "/v1/lists/news/members", {"emails": ["Ann@x.test"]})
    assert (st, body) == (200, {"added": 1})
    st, body = await c.call("GET", "/v1/contacts/ann@x.test")
    assert body["consent"]["status"] == "unconfirmed"
    assert body["lists"][0]["status"] == "unconfirmed"
    [raw] = await mail_to(api, "ann@x.test")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Confirm news please"
    assert msg["From"] == "no-reply@example.com"
    assert api.dkim_ok(raw)
    text = body_of(raw)
    m = LINK.search(text)
    assert m, text
    link = m.group(1)
    assert "ann" not in link.lower()  # the address is not readable in the URL
    assert link.startswith(api.tracking)
    # GET (and HEAD: what link scanners do) shows the button and confirms nothing.
    for method in ("GET", "HEAD"):
        async with session.request(method, link) as r:
            assert r.status == 200
            page = await r.text()
    async with session.get(link) as r:
        page = await r.text()
    assert 'method="post"' in page and "ann@x.test" in page
    assert (await c.call("GET", "/v1/contacts/ann@x.test"))[1]["consent"]["status"] == (
        "unconfirmed"
    )
    # POST confirms, with the proof: source confirm, time, IP.
    t0 = time.time()
    async with session.post(link, data={"confirm": "yes"}) as r:
        assert r.status == 200
        assert "subscribed" in (await r.text()).lower()
    st, body = await c.call("GET", "/v1/contacts/ann@x.test")
    consent = body["consent"]
    assert consent["status"] == "subscribed" and consent["source"] == "confirm"
    assert consent["ip"] == "127.0.0.1" and consent["at"] is not None
    assert body["lists"][0]["status"] == "subscribed" and body["lists"][0]["confirmed_at"]
    row = api.query("SELECT consent_at FROM contacts WHERE address='ann@x.test'")
    assert row[0][0] >= t0 - 2
    # A second POST has nothing left to confirm; still exactly one confirmation mail.
    async with session.post(link, data={"confirm": "yes"}) as r:
        assert r.status == 200 and "nothing to confirm" in (await r.text()).lower()
    assert len(await mail_to(api, "ann@x.test")) == 1
    # Queued, not only delivered: nothing else is on its way either.
    assert api.query("SELECT count(*) FROM recipients WHERE address='ann@x.test'") == [(1,)]


async def test_import_and_cli_get_one_mail_each(
    api: OptInDaemon, session: aiohttp.ClientSession
) -> None:
    c = Client(api, session, api.key)
    assert (await c.call("POST", "/v1/lists", {"name": "doi", "double_opt_in": True}))[0] == 201
    assert (await c.call("POST", "/v1/lists", {"name": "plain"}))[0] == 201
    csv = "email,name\n" + "".join(f"p{i}@imp.test,P{i}\n" for i in range(20))
    st, res = await c.call("POST", "/v1/contacts/import?list=doi", data=csv.encode(),
                           headers={"Content-Type": "text/csv"})  # fmt: skip
    assert st == 200 and res["created"] == 20, res
    # A plain list sends nothing.
    assert (await c.call("POST", "/v1/lists/plain/members", {"emails": ["q@imp.test"]}))[0] == 200
    await wait_for(
        lambda: len([m for m in api.sink.messages if "imp.test" in m.rcpt_tos[0]]) >= 20, 30
    )
    # The CLI writes the database while the daemon runs: the mailer's poll finds it.
    assert api.daemon is not None
    out = await asyncio.to_thread(
        api.daemon.cli, "contacts", "import", "--user", "app", "--list", "doi", "--format",
        "csv", "-", input=b"email\ncli@imp.test\n",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    await mail_to(api, "cli@imp.test")
    rcpts = [m.rcpt_tos[0] for m in api.sink.messages if "imp.test" in m.rcpt_tos[0]]
    assert len(rcpts) == len(set(rcpts)), "a membership got two confirmation mails"
    # Queued, not only delivered: one confirmation each, none still on its way.
    twice = api.query("SELECT address FROM recipients WHERE address LIKE '%@imp.test' "
                      "GROUP BY address HAVING count(*) > 1")  # fmt: skip
    assert twice == [], twice
    assert "q@imp.test" not in rcpts
    sent = api.query("SELECT count(*) FROM optin_sent")[0][0]
    assert sent == len(rcpts)


async def test_expired_and_tampered_links(api: OptInDaemon, session: aiohttp.ClientSession) -> None:
    c = Client(api, session, api.key)
    assert (await c.call("POST", "/v1/lists", {"name": "doi", "double_opt_in": True}))[0] == 201
    assert (await c.call("POST", "/v1/lists/doi/members", {"emails": ["e@x.test"]}))[0] == 200
    [raw] = await mail_to(api, "e@x.test")
    m = LINK.search(body_of(raw))
    assert m
    link = m.group(1)
    tokens = api.tokens()
    old = tokens.confirm_token("app", "doi", "e@x.test", time.time() - CONFIRM_MAX_AGE - 60)
    other = ConsentTokens(TokenCodec((b"another secret of 32 bytes......",)))
    forged = other.confirm_token("app", "doi", "e@x.test", time.time())
    prefix = link.rsplit("/", 1)[0]
    flipped = link[:-3] + ("A" if link[-3] != "A" else "B") + link[-2:]
    for url, status in ((f"{prefix}/{old}", 410), (f"{prefix}/{forged}", 404), (flipped, 404),
                        (f"{prefix}/", 404)):  # fmt: skip
        for method in ("GET", "POST"):
            async with session.request(method, url, data={"confirm": "yes"}) as r:
                assert r.status == status, (url, method, r.status)
    # A preferences token is not a confirm token.
    pref = tokens.preferences_token("app", "e@x.test")
    async with session.post(f"{prefix}/{pref}", data={"confirm": "yes"}) as r:
        assert r.status == 404
    _, body = await c.call("GET", "/v1/contacts/e@x.test")
    assert body["consent"]["status"] == "unconfirmed"
