"""The ``/v1/segments``, ``/v1/events``, ``/v1/triggers`` and ``/v1/campaigns`` part of the
API's openapi.json is true: every such operation is called over a real socket (the API in
this process, real stores) with its successes and its refusals, and every request that is
accepted and every answer is validated against the document with openapi-core."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from openapi_core.testing import MockRequest, MockResponse

from mtaserver.api import ApiDeps, ApiServer, build_api_app
from mtaserver.auth import hash_password
from mtaserver.clock import SystemClock
from mtaserver.pipeline import Pipeline
from mtaserver.sendapi import Limits
from mtaserver.storage.sqlite.apikeys import SCOPES, ApiKeyStore
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.idempotency import ApiIntake
from mtaserver.storage.sqlite.journeys import JourneyStore
from mtaserver.storage.sqlite.optin import OptInStore
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.templates import TemplateStore
from mtaserver.storage.sqlite.users import UserStore
from tests.test_api_openapi import SPEC_PATH, spec, template_of

AREAS = ("/v1/segments", "/v1/events", "/v1/triggers", "/v1/campaigns")


def area_operations() -> set[tuple[str, str]]:
    doc = json.loads(SPEC_PATH.read_text())
    return {(m.upper(), p) for p, item in doc["paths"].items() if p.startswith(AREAS)
            for m in ("get", "put", "post", "patch", "delete") if m in item}  # fmt: skip


async def full_deps(db: Database) -> ApiDeps:
    """The API's dependencies with every /v1 part wired (contacts, opt-in, journeys)."""
    clock = SystemClock()
    spool = Spool(db)
    pipeline = Pipeline(spool=spool, new_queue_id=new_queue_id, hostname="mta.test")
    return ApiDeps(
        keys=ApiKeyStore(db), users=UserStore(db), suppressions=SuppressionStore(db),
        preparer=lambda: pipeline, intake=ApiIntake(db, spool), batches=spool,
        templates=TemplateStore(db, clock), clock=clock, new_queue_id=new_queue_id,
        limits=lambda: Limits(), idempotency_window=lambda: 60.0, hostname="mta.test",
        contacts=ContactStore(db, clock), optin=OptInStore(db), journeys=JourneyStore(db, clock),
    )  # fmt: skip


@asynccontextmanager
async def serving(deps: ApiDeps) -> AsyncIterator[str]:
    server = ApiServer(build_api_app(deps))
    await server.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


class Checked:
    def __init__(self, session: aiohttp.ClientSession, base: str, key: str) -> None:
        self.session, self.base, self.key = session, base, key
        self.covered: set[tuple[str, str]] = set()

    async def __call__(
        self, method: str, path: str, body: Any = None, *, key: str | None = ""
    ) -> tuple[int, Any]:
        hdrs = {} if key is None else {"Authorization": f"Bearer {key or self.key}"}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        async with self.session.request(method, self.base + path, data=data, headers=hdrs) as r:
            got, status, rh = await r.read(), r.status, dict(r.headers)
        bare = path.split("?")[0]
        self.covered.add((method, template_of(bare)))
        req = MockRequest("http://127.0.0.1", method.lower(), bare, headers=hdrs, data=data,
                          content_type="application/json",
                          args=dict(p.split("=", 1) for p in path.partition("?")[2].split("&")
                                    if "=" in p))  # fmt: skip
        if status < 400:
            spec().validate_request(req)
        rtype = rh.get("Content-Type", "").split(";")[0].strip()
        spec().validate_response(req, MockResponse(got, status, rh, rtype or None))
        return status, json.loads(got) if got else None


