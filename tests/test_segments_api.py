"""``/v1/segments`` against a real daemon over its API socket: save, list, replace, delete,
count and page a segment; errors name the JSON path of the bad node; injection through
names, operators and values is refused or matches only the literal; a filter naming another
user's list is refused and never returns their contacts; keys need contacts.read / write;
paging covers every match once while contacts are added between pages."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.apiserver import ApiDaemon
from tests.support.mxsink import eventually
from tests.test_contacts_api import Client, other_key

pytestmark = pytest.mark.pg_pending("segments")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiDaemon]:
    async with ApiDaemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


PEOPLE = [
    {"email": "ann@x.test", "attributes": {"plan": "pro", "age": 34, "city": "Oslo"}},
    {"email": "ben@x.test", "attributes": {"plan": "free", "age": "19"}},
    {"email": "cat@y.test", "attributes": {"plan": "pro", "name": "x' OR '1'='1"},
     "consent": "unsubscribed"},
]  # fmt: skip


async def seed(c: Client, people: list[dict[str, Any]] = PEOPLE) -> None:
    st, body = await c.call("PUT", "/v1/contacts", {"contacts": people})
    assert st == 200, body


async def test_crud_count_and_contacts(api: ApiDaemon, session: aiohttp.ClientSession) -> None:
    c = Client(api, session, api.key)
    await seed(c)
    assert (await c.call("POST", "/v1/lists", {"name": "news"}))[0] == 201
    assert (await c.call("POST", "/v1/lists/news/members", {"emails": ["ann@x.test"]}))[0] == 200
    doc = {"and": [{"attr": "plan", "eq": "pro"}, {"consent": "subscribed"}]}
    st, body = await c.call("POST", "/v1/segments", {"name": "pro", "filter": doc})
    assert st == 201 and body["name"] == "pro" and body["filter"] == doc, body
    st, body = await c.call("POST", "/v1/segments", {"name": "pro", "filter": doc})
    assert st == 409 and body["errors"][0]["field"] == "name"
    st, body = await c.call("GET", "/v1/segments")
    assert st == 200 and [s["name"] for s in body["segments"]] == ["pro"]
    assert (await c.call("GET", "/v1/segments/pro"))[1]["filter"] == doc
    st, body = await c.call("GET", "/v1/segments/pro/contacts")
    assert st == 200 and body == {"contacts": [{"id": body["contacts"][0]["id"],
                                                "email": "ann@x.test"}], "next": None}  # fmt: skip
    assert (await c.call("POST", "/v1/segments/count", {"segment": "pro"}))[1] == {"count": 1}
    st, body = await c.call("POST", "/v1/segments/count",
                            {"filter": {"attr": "age", "gte": 19}})  # fmt: skip
    assert (st, body) == (200, {"count": 2})  # "19" compares as a number
    st, body = await c.call("PUT", "/v1/segments/pro", {"filter": {"in_list": "news"}})
    assert st == 200 and body["filter"] == {"in_list": "news"}
    st, body = await c.call("PUT", "/v1/segments/all", {"filter": {"and": []}})
    assert st == 201
    assert (await c.call("POST", "/v1/segments/count", {"segment": "all"}))[1] == {"count": 3}
    assert (await c.call("DELETE", "/v1/segments/all"))[0] == 204
    assert (await c.call("DELETE", "/v1/segments/all"))[0] == 404
    assert (await c.call("GET", "/v1/segments/all"))[0] == 404
    assert (await c.call("GET", "/v1/segments/all/contacts"))[0] == 404
    assert (await c.call("POST", "/v1/segments/count", {"segment": "all"}))[0] == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"filter": {"and": [{"consent": "subscribed"}, {"opened": True},
                             {"attr": "x') OR 1=1 --", "eq": 1}]}}, "filter.and[2].attr"),
        ({"filter": {"attr": "plan", "eq' OR 1=1 --": "x"}}, "filter.eq' OR 1=1 --"),
        ({"filter": {"attr": "plan", "in": ["a", None, 3]}}, "filter.in[1]"),
        ({"filter": {"attr": "plan", "in": [{"$ne": 1}]}}, "filter.in[0]"),
        ({"filter": {"field": "owner", "eq": "other"}}, "filter.field"),
        ({"filter": {"in_list": "news", "owner": "other"}}, "filter.owner"),
        ({"filter": {"opened": {"days": -1}}}, "filter.opened.days"),
        ({"filter": "consent = 'subscribed'"}, "filter"),
        ({"segment": "x' OR 1=1"}, "segment"),
        ({"filter": {"and": []}, "segment": "pro"}, "body"),
        ({"filter": {"and": []}, "owner": "other"}, "owner"),
    ],
)  # fmt: skip
async def test_errors_name_the_node(
    api: ApiDaemon, session: aiohttp.ClientSession, body: dict[str, Any], field: str
) -> None:
    c = Client(api, session, api.key)
    st, answer = await c.call("POST", "/v1/segments/count", body)
    assert st == 400 and answer["errors"][0]["field"] == field, answer
    if "filter" in body and field != "body" and field != "owner":
        st, answer = await c.call("PUT", "/v1/segments/s", {"filter": body["filter"]})
        assert st == 400 and answer["errors"][0]["field"] == field, answer
    assert (await c.call("GET", "/v1/segments"))[1] == {"segments": []}


async def test_injection_and_odd_bodies(api: ApiDaemon, session: aiohttp.ClientSession) -> None:
    c = Client(api, session, api.key)
    await seed(c)

    async def count(flt: Any) -> int:
        st, body = await c.call("POST", "/v1/segments/count", {"filter": flt})
        assert st == 200, body
        return int(body["count"])

    assert await count({"attr": "name", "eq": "x' OR '1'='1"}) == 1  # the literal, once
    for evil in ("x') OR 1=1 --", "' OR ''='", '"); DELETE FROM contacts; --', "\\", "%"):
        assert await count({"attr": "plan", "eq": evil}) == 0
        assert await count({"attr": "plan", "in": [evil, 1, 2.5, "'"]}) == 0
        assert await count({"field": "email", "starts_with": evil}) == 0
        assert await count({"not": {"attr": "plan", "contains": evil}}) == 3
    assert await count({"and": []}) == 3  # nothing was dropped or deleted
    for raw in (b"{not json", b"[]", b'"x"', b"{" * 10_000):
        st, body = await c.call("POST", "/v1/segments/count", data=raw,
                                headers={"Content-Type": "application/json"})  # fmt: skip
        assert st == 400 and body["errors"][0]["field"] == "body", body
    big = {"filter": {"or": [{"attr": "plan", "eq": "x" * 900}] * 150}}
    st, body = await c.call("POST", "/v1/segments/count", data=json.dumps(big).encode())
    assert st == 413, body
    for name in ("x'--", "a b", "-x"):
        assert (await c.call("PUT", f"/v1/segments/{name}", {"filter": {"and": []}}))[0] == 400


async def test_tenant_isolation(api: ApiDaemon, session: aiohttp.ClientSession) -> None:
    mine = Client(api, session, api.key)
    theirs = Client(api, session, await other_key(api))
    await seed(mine)
    await seed(theirs, [{"email": f"t{i}@x.test", "attributes": {"plan": "pro"}} for i in range(5)])
    assert (await theirs.call("POST", "/v1/lists", {"name": "vip"}))[0] == 201
    st, _ = await theirs.call("POST", "/v1/lists/vip/members",
                              {"emails": [f"t{i}@x.test" for i in range(5)]})  # fmt: skip
    assert st == 200
    assert (await theirs.call("PUT", "/v1/segments/vips", {"filter": {"in_list": "vip"}}))[0] == 201
    # Their list by name in my filter: refused when counted or saved.
    flt = {"or": [{"consent": "unsubscribed"}, {"in_list": "vip"}]}
    st, body = await mine.call("POST", "/v1/segments/count", {"filter": flt})
    assert st == 400 and body["errors"][0]["field"] == "filter.or[1].in_list", body
    st, body = await mine.call("PUT", "/v1/segments/steal", {"filter": flt})
    assert st == 400 and body["errors"][0]["field"] == "filter.or[1].in_list", body
    # Their segment name is not mine; their contacts never come back from my segments.
    assert (await mine.call("GET", "/v1/segments/vips"))[0] == 404
    assert (await mine.call("GET", "/v1/segments/vips/contacts"))[0] == 404
    assert (await mine.call("POST", "/v1/segments/count", {"segment": "vips"}))[0] == 404
    assert (await mine.call("GET", "/v1/segments"))[1] == {"segments": []}
    assert (await mine.call("PUT", "/v1/segments/pro", {"filter": {"attr": "plan", "eq": "pro"}}))[
        0
    ] == 201
    st, body = await mine.call("GET", "/v1/segments/pro/contacts")
    assert [x["email"] for x in body["contacts"]] == ["ann@x.test", "cat@y.test"]
    st, body = await theirs.call("GET", "/v1/segments/vips/contacts")
    assert [x["email"] for x in body["contacts"]] == [f"t{i}@x.test" for i in range(5)]
    # The same name on both sides stays two segments.
    assert (await theirs.call("PUT", "/v1/segments/pro", {"filter": {"and": []}}))[0] == 201
    assert (await mine.call("POST", "/v1/segments/count", {"segment": "pro"}))[1] == {"count": 2}
    assert (await theirs.call("POST", "/v1/segments/count", {"segment": "pro"}))[1] == {"count": 5}
    assert (await theirs.call("DELETE", "/v1/segments/pro"))[0] == 204
    assert (await mine.call("GET", "/v1/segments/pro"))[0] == 200


async def test_keys_and_scopes(api: ApiDaemon, session: aiohttp.ClientSession) -> None:
    reader = Client(api, session, await api.new_key("contacts.read"))
    sender = Client(api, session, await api.new_key("mail.send"))
    anon = Client(api, session, "SG.nope.nope")
    assert (await reader.call("GET", "/v1/segments"))[0] == 200
    assert (await reader.call("POST", "/v1/segments/count", {"filter": {"and": []}}))[1] == {
        "count": 0}  # fmt: skip
    assert (await reader.call("PUT", "/v1/segments/s", {"filter": {"and": []}}))[0] == 403
    assert (await reader.call("POST", "/v1/segments", {"name": "s", "filter": {}}))[0] == 403
    assert (await reader.call("DELETE", "/v1/segments/s"))[0] == 403
    for path in ("/v1/segments", "/v1/segments/s", "/v1/segments/s/contacts"):
        assert (await sender.call("GET", path))[0] == 403
        assert (await anon.call("GET", path))[0] == 401


async def test_paging_every_match_once(api: ApiDaemon, session: aiohttp.ClientSession) -> None:
    c = Client(api, session, api.key)
    n = 2400
    for start in range(0, n, 1000):
        await seed(c, [{"email": f"p{i:05d}@page.test", "attributes": {"n": i}}
                       for i in range(start, min(n, start + 1000))])  # fmt: skip
    flt = {"attr": "n", "gte": 100}
    assert (await c.call("PUT", "/v1/segments/big", {"filter": flt}))[0] == 201
    seen: list[str] = []
    after = ""
    pages = 0
    while True:
        st, body = await c.call("GET", "/v1/segments/big/contacts",
                                params={"after": after, "limit": "500"})  # fmt: skip
        assert st == 200, body
        pages += 1
        seen += [x["email"] for x in body["contacts"]]
        if body["next"] is None:
            break
        after = body["next"]
        # Between pages: one match behind the cursor (not seen), one ahead (seen once).
        await seed(c, [{"email": f"p00000-{pages}@page.test", "attributes": {"n": 500}},
                       {"email": f"p99999-{pages}@page.test", "attributes": {"n": 500}}])  # fmt: skip
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    assert {f"p{i:05d}@page.test" for i in range(100, n)} <= set(seen)
    assert not any(a.startswith("p00000-") for a in seen)
    ahead = {a for a in seen if a.startswith("p99999-")}
    assert ahead == {f"p99999-{k}@page.test" for k in range(1, pages)}
    st, body = await c.call("POST", "/v1/segments/count", {"segment": "big"})
    assert body["count"] == n - 100 + 2 * (pages - 1)
    assert (await c.call("GET", "/v1/segments/big/contacts", params={"limit": "0"}))[0] == 400
    assert (await c.call("GET", "/v1/segments/big/contacts", params={"limit": "1001"}))[0] == 400


async def test_cli_and_api_see_the_same_segments(
    api: ApiDaemon, session: aiohttp.ClientSession
) -> None:
    assert api.daemon is not None
    c = Client(api, session, api.key)
    await seed(c)

    async def cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        out = await asyncio.to_thread(api.daemon.cli, "segments", *args, "--user", "app",  # type: ignore[union-attr]
                                      input=stdin)  # fmt: skip
        return out.returncode, out.stdout, out.stderr

    doc = '{"attr": "plan", "eq": "pro"}'
    assert (await cli("save", "pro", "--filter", doc))[:2] == (0, "created segment pro\n")
    assert (await cli("save", "pro", "--filter", "@-", stdin=doc.encode()))[1].startswith(
        "replaced")  # fmt: skip
    assert (await c.call("POST", "/v1/segments/count", {"segment": "pro"}))[1] == {"count": 2}
    rc, out, _ = await cli("show", "pro")
    assert (
        rc == 0 and json.loads(out)["count"] == 2 and json.loads(out)["filter"] == json.loads(doc)
    )
    assert (await cli("count", "pro"))[:2] == (0, "2\n")
    assert (await cli("count", "--filter", '{"attr":"age","lt":20}'))[:2] == (0, "1\n")
    rc, out, _ = await cli("list")
    assert rc == 0 and out.startswith("pro\t")
    rc, _, err = await cli(
        "save", "x", "--filter", '{"and":[{"consent":"subscribed"},{"attr":"a b","eq":1}]}'
    )
    assert rc == 2 and "filter.and[1].attr" in err and len(err.splitlines()) == 1
    rc, _, err = await cli("count", "pro", "--filter", doc)
    assert rc == 2
    assert (await cli("delete", "pro"))[0] == 0
    assert (await c.call("GET", "/v1/segments/pro"))[0] == 404
    assert (await cli("delete", "pro"))[0] == 2


def _mail(sender: str, to: str) -> dict[str, object]:
    return {
        "personalizations": [{"to": [{"email": to}]}],
        "from": {"email": sender}, "subject": f"for {to}",
        "content": [{"type": "text/html", "value": "<p>hello</p>"}],
        "tracking_settings": {"open_tracking": {"enable": True}},
    }  # fmt: skip


async def test_engagement_through_the_daemon(tmp_path: Path) -> None:
    """Real mail: the sink rejects one recipient (a hard bounce), a browser loads one
    pixel; the other user's open of the same address is theirs alone."""
    from tests.test_optin import OptInDaemon

    async with OptInDaemon(tmp_path) as api, aiohttp.ClientSession() as session:
        api.sink.rcpt_replies["gone@x.test"] = "550 5.1.1 no such user"
        mine = Client(api, session, api.key)
        theirs = Client(api, session, await other_key(api))
        people = [{"email": a} for a in ("ann@x.test", "ben@x.test", "gone@x.test")]
        await seed(mine, people)
        await seed(theirs, people)
        for to in ("ann@x.test", "ben@x.test", "gone@x.test"):
            st, body = await mine.call("POST", "/v3/mail/send", _mail("shop@example.com", to))
            assert st == 202, body
        st, body = await theirs.call(
            "POST", "/v3/mail/send", _mail("news@example.net", "ben@x.test")
        )
        assert st == 202, body
        await api.wait_messages(3)
        headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"}
        for m in api.sink.messages:
            if b"Subject: for ann@x.test" in m.data or b"example.net" in m.data:
                body_text = m.data.decode("utf-8", "replace").replace("=\r\n", "")
                pixel = re.search(r"(http://127\.0\.0\.1:\d+/o/[A-Za-z0-9_-]+\.gif)",
                                  body_text.replace("=3D", "="))  # fmt: skip
                assert pixel, body_text
                async with session.get(pixel.group(1), headers=headers) as r:
                    assert r.status == 200

        async def count(c: Client, flt: Any) -> int:
            st, body = await c.call("POST", "/v1/segments/count", {"filter": flt})
            assert st == 200, body
            return int(body["count"])

        async def counts() -> tuple[int, int, int]:
            return (await count(mine, {"opened": True}), await count(mine, {"bounced": True}),
                    await count(theirs, {"opened": True}))  # fmt: skip

        seen = await eventually(counts, lambda c: c == (1, 1, 1), 40)
        assert seen == (1, 1, 1), f"events never arrived: {seen}"
        assert (await mine.call("PUT", "/v1/segments/e", {"filter": {"opened": {"days": 1}}}))[
            0
        ] == 201
        st, body = await mine.call("GET", "/v1/segments/e/contacts")
        assert [x["email"] for x in body["contacts"]] == ["ann@x.test"]
        assert await count(mine, {"opened": False}) == 2  # ben, gone
        st, body = await theirs.call("PUT", "/v1/segments/e", {"filter": {"opened": {"days": 1}}})
        st, body = await theirs.call("GET", "/v1/segments/e/contacts")
        assert [x["email"] for x in body["contacts"]] == ["ben@x.test"]
        assert await count(theirs, {"bounced": {"kind": "any"}}) == 0  # gone bounced for me only
        assert await count(mine, {"and": [{"bounced": True}, {"consent": "unsubscribed"}]}) == 1
