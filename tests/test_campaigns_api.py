"""``/v1/campaigns`` against a real daemon over its API socket: a campaign to a list is
created, started and sent by the daemon's feeder to the MX sink (once, to the list's
members only), its run read back; a scheduled one is paused, resumed and cancelled; an
action that does not apply is a 409 naming the status; unknown lists, templates, segments,
bad cron fields and local times are 400s naming the field; a local-time campaign starts when
UTC+14 reaches its wall time; keys need contacts.read / contacts.write and
see only their user's campaigns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from email import message_from_bytes
from pathlib import Path

import aiohttp
import pytest

from tests.support.apiserver import ApiDaemon
from tests.support.mxsink import eventually
from tests.test_contacts_api import Client, other_key

LATER = "2031-01-01T09:00:00+00:00"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiDaemon]:
    async with ApiDaemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def setup(api: ApiDaemon, c: Client, tmp: Path) -> None:
    f = tmp / "promo.html"
    f.write_text("<p>Hello {{contact.email}}</p>")
    assert api.daemon is not None
    out = await asyncio.to_thread(api.daemon.cli, "template", "put", "promo", "--subject",
                                  "Spring sale", "--html", str(f))  # fmt: skip
    assert out.returncode == 0, out.stderr
    people = [{"email": "ann@dest.test"}, {"email": "bo@dest.test"}, {"email": "cy@dest.test"}]
    assert (await c.call("PUT", "/v1/contacts", {"contacts": people}))[0] == 200
    assert (await c.call("POST", "/v1/lists", {"name": "news"}))[0] == 201
    st, body = await c.call("POST", "/v1/lists/news/members",
                            {"emails": ["ann@dest.test", "bo@dest.test"]})  # fmt: skip
    assert st == 200, body


def spring(**kw: object) -> dict[str, object]:
    return {"name": "spring", "template": "promo", "list": "news",
            "from": {"email": "news@example.com", "name": "News"}, **kw}  # fmt: skip


async def test_start_sends_the_list_through_the_feeder(
    api: ApiDaemon, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    c = Client(api, session, api.key)
    await setup(api, c, tmp_path)
    st, body = await c.call("POST", "/v1/campaigns", spring())
    assert st == 201 and body["status"] == "draft" and body["list"] == "news", body
    assert body["from"] == {"email": "news@example.com", "name": "News"}
    st, body = await c.call("GET", "/v1/campaigns")
    assert st == 200 and [(x["name"], x["status"]) for x in body["campaigns"]] == [
        ("spring", "draft")
    ]
    await asyncio.sleep(1.5)
    assert api.sink.messages == []  # a draft is not sent
    st, body = await c.call("POST", "/v1/campaigns/spring/start")
    assert st == 200 and body["status"] in ("scheduled", "running", "done"), body
    await api.wait_messages(2)
    got = {m.rcpt_tos[0]: message_from_bytes(m.data) for m in api.sink.messages}
    assert sorted(got) == ["ann@dest.test", "bo@dest.test"]  # cy is not on the list
    assert all(m["Subject"] == "Spring sale" for m in got.values())
    assert all(api.dkim_ok(m.data) for m in api.sink.messages)

    async def current() -> dict[str, object]:
        return (await c.call("GET", "/v1/campaigns/spring"))[1]

    body = await eventually(current, lambda b: b.get("status") == "done", 10)
    assert body["status"] == "done", body
    assert [(r["audience"], r["queued"], r["status"]) for r in body["runs"]] == [(2, 2, "done")]
    st, body = await c.call("POST", "/v1/campaigns/spring/pause")
    assert st == 409 and body["errors"][0]["field"] == "status" and "done" in str(body)
    await asyncio.sleep(1.0)
    assert len(api.sink.messages) == 2  # never twice


async def test_life_cycle_errors_scopes_and_owners(
    api: ApiDaemon, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    c = Client(api, session, api.key)
    await setup(api, c, tmp_path)
    st, body = await c.call("POST", "/v1/campaigns", spring(send_at=LATER))
    assert st == 201 and body["send_at"] == 1925024400.0, body
    assert (await c.call("POST", "/v1/campaigns", spring()))[0] == 409

    for bad, field in [
        (spring(name="x", list="nope"), "in_list"), (spring(name="x", template="nope"), "template"),
        (spring(name="x", list=None, segment="nope"), "segment"),
        (spring(name="x", cron="61 * * * *"), "cron"),
        (spring(name="x", send_at="tomorrow"), "send_at"), (spring(name="bad name"), "name"),
        (spring(name="x", colour="red"), "colour"), (spring(name="x", segment="s"), "audience"),
        (spring(name="x", local_time="9am", date="2031-01-01"), "local_time"),
        (spring(name="x", local=True), "local"),
    ]:  # fmt: skip
        bad = {k: v for k, v in bad.items() if v is not None}
        st, body = await c.call("POST", "/v1/campaigns", bad)
        assert st in (400, 404) and field in str(body["errors"][0]), (bad, body)
    assert (await c.call("GET", "/v1/campaigns/x"))[0] == 404
    st, body = await c.call("POST", "/v1/campaigns", spring(name="nine", local_time="09:00",
                            date="2031-01-01", tz="Europe/Berlin"))  # fmt: skip
    assert st == 201 and (body["schedule"], body["local_time"], body["failure"]) == (
        "local", "2031-01-01T09:00", None), body  # fmt: skip
    st, body = await c.call("POST", "/v1/campaigns/nine/start")  # when UTC+14 reaches 09:00
    assert (st, body["next_run_at"]) == (200, 1925024400.0 - 14 * 3600), body

    st, body = await c.call("POST", "/v1/campaigns/spring/pause")
    assert st == 409 and "draft" in body["errors"][0]["message"], body
    st, body = await c.call("POST", "/v1/campaigns/spring/start")
    assert (st, body["status"], body["next_run_at"]) == (200, "scheduled", 1925024400.0), body
    assert (await c.call("POST", "/v1/campaigns/spring/pause"))[1]["status"] == "paused"
    assert (await c.call("POST", "/v1/campaigns/spring/resume"))[1]["status"] == "scheduled"
    assert (await c.call("POST", "/v1/campaigns/spring/cancel"))[1]["status"] == "cancelled"
    assert (await c.call("POST", "/v1/campaigns/spring/resume"))[0] == 409
    assert (await c.call("POST", "/v1/campaigns/spring/explode"))[0] == 404
    assert (await c.call("POST", "/v1/campaigns/nope/start"))[0] == 404

    reader = Client(api, session, await api.new_key("contacts.read"))
    assert (await reader.call("GET", "/v1/campaigns/spring"))[0] == 200
    assert (await reader.call("POST", "/v1/campaigns", spring(name="r")))[0] == 403
    assert (await reader.call("POST", "/v1/campaigns/spring/start"))[0] == 403
    assert (await Client(api, session, "nope").call("GET", "/v1/campaigns"))[0] == 401
    other = Client(api, session, await other_key(api))
    assert (await other.call("GET", "/v1/campaigns"))[1] == {"campaigns": []}
    assert (await other.call("GET", "/v1/campaigns/spring"))[0] == 404
    assert (await other.call("POST", "/v1/campaigns/spring/cancel"))[0] == 404
    st, body = await other.call("POST", "/v1/campaigns", spring())  # alice's list is not theirs
    assert st == 400 and "news" in str(body), body
    assert api.sink.messages == []