async def test_marketing_operations_answer_as_documented(db: Database) -> None:
    deps = await full_deps(db)
    await UserStore(db).add("app", hash_password("a long password", n=2**10), ["example.com"])
    keys = ApiKeyStore(db)
    _, key = await keys.create("app", frozenset(SCOPES))
    _, read_only = await keys.create("app", frozenset({"contacts.read"}))
    await TemplateStore(db, deps.clock).put("welcome", "Hi {{contact.email}}", "<p>hi</p>", None)
    contacts = deps.contacts
    assert contacts is not None
    await contacts.create_list("app", "news")
    await contacts.add_members("app", "news", ["ann@x.test", "bo@x.test"])
    async with serving(deps) as base, aiohttp.ClientSession() as session:
        call = Checked(session, base, key)
        # -- segments
        flt = {"in_list": "news"}
        st, seg = await call("POST", "/v1/segments", {"name": "fans", "filter": flt})
        assert st == 201 and seg["filter"] == flt, seg
        assert (await call("POST", "/v1/segments", {"name": "fans", "filter": flt}))[0] == 409
        st, body = await call("POST", "/v1/segments", {"name": "x", "filter": {"in_list": "no"}})
        assert st == 400 and body["errors"][0]["field"], body
        assert (await call("POST", "/v1/segments", {"name": "y", "filter": flt}, key=read_only))[
            0
        ] == 403
        assert (await call("GET", "/v1/segments", key=None))[0] == 401
        st, page = await call("GET", "/v1/segments")
        assert st == 200 and [s["name"] for s in page["segments"]] == ["fans"]
        assert (await call("GET", "/v1/segments/fans"))[1]["name"] == "fans"
        assert (await call("GET", "/v1/segments/nope"))[0] == 404
        assert (await call("GET", "/v1/segments/bad%20name"))[0] == 400
        assert (await call("PUT", "/v1/segments/pros", {"filter": {"consent": ["subscribed"]}}))[
            0
        ] == 201
        assert (await call("PUT", "/v1/segments/pros", {"filter": flt}))[0] == 200
        assert (await call("PUT", "/v1/segments/pros", {"filter": {"bogus": 1}}))[0] == 400
        assert (await call("POST", "/v1/segments/count", {"segment": "fans"}))[1] == {"count": 2}
        assert (await call("POST", "/v1/segments/count", {"filter": flt}))[1] == {"count": 2}
        assert (await call("POST", "/v1/segments/count", {}))[0] == 400
        assert (await call("POST", "/v1/segments/count", {"segment": "nope"}))[0] == 404
        st, page = await call("GET", "/v1/segments/fans/contacts?limit=1")
        assert st == 200 and page["contacts"][0]["email"] == "ann@x.test" and page["next"]
        st, page = await call("GET", f"/v1/segments/fans/contacts?after={page['next']}")
        assert [c["email"] for c in page["contacts"]] == ["bo@x.test"] and page["next"] is None
        assert (await call("GET", "/v1/segments/fans/contacts?limit=0"))[0] == 400
        assert (await call("GET", "/v1/segments/nope/contacts"))[0] == 404
        assert (await call("DELETE", "/v1/segments/pros"))[0] == 204
        assert (await call("DELETE", "/v1/segments/pros"))[0] == 404
        # -- triggers and events
        trig = {"event": "signup", "steps": [{"wait": "0s", "template": "welcome"},
                {"wait": "3d", "template": "welcome"}], "match": {"plan": "pro"},
                "cancel": ["purchase"], "once_per": "30d",
                "from": {"email": "hello@example.com", "name": "Hello"}}  # fmt: skip
        st, got = await call("PUT", "/v1/triggers/welcome", trig)
        assert st == 201 and got["steps"][1]["wait"] == "3d", got
        assert (await call("PUT", "/v1/triggers/welcome", trig | {"enabled": True}))[0] == 200
        st, body = await call("PUT", "/v1/triggers/bad", trig | {"steps": [{"template": "no"}]})
        assert st == 400 and body["errors"][0]["field"] == "steps[0].template"
        st, got = await call("GET", "/v1/triggers")
        assert st == 200 and [t["name"] for t in got["triggers"]] == ["welcome"]
        assert (await call("GET", "/v1/triggers/nope"))[0] == 404
        assert (await call("GET", "/v1/triggers/bad%20name"))[0] == 400
        one = {"contact": "ann@x.test", "event": "signup", "properties": {"plan": "pro"},
               "occurred_at": "2026-01-01T00:00:00Z"}  # fmt: skip
        st, body = await call("POST", "/v1/events", one | {"occurred_at": None})
        assert st == 202 and body["started"] == 1, body
        st, body = await call("POST", "/v1/events", {"events": [
            {"contact": "ann@x.test", "event": "purchase"},
            {"contact": "zed@x.test", "event": "signup"}]})  # fmt: skip
        assert (st, body["cancelled"], body["unknown_contacts"]) == (202, 2, ["zed@x.test"])
        st, body = await call("POST", "/v1/events", one)  # a year back: refused
        assert st == 400 and body["errors"][0]["field"] == "occurred_at"
        st, got = await call("GET", "/v1/triggers/welcome")
        assert st == 200 and got["step_counts"]["1"]["cancelled"] == 1, got
        assert (await call("DELETE", "/v1/triggers/welcome"))[0] == 204
        assert (await call("DELETE", "/v1/triggers/welcome"))[0] == 404
        # -- campaigns
        camp = {"name": "spring", "template": "welcome", "from": "news@example.com",
                "list": "news", "send_at": "2030-03-01T09:00:00+01:00"}  # fmt: skip
        st, got = await call("POST", "/v1/campaigns", camp)
        assert st == 201 and got["status"] == "draft" and got["list"] == "news", got
        assert (await call("POST", "/v1/campaigns", camp))[0] == 409
        st, body = await call("POST", "/v1/campaigns", camp | {"name": "c2", "template": "no"})
        assert st == 400 and body["errors"][0]["field"] == "template"
        weekly = {
            "name": "weekly",
            "template": "welcome",
            "from": {"email": "news@example.com"},
            "segment": {"in_list": "news"},
            "cron": "0 9 * * MON",
            "tz": "Europe/Berlin",
        }
        st, got = await call("POST", "/v1/campaigns", weekly)
        assert st == 201 and got["schedule"] == "cron" and "segment" in got, got
        st, got = await call("GET", "/v1/campaigns")
        assert st == 200 and {c["name"] for c in got["campaigns"]} == {"spring", "weekly"}
        st, got = await call("GET", "/v1/campaigns/spring")
        assert st == 200 and got["runs"] == []
        assert (await call("GET", "/v1/campaigns/nope"))[0] == 404
        st, got = await call("POST", "/v1/campaigns/spring/start")
        assert st == 200 and got["status"] == "scheduled", got
        assert (await call("POST", "/v1/campaigns/spring/resume"))[0] == 409
        assert (await call("POST", "/v1/campaigns/spring/pause"))[1]["status"] == "paused"
        assert (await call("POST", "/v1/campaigns/spring/cancel"))[1]["status"] == "cancelled"
        assert (await call("POST", "/v1/campaigns/nope/start"))[0] == 404
        assert call.covered == area_operations()
