"""The send API's openapi.json is valid and true: every operation is exercised over a real
socket and every answer validated against it (openapi-core), as for the admin API."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from mtaserver.api import build_api_app
from mtaserver.storage.sqlite.db import Database
from tests.support.apiinproc import in_process_api

SPEC_PATH = Path(__file__).resolve().parents[1] / "mtaserver" / "api" / "openapi.json"


@cache
def spec() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC_PATH))


def operations() -> set[tuple[str, str]]:
    doc = json.loads(SPEC_PATH.read_text())
    return {(m.upper(), p) for p, item in doc["paths"].items()
            for m in ("get", "post", "patch", "delete") if m in item}  # fmt: skip


def template_of(path: str) -> str:
    for _, template in sorted(operations(), key=lambda o: o[1].count("{")):
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            return template
    raise AssertionError(f"{path} is not documented")


class Checked:
    def __init__(self, session: aiohttp.ClientSession, base: str, key: str) -> None:
        self.session, self.base, self.key = session, base, key
        self.covered: set[tuple[str, str]] = set()

    async def __call__(
        self, method: str, path: str, body: Any = None, key: str | None = "", **headers: str
    ) -> tuple[int, bytes, dict[str, str]]:
        hdrs = dict(headers)
        if key is not None:
            hdrs["Authorization"] = f"Bearer {key or self.key}"
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        async with self.session.request(method, self.base + path, data=data, headers=hdrs) as r:
            raw, status, rh = await r.read(), r.status, dict(r.headers)
        template = template_of(path)
        self.covered.add((method, template))
        req = MockRequest("http://127.0.0.1", method.lower(), path, headers=hdrs, data=data,
                          content_type=hdrs.get("Content-Type", "application/json"))  # fmt: skip
        if status < 400:
            spec().validate_request(req)
        ctype = rh.get("Content-Type", "").split(";")[0].strip()
        spec().validate_response(req, MockResponse(raw, status, rh, ctype or None))
        return status, raw, rh


def mail(**over: Any) -> dict[str, Any]:
    body = {"personalizations": [{"to": [{"email": "a@dest.test"}]}],
            "from": {"email": "app@example.com"}, "subject": "s",
            "content": [{"type": "text/plain", "value": "v"}]}  # fmt: skip
    return body | over


async def test_every_operation_answers_as_documented(db: Database) -> None:
    async with in_process_api(db) as api, aiohttp.ClientSession() as session:
        call = Checked(session, api.base_url, api.key)
        assert (await call("POST", "/v3/mail/send", mail()))[0] == 202
        status, _, headers = await call("POST", "/v3/mail/send", mail(), **{"Idempotency-Key": "a"})
        assert status == 202
        status, _, again = await call("POST", "/v3/mail/send", mail(), **{"Idempotency-Key": "a"})
        assert again["X-Message-Id"] == headers["X-Message-Id"] and again["Idempotent-Replayed"]
        assert (await call("POST", "/v3/mail/send", mail(subject="x"),
                           **{"Idempotency-Key": "a"}))[0] == 422  # fmt: skip
        sandbox = mail(mail_settings={"sandbox_mode": {"enable": True}})
        assert (await call("POST", "/v3/mail/send", sandbox))[0] == 200
        assert (await call("POST", "/v3/mail/send", {"from": 1}))[0] == 400
        assert (await call("POST", "/v3/mail/send", mail(), key=None))[0] == 401
        assert (await call("POST", "/v3/mail/send", mail(), key="SG.x.y"))[0] == 401
        status, raw, _ = await call("POST", "/v3/mail/batch")
        batch = json.loads(raw)["batch_id"]
        assert status == 201
        assert (await call("GET", f"/v3/mail/batch/{batch}"))[0] == 200
        assert (await call("GET", "/v3/mail/batch/nope"))[0] == 400
        body = {"batch_id": batch, "status": "pause"}
        assert (await call("POST", "/v3/user/scheduled_sends", body))[0] == 201
        assert (await call("POST", "/v3/user/scheduled_sends", {"batch_id": batch}))[0] == 400
        status, raw, _ = await call("GET", "/v3/user/scheduled_sends")
        assert json.loads(raw) == [body]
        assert json.loads((await call("GET", f"/v3/user/scheduled_sends/{batch}"))[1]) == [body]
        path = f"/v3/user/scheduled_sends/{batch}"
        assert (await call("PATCH", path, {"status": "cancel"}))[0] == 204
        assert (await call("PATCH", path, {"status": "later"}))[0] == 400
        assert (await call("PATCH", "/v3/user/scheduled_sends/nope", {"status": "pause"}))[0] == 404
        assert (await call("DELETE", path))[0] == 204
        assert (await call("DELETE", path))[0] == 404
        # /v1/contacts and /v1/lists: tests/test_optin_openapi.py
        assert call.covered == {o for o in operations() if o[1].startswith("/v3/")}


async def test_every_route_is_documented(db: Database) -> None:
    """Every route the API app registers (with every /v1 part wired) is an operation of
    openapi.json and every operation a route, so a route added without its documentation
    fails here; the operations are exercised by this file (/v3), test_optin_openapi
    (contacts, lists) and test_marketing_openapi (segments, events, triggers, campaigns)."""
    from tests.test_marketing_openapi import AREAS, full_deps

    app = build_api_app(await full_deps(db))
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None}  # fmt: skip
    doc = {(m, p) for m, p in operations_all()}
    assert routes - doc == set(), f"routes without documentation: {sorted(routes - doc)}"
    assert doc - routes == set(), f"documented but not served: {sorted(doc - routes)}"
    parts = ("/v3/", "/v1/contacts", "/v1/lists", *AREAS)
    assert all(p.startswith(parts) for _, p in doc), "an operation no test exercises"


def operations_all() -> set[tuple[str, str]]:
    doc = json.loads(SPEC_PATH.read_text())
    return {(m.upper(), p) for p, item in doc["paths"].items()
            for m in ("get", "put", "post", "patch", "delete") if m in item}  # fmt: skip
