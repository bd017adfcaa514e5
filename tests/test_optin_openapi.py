"""The ``/v1/contacts`` and ``/v1/lists`` part of the API's openapi.json is true: every such
operation is called over a real socket (the API in this process, real stores) and every
answer validated against the document with openapi-core."""

from __future__ import annotations

import json
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
from mtaserver.storage.sqlite.optin import OptInStore
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.users import UserStore
from tests.support.apiinproc import DictTemplates
from tests.test_api_openapi import SPEC_PATH, spec, template_of


def v1_operations() -> set[tuple[str, str]]:
    doc = json.loads(SPEC_PATH.read_text())
    return {(m.upper(), p) for p, item in doc["paths"].items()
            if p.startswith(("/v1/contacts", "/v1/lists"))  # the rest: test_marketing_openapi
            for m in ("get", "put", "post", "patch", "delete") if m in item}  # fmt: skip


class Checked:
    def __init__(self, session: aiohttp.ClientSession, base: str, key: str) -> None:
        self.session, self.base, self.key = session, base, key
        self.covered: set[tuple[str, str]] = set()

    async def __call__(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
        ctype: str = "application/json", key: str | None = "",
    ) -> tuple[int, Any]:  # fmt: skip
        hdrs = {} if key is None else {"Authorization": f"Bearer {key or self.key}"}
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            hdrs["Content-Type"] = ctype
        async with self.session.request(method, self.base + path, data=data, headers=hdrs) as r:
            got, status, rh = await r.read(), r.status, dict(r.headers)
        self.covered.add((method, template_of(path.split("?")[0])))
        req = MockRequest("http://127.0.0.1", method.lower(), path.split("?")[0], headers=hdrs,
                          data=data, content_type=hdrs.get("Content-Type", ctype))  # fmt: skip
        rtype = rh.get("Content-Type", "").split(";")[0].strip()
        spec().validate_response(req, MockResponse(got, status, rh, rtype or None))
        return status, json.loads(got) if got else None


async def test_contact_and_list_operations_answer_as_documented(db: Database) -> None:
    clock = SystemClock()
    spool = Spool(db)
    users = UserStore(db)
    await users.add("app", hash_password("a long password"), ["example.com"])
    keys = ApiKeyStore(db)
    _, key = await keys.create("app", frozenset(SCOPES))
    _, read_only = await keys.create("app", frozenset({"contacts.read"}))
    pipeline = Pipeline(spool=spool, new_queue_id=new_queue_id, hostname="mta.test")
    deps = ApiDeps(
        keys=keys, users=users, suppressions=SuppressionStore(db), preparer=lambda: pipeline,
        intake=ApiIntake(db, spool), batches=spool, templates=DictTemplates({}), clock=clock,
        new_queue_id=new_queue_id, limits=lambda: Limits(), idempotency_window=lambda: 60.0,
        hostname="mta.test", contacts=ContactStore(db, clock), optin=OptInStore(db),
    )  # fmt: skip
    server = ApiServer(build_api_app(deps))
    await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            call = Checked(session, f"http://127.0.0.1:{server.port}", key)
            a = "ann@x.test"
            assert (await call("PUT", "/v1/contacts", {"email": a, "attributes": {"n": 1}}))[
                0
            ] == 201
            assert (await call("PUT", "/v1/contacts", {"email": a}))[0] == 200
            assert (await call("PUT", "/v1/contacts", {"contacts": [{"email": "b@x.test"}]}))[
                0
            ] == 200
            assert (await call("PUT", "/v1/contacts", {"email": "nope"}))[0] == 400
            assert (await call("PUT", "/v1/contacts", {"email": a}, key=None))[0] == 401
            assert (await call("PUT", "/v1/contacts", {"email": a}, key=read_only))[0] == 403
            st, page = await call("GET", "/v1/contacts?attr.n=1")
            assert st == 200 and [c["email"] for c in page["contacts"]] == [a]
            assert (await call("GET", "/v1/contacts?bogus=1"))[0] == 400
            st, res = await call("POST", "/v1/contacts/import?format=csv",
                                 raw=b"email,plan\nc@x.test,pro\nbad\n", ctype="text/csv")  # fmt: skip
            assert st == 200 and res["created"] == 1 and res["failed"] == 1
            assert (await call("POST", "/v1/contacts/import", raw=b"x", ctype="text/plain"))[
                0
            ] == 400
            assert (await call("GET", f"/v1/contacts/{a}"))[0] == 200
            assert (await call("GET", "/v1/contacts/zz@x.test"))[0] == 404
            assert (await call("GET", "/v1/contacts/not-an-address"))[0] == 400
            st, act = await call("GET", f"/v1/contacts/{a}/activity")
            assert st == 200 and act["activity"] == [] and act["next"] is None
            assert (await call("GET", f"/v1/contacts/{a}/activity?after=x"))[0] == 400
            assert (await call("GET", "/v1/contacts/zz@x.test/activity"))[0] == 404
            st, lst = await call("POST", "/v1/lists", {"name": "news", "double_opt_in": True,
                                 "confirm": {"from": "hello@example.com"}})  # fmt: skip
            assert st == 201 and lst["confirm"]["from"] == "hello@example.com"
            assert (await call("POST", "/v1/lists", {"name": "news"}))[0] == 409
            bad = {"name": "x", "confirm": {"body": "no link"}}
            st, body = await call("POST", "/v1/lists", bad)
            assert st == 400 and body["errors"][0]["field"] == "confirm.body"
            assert (await call("GET", "/v1/lists"))[0] == 200
            assert (await call("GET", "/v1/lists/x"))[0] == 404  # the bad one was not made
            st, got = await call("PATCH", "/v1/lists/news", {"confirm": {"subject": "Hi {{list}}"}})
            assert st == 200 and got["confirm"] == {"from": None, "subject": "Hi {{list}}",
                                                    "body": None}  # fmt: skip
            assert (await call("PATCH", "/v1/lists/gone", {"double_opt_in": False}))[0] == 404
            assert (await call("GET", "/v1/lists/news"))[1]["confirm"]["subject"] == "Hi {{list}}"
            st, added = await call("POST", "/v1/lists/news/members", {"emails": [a, "d@x.test"]})
            assert (st, added) == (200, {"added": 2})
            assert (await call("POST", "/v1/lists/gone/members", {"emails": [a]}))[0] == 404
            st, members = await call("GET", "/v1/lists/news/members")
            assert st == 200 and len(members["members"]) == 2
            assert (await call("GET", "/v1/lists/gone/members"))[0] == 404
            assert (await call("DELETE", f"/v1/lists/news/members/{a}"))[0] == 204
            assert (await call("DELETE", f"/v1/lists/news/members/{a}"))[0] == 404
            assert (await call("DELETE", "/v1/lists/news"))[0] == 204
            assert (await call("DELETE", "/v1/lists/news"))[0] == 404
            assert (await call("DELETE", f"/v1/contacts/{a}"))[0] == 204
            assert (await call("DELETE", f"/v1/contacts/{a}"))[0] == 404
            assert call.covered == v1_operations()
    finally:
        await server.stop()
