"""``/v1/campaigns`` on the API listener: a key's user's campaigns and their life cycle.

The same API keys and scopes as ``/v1/segments``: ``contacts.read`` to list and read,
``contacts.write`` to create and to start, pause, resume or cancel. A campaign is mail to
the user's contacts chosen by a list or segment, so a key that may change contacts and
segments may send to them, and no new scope has to be granted. Which action applies to
which status is :mod:`mtaserver.campaigns` (shared with the CLI); one that does not apply
is a 409 naming the status. The daemon's feeder does the sending.
"""

from __future__ import annotations

import json
from typing import Final

from aiohttp import web

from mtaserver.api.deps import ApiDeps, KeyInfo
from mtaserver.api.errors import Answer, error
from mtaserver.api.v1 import READ, WRITE, endpoint, ok, only, read_object
from mtaserver.campaigns import ACTIONS, check_name, definition
from mtaserver.contacts import ContactError
from mtaserver.log import get_logger, kv
from mtaserver.segments import SegmentNotFound, parse
from mtaserver.storage.sqlite.campaigns import Campaign, CampaignStore
from mtaserver.storage.sqlite.segments import SegmentStore

log = get_logger("api")

BODY: Final = 64 * 1024  # a definition with a segment filter inline
FIELDS: Final = ("name", "template", "from", "list", "segment", "send_at", "cron", "tz",
                  "local_time", "date", "local")  # fmt: skip


class Campaigns:
    def __init__(self, deps: ApiDeps, store: CampaignStore, segments: SegmentStore) -> None:
        self.deps = deps
        self.store = store
        self.segments = segments

    async def list(self, r: web.Request, key: KeyInfo) -> Answer:
        return ok({"campaigns": [_view(c) for c in await self.store.list_all(key.user)]})

    async def get(self, r: web.Request, key: KeyInfo) -> Answer:
        c = await self._find(r, key)
        view = _view(c)
        view["runs"] = [
            {"fire_at": x.fire_at, "status": x.status, "audience": x.audience,
             "queued": x.queued, "skipped": x.skipped}
            for x in await self.store.runs(c.id)
        ]  # fmt: skip
        return ok(view)

    async def create(self, r: web.Request, key: KeyInfo) -> Answer:
        body = await read_object(r, BODY)
        only(body, FIELDS)
        sender = body.get("from")
        if isinstance(sender, str):
            sender = {"email": sender}
        if not isinstance(sender, dict) or set(sender) - {"email", "name"}:
            raise ContactError('from: expected {"email": ..., "name": ...}', "from")
        seg = body.get("segment")
        d = definition(
            body.get("name"), body.get("template"), sender.get("email"),
            list_name=body.get("list"),
            segment=json.dumps(seg) if isinstance(seg, dict) else seg,
            send_at=body.get("send_at"), cron=body.get("cron"), tz=body.get("tz"),
            from_name=sender.get("name"), local_time=body.get("local_time"),
            date=body.get("date"), local=body.get("local", False),
        )  # fmt: skip
        if await self.deps.templates.get(d.template) is None:
            raise ContactError(f"template: no template {d.template!r}", "template")
        if d.audience_kind == "list":
            await self.segments.check(key.user, parse({"in_list": d.audience}))
        else:
            await self.segments.check(key.user, await self.segments.resolve(key.user, d.audience))
        c = await self.store.create(
            key.user, d.name, d.template, d.from_email, audience_kind=d.audience_kind,
            audience=d.audience, schedule=d.schedule, send_at=d.send_at, cron=d.cron,
            tz=d.tz, from_name=d.from_name, local_at=d.local_at,
        )  # fmt: skip
        return ok(_view(c), 201)

    async def act(self, r: web.Request, key: KeyInfo) -> Answer:
        action = r.match_info["action"]
        if action not in ACTIONS:
            return error(404, f"no such action {action[:32]!r} (one of {', '.join(ACTIONS)})")
        c = await self.store.act(await self._find(r, key), action)
        log.info(kv(event="campaign_" + action, campaign=c.name, owner=key.user, status=c.status))
        return ok(_view(c))

    async def _find(self, r: web.Request, key: KeyInfo) -> Campaign:
        name = check_name(r.match_info["name"])
        c = await self.store.get(key.user, name)
        if c is None:
            raise SegmentNotFound(f"no campaign {name}")
        return c


def _view(c: Campaign) -> dict[str, object]:
    return {
        "name": c.name, "status": c.status, "template": c.template,
        "from": {"email": c.from_email, "name": c.from_name},
        c.audience_kind: c.audience, "schedule": c.schedule, "send_at": c.send_at,
        "local_time": c.local_at, "cron": c.cron, "tz": c.tz, "next_run_at": c.next_run_at,
        "created_at": c.created_at, "updated_at": c.updated_at, "failure": c.failure,
    }  # fmt: skip


def add_campaign_routes(app: web.Application, deps: ApiDeps) -> None:
    """Serve the campaign endpoints on the stores given (PostgreSQL), else on the contact
    store's database, when wired."""
    if deps.campaigns is not None:
        api = Campaigns(deps, deps.campaigns.campaigns, deps.campaigns.segments)
    elif deps.contacts is not None:
        db = deps.contacts.db
        api = Campaigns(deps, CampaignStore(db, deps.clock), SegmentStore(db, deps.clock))
    else:
        return
    add = app.router
    add.add_get("/v1/campaigns", endpoint(deps, READ, api.list))
    add.add_post("/v1/campaigns", endpoint(deps, WRITE, api.create))
    add.add_get("/v1/campaigns/{name}", endpoint(deps, READ, api.get))
    add.add_post("/v1/campaigns/{name}/{action}", endpoint(deps, WRITE, api.act))
