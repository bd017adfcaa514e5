"""The admin API's endpoints (``/api/v1/...``) and ``/metrics``.

Each handler parses its parameters, calls the ONE implementation the CLI calls too
(``Spool`` operator ops, ``UserStore``, ``SuppressionStore``, ``tracking.stats.compute``,
``dnsrecords``), and renders the result as JSON. Shapes are documented in
``mtaserver/admin/openapi.json``; the tests validate every response against it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from mtaserver import dnsrecords
from mtaserver.admin import feed
from mtaserver.admin.server import ApiError, json_response
from mtaserver.cli.stats import parse_since
from mtaserver.cli.suppression import _valid as valid_address
from mtaserver.cli.user import MIN_PASSWORD
from mtaserver.config import Config
from mtaserver.config.units import parse_duration
from mtaserver.db import Database
from mtaserver.dkim.keys import KeySet
from mtaserver.dkim.records import quote_txt
from mtaserver.metrics import Metrics
from mtaserver.spool import Spool
from mtaserver.suppression import Suppression, SuppressionStore
from mtaserver.tracking.stats import compute as compute_stats

PREFIX = "/api/v1"
MAX_LIMIT = 1000
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class UserRecordView(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def domains(self) -> tuple[str, ...]: ...
    @property
    def created_at(self) -> float: ...
    @property
    def updated_at(self) -> float: ...


class UserAdmin(Protocol):
    """The user store (``mtaserver.auth.UserStore``); no method returns a password hash."""

    async def add(self, name: str, password_hash: str, domains: list[str]) -> None: ...
    async def remove(self, name: str) -> None: ...
    async def list(self) -> Sequence[UserRecordView]: ...


@dataclass
class AdminDeps:
    """What the endpoints are wired to (built in ``app``)."""

    db: Database
    spool: Spool
    config: Callable[[], Config]  # the current config (it changes on SIGHUP)
    keys: Callable[[], KeySet]  # the signer's current DKIM keys
    metrics: Metrics
    users: UserAdmin | None = None
    suppressions: SuppressionStore | None = None
    hash_password: Callable[[str], str] | None = None
    min_password: int = MIN_PASSWORD  # the same rule as `mtaserver user add`


# -- parameters -------------------------------------------------------------------------------
def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name}: expected {lo}..{hi}, got {value}")
    return value


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body: expected a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body: expected a JSON object")
    return body


def str_field(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{name}: expected a non-empty string")
    return value


class AdminApi:
    def __init__(self, deps: AdminDeps) -> None:
        self.d = deps

    def register(self, app: web.Application, *, metrics_path: str = "/metrics") -> None:
        r = app.router
        p = PREFIX
        r.add_get(metrics_path, self.metrics, allow_head=False)
        r.add_get(f"{p}/openapi.json", self.openapi, allow_head=False)
        r.add_get(f"{p}/queue/summary", self.queue_summary, allow_head=False)
        r.add_get(f"{p}/queue", self.queue_list, allow_head=False)
        r.add_post(f"{p}/queue/retry", self.queue_retry_all)
        r.add_get(f"{p}/queue/{{queue_id}}", self.queue_show, allow_head=False)
        r.add_delete(f"{p}/queue/{{queue_id}}", self.queue_delete)
        r.add_post(f"{p}/queue/{{queue_id}}/retry", self.queue_retry)
        r.add_post(f"{p}/queue/{{queue_id}}/hold", self.queue_hold)
        r.add_post(f"{p}/queue/{{queue_id}}/release", self.queue_release)
        r.add_get(f"{p}/events", self.events, allow_head=False)
        r.add_get(f"{p}/stats", self.stats, allow_head=False)
        r.add_get(f"{p}/dkim/keys", self.dkim_keys, allow_head=False)
        r.add_get(f"{p}/dns/records", self.dns_records, allow_head=False)
        if self.d.suppressions is not None:
            r.add_get(f"{p}/suppressions", self.suppressions_list, allow_head=False)
            r.add_post(f"{p}/suppressions", self.suppressions_add)
            r.add_get(f"{p}/suppressions/check", self.suppressions_check, allow_head=False)
            r.add_delete(f"{p}/suppressions/{{address}}", self.suppressions_remove)
        if self.d.users is not None:
            r.add_get(f"{p}/users", self.users_list, allow_head=False)
            r.add_post(f"{p}/users", self.users_add)
            r.add_delete(f"{p}/users/{{name}}", self.users_remove)

    # -- metrics and spec ------------------------------------------------------------------
    async def metrics(self, request: web.Request) -> web.Response:
        body = await self.d.metrics.render()
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TEXT})

    async def openapi(self, request: web.Request) -> web.Response:
        text = (resources.files("mtaserver.admin") / "openapi.json").read_text("utf-8")
        return web.Response(text=text, content_type="application/json")

    # -- queue -----------------------------------------------------------------------------
    async def queue_summary(self, request: web.Request) -> web.Response:
        top = int_param(request, "top", 50, 1, MAX_LIMIT)
        s = await self.d.spool.summary(top=top)
        return json_response(
            {
                "buckets": list(s.buckets),
                "by_state": dict(s.by_state),
                "destinations": [
                    {"domain": d, "total": total, "counts": list(counts)}
                    for d, total, counts in s.rows
                ],
            }
        )

    async def queue_list(self, request: web.Request) -> web.Response:
        limit = int_param(request, "limit", 100, 1, MAX_LIMIT)
        after: tuple[str, int] | None = None
        if raw := request.query.get("after"):
            qid, sep, idx = raw.rpartition(":")
            if not sep or not qid or not idx.isdigit():
                raise ApiError(400, f"after: expected QUEUE_ID:INDEX, got {raw!r}")
            after = (qid, int(idx))
        rows = await self.d.spool.list(
            domain=request.query.get("domain") or None,
            state=request.query.get("state") or None,
            limit=limit,
            after=after,
        )
        nxt = f"{rows[-1].queue_id}:{rows[-1].idx}" if len(rows) == limit else None
        return json_response({"recipients": [asdict(r) for r in rows], "next": nxt})

    async def _message_or_404(self, queue_id: str) -> dict[str, Any]:
        info = await self.d.spool.show(queue_id)
        if info is None:
            raise ApiError(404, f"no message {queue_id}")
        return asdict(info)

    async def queue_show(self, request: web.Request) -> web.Response:
        return json_response(await self._message_or_404(request.match_info["queue_id"]))

    async def _queue_op(
        self, request: web.Request, op: Callable[[str], Awaitable[int]]
    ) -> web.Response:
        queue_id = request.match_info["queue_id"]
        await self._message_or_404(queue_id)
        n = await op(queue_id)
        return json_response({"queue_id": queue_id, "recipients": n})

    async def queue_delete(self, request: web.Request) -> web.Response:
        return await self._queue_op(request, self.d.spool.delete)

    async def queue_retry(self, request: web.Request) -> web.Response:
        return await self._queue_op(request, self.d.spool.retry)

    async def queue_hold(self, request: web.Request) -> web.Response:
        return await self._queue_op(request, self.d.spool.hold)

    async def queue_release(self, request: web.Request) -> web.Response:
        return await self._queue_op(request, self.d.spool.release)

    async def queue_retry_all(self, request: web.Request) -> web.Response:
        n = await self.d.spool.retry(None)
        return json_response({"queue_id": None, "recipients": n})

    # -- events ----------------------------------------------------------------------------
    async def events(self, request: web.Request) -> web.Response:
        after = int_param(request, "after", 0, 0, 2**62)
        limit = int_param(request, "limit", 100, 1, MAX_LIMIT)
        types = tuple(t for t in request.query.get("type", "").split(",") if t)
        rows = await feed.page(
            self.d.db,
            after=after,
            limit=limit,
            types=types,
            queue_id=request.query.get("queue_id") or None,
        )
        return json_response(
            {"events": [e.as_dict() for e in rows], "next_after": rows[-1].id if rows else after}
        )

    # -- stats -----------------------------------------------------------------------------
    async def stats(self, request: web.Request) -> web.Response:
        raw = request.query.get("since") or None
        since = parse_since(raw, time.time())  # the CLI's --since: '24h' or a date
        campaign = request.query.get("campaign") or None
        user = request.query.get("user") or None
        s = await compute_stats(self.d.db, since, campaign, user)
        out = s.as_dict()
        out["filter"] = {"since": since, "campaign": campaign, "user": user}
        return json_response(out)

    # -- DKIM and DNS ----------------------------------------------------------------------
    def _inputs(self) -> dnsrecords.Inputs:
        cfg = self.d.config()
        return dnsrecords.Inputs(
            hostname=cfg.server.hostname.lower().rstrip("."),
            keys=self.d.keys().keys,
            bounce_domain=cfg.inbound.bounce_domain,
            tracking_base_url=cfg.tracking.base_url,
        )

    async def dkim_keys(self, request: web.Request) -> web.Response:
        keys = [
            {
                "domain": k.domain,
                "selector": k.selector,
                "algorithm": k.algorithm.value,
                "bits": k.bits,
                "active": k.active,
                "record": {
                    "name": k.record_name,
                    "type": "TXT",
                    "text": k.record_text,
                    "value": quote_txt(k.record_text),
                },
            }
            for k in self.d.keys().keys
        ]
        return json_response({"keys": keys})

    async def dns_records(self, request: web.Request) -> web.Response:
        domain = (request.query.get("domain") or "").strip().lower().rstrip(".") or None
        sections = dnsrecords.all_records(self._inputs(), domain)
        return json_response(
            {
                "sections": [
                    {
                        "title": title,
                        "records": [
                            {
                                "name": rec.name,
                                "type": rec.rtype,
                                "value": rec.value,
                                "kind": rec.kind.value,
                                "purpose": rec.purpose,
                                "zone": rec.zone(),
                            }
                            for rec in records
                        ],
                    }
                    for title, records in sections
                ]
            }
        )

    # -- users -----------------------------------------------------------------------------
    def _users(self) -> UserAdmin:
        assert self.d.users is not None  # routes exist only when wired
        return self.d.users

    @staticmethod
    def _user_json(u: UserRecordView) -> dict[str, Any]:
        return {"name": u.name, "domains": list(u.domains), "created_at": u.created_at,
                "updated_at": u.updated_at}  # fmt: skip

    async def users_list(self, request: web.Request) -> web.Response:
        users = await self._users().list()
        return json_response({"users": [self._user_json(u) for u in users]})

    async def users_add(self, request: web.Request) -> web.Response:
        store = self._users()
        body = await json_body(request)
        name = str_field(body, "name")
        password = body.get("password")
        domains = body.get("domains")
        if not isinstance(password, str) or len(password) < self.d.min_password:
            raise ApiError(400, f"password: at least {self.d.min_password} characters")
        if (
            not isinstance(domains, list)
            or not domains
            or not all(isinstance(x, str) for x in domains)
        ):
            raise ApiError(400, "domains: expected a non-empty list of domain names")
        assert name is not None and self.d.hash_password is not None
        hashed = await asyncio.to_thread(self.d.hash_password, password)
        await store.add(name, hashed, domains)
        wanted = name.strip().lower()
        for u in await store.list():
            if u.name == wanted:
                return json_response(self._user_json(u), 201)
        raise ApiError(500, "user vanished after creation")  # pragma: no cover

    async def users_remove(self, request: web.Request) -> web.Response:
        store = self._users()
        name = request.match_info["name"].strip().lower()
        if not any(u.name == name for u in await store.list()):
            raise ApiError(404, f"no user {name}")
        await store.remove(name)
        return json_response({"name": name, "removed": True})

    # -- suppressions ----------------------------------------------------------------------
    def _suppressions(self) -> SuppressionStore:
        assert self.d.suppressions is not None  # routes exist only when wired
        return self.d.suppressions

    async def suppressions_list(self, request: web.Request) -> web.Response:
        limit = int_param(request, "limit", 1000, 1, 10000)
        expired = request.query.get("include_expired", "false")
        if expired not in ("true", "false"):
            raise ApiError(400, "include_expired: expected true or false")
        address = request.query.get("address") or None
        rows = await self._suppressions().list(
            valid_address(address) if address else None,
            limit=limit,
            include_expired=expired == "true",
        )
        return json_response({"suppressions": [asdict(x) for x in rows]})

    async def suppressions_add(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        address = valid_address(str_field(body, "address") or "")
        reason = str_field(body, "reason", required=False) or "manual"
        scope = str_field(body, "scope", required=False)
        expires = None
        if (duration := str_field(body, "for", required=False)) is not None:
            try:
                expires = time.time() + parse_duration(duration)
            except ValueError:
                raise ApiError(
                    400, f"for: expected a duration like '30d', got {duration!r}"
                ) from None
        entry: Suppression = await self._suppressions().add(
            address, reason, scope=scope, source="manual", expires_at=expires
        )
        return json_response(asdict(entry), 201)

    async def suppressions_check(self, request: web.Request) -> web.Response:
        address = valid_address(request.query.get("address", ""))
        entry = await self._suppressions().check(
            address, request.query.get("sender_domain") or None
        )
        return json_response(
            {
                "address": address.strip().strip("<>").lower(),
                "suppressed": entry is not None,
                "entry": asdict(entry) if entry is not None else None,
            }
        )

    async def suppressions_remove(self, request: web.Request) -> web.Response:
        address = valid_address(request.match_info["address"])
        scope = request.query.get("scope")
        n = await self._suppressions().remove(address, scope or None, all_scopes=scope is None)
        if n == 0:
            raise ApiError(404, f"{address.lower()} is not suppressed")
        return json_response({"address": address.strip().strip("<>").lower(), "removed": n})
