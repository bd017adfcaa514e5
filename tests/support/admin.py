"""A client for the admin API that checks every exchange against ``openapi.json``.

    api = AdminClient(f"http://127.0.0.1:{port}", token)
    r = api.get("/api/v1/queue", query={"limit": 10})    # validated request + response
    r.json()["recipients"]

Every request with a token is validated as a request; every response to a documented path
is validated against its operation, status and schema (openapi-core). ``covered`` records
the (method, path template) pairs exercised, so a test can prove every endpoint was.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

SPEC_PATH = Path(__file__).resolve().parents[2] / "mtaserver" / "admin" / "openapi.json"
METHODS = ("get", "post", "put", "delete", "patch")


@cache
def spec() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC_PATH))


@cache
def spec_dict() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text())


def operations() -> set[tuple[str, str]]:
    """Every (METHOD, path template) the document declares."""
    return {
        (m.upper(), path)
        for path, item in spec_dict()["paths"].items()
        for m in METHODS
        if m in item
    }


def template_of(path: str) -> str | None:
    """The documented path template a concrete path matches (concrete paths win)."""
    matches = []
    for template in spec_dict()["paths"]:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            matches.append(template)
    if not matches:
        return None
    return min(matches, key=lambda t: t.count("{"))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class AdminClient:
    base: str
    token: str | None = None
    covered: set[tuple[str, str]] = field(default_factory=set)
    validate: bool = True
    ssl_context: ssl.SSLContext | None = None  # for an https:// base

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        token: str | None = "",
        headers: dict[str, str] | None = None,
    ) -> Response:
        """``token=""`` (default) uses the client's token; ``None`` sends none."""
        tok = self.token if token == "" else token
        hdrs = dict(headers or {})
        if tok is not None:
            hdrs.setdefault("Authorization", f"Bearer {tok}")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        url = path + ("?" + urlencode(query) if query else "")
        parts = urlsplit(self.base)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=15, context=self.ssl_context
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
        try:
            conn.request(method, url, body=data, headers=hdrs)
            raw = conn.getresponse()
            resp = Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, raw.read())
        finally:
            conn.close()
        self._check(method, path, query, data, hdrs, resp)
        return resp

    def _check(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None,
        data: bytes | None,
        headers: dict[str, str],
        resp: Response,
    ) -> None:
        template = template_of(path)
        if template is None or method.lower() not in spec_dict()["paths"][template]:
            return
        self.covered.add((method.upper(), template))
        if not self.validate:
            return
        req = MockRequest(
            "http://127.0.0.1",
            method.lower(),
            path,
            args={k: str(v) for k, v in (query or {}).items()},
            headers=headers,
            data=data,
            content_type=headers.get("Content-Type", "application/json"),
        )
        if resp.status < 400 and "Authorization" in headers:
            spec().validate_request(req)
        content_type = resp.headers.get("content-type", "").split(";")[0].strip()
        spec().validate_response(
            req, MockResponse(resp.body, resp.status, resp.headers, content_type)
        )

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Response:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.request("DELETE", path, **kw)

    def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        """Request, assert the status, return the JSON body."""
        r = self.request(method, path, **kw)
        assert r.status == status, f"{method} {path}: {r.status} {r.text}"
        return r.json()
