"""The admin API's endpoints (``/api/v1/...``) and ``/metrics``.

Each handler parses its parameters, calls the ONE implementation the CLI calls too
(``Spool`` operator ops, ``UserStore``, ``SuppressionStore``, ``tracking.stats.compute``,
``dnsrecords``), and renders the result as JSON. Shapes are documented in
``mtaserver/admin/openapi.json``; the tests validate every response against it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from importlib import resources
from typing import Any

from aiohttp import web

from mtaserver import dnsrecords
from mtaserver.admin.deps import AdminDeps
from mtaserver.admin.people import PeopleApi
from mtaserver.admin.server import ApiError, int_param, json_response
from mtaserver.admin.templates import TemplatesApi
from mtaserver.cluster.client import RedisDown
from mtaserver.cluster.registry import read_status
from mtaserver.dkim.records import quote_txt
from mtaserver.tracking.stats import compute as compute_stats
from mtaserver.tracking.stats import parse_since

PREFIX = "/api/v1"
MAX_LIMIT = 1000
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


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
        r.add_get(f"{p}/campaigns/{{name}}/stats", self.campaign_stats, allow_head=False)
        r.add_get(f"{p}/triggers/{{name}}/stats", self.trigger_stats, allow_head=False)
        r.add_get(f"{p}/dkim/keys", self.dkim_keys, allow_head=False)
        r.add_get(f"{p}/dns/records", self.dns_records, allow_head=False)
        r.add_get(f"{p}/cluster", self.cluster, allow_head=False)
        PeopleApi(self.d).register(app, p)
        if self.d.templates is not None:
            TemplatesApi(self.d.templates).register(app, p)

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
        rows = await self.d.events.page(
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
        since = parse_since(raw, self.d.clock.now())  # the CLI's --since: '24h' or a date
        campaign = request.query.get("campaign") or None
        user = request.query.get("user") or None
        s = await compute_stats(self.d.reports, since, campaign, user)
        out = s.as_dict()
        out["filter"] = {"since": since, "campaign": campaign, "user": user}
        return json_response(out)

    def _outreach_args(self, request: web.Request) -> tuple[str, str, float]:
        user = (request.query.get("user") or "").strip()
        if not user:
            raise ApiError(400, "user: name the owner (campaign and trigger names are per user)")
        since = parse_since(request.query.get("since") or None, self.d.clock.now())
        return user, request.match_info["name"], since

    async def campaign_stats(self, request: web.Request) -> web.Response:
        """The same numbers as ``mtaserver stats --campaign NAME --user U --json``."""
        user, name, since = self._outreach_args(request)
        rep = await self.d.outreach.campaign(user, name, since) if self.d.outreach else None
        if rep is None:
            raise ApiError(404, f"user {user!r} has no campaign {name!r}")
        return json_response(rep.as_json() | {"filter": {"since": since, "user": user}})

    async def trigger_stats(self, request: web.Request) -> web.Response:
        """The same numbers as ``mtaserver stats --trigger NAME --user U --json``."""
        user, name, since = self._outreach_args(request)
        rep = await self.d.outreach.trigger(user, name, since) if self.d.outreach else None
        if rep is None:
            raise ApiError(404, f"user {user!r} has no trigger {name!r}")
        return json_response(rep.as_json() | {"filter": {"since": since, "user": user}})

    # -- DKIM and DNS ----------------------------------------------------------------------
    def _inputs(self) -> dnsrecords.Inputs:
        cfg = self.d.config()
        return dnsrecords.Inputs.from_config(cfg, self.d.keys().keys)

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

    # -- cluster ---------------------------------------------------------------------------
    async def cluster(self, request: web.Request) -> web.Response:
        c = self.d.config().cluster
        out: dict[str, Any] = {
            "enabled": c is not None,
            "node_id": c.node_id if c else None,
            "shared_shaping": bool(c and c.redis),
            "nodes": [],
        }
        if c is not None and c.redis is not None:
            try:
                out["nodes"] = [n.as_dict() for n in await read_status(c)]
            except RedisDown:
                raise ApiError(503, "cluster.redis does not answer") from None
        return json_response(out)
