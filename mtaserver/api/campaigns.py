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
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from mtaserver.api.auth import authenticate
from mtaserver.api.deps import ApiDeps, KeyInfo
from mtaserver.api.errors import Answer, error
from mtaserver.campaigns import ACTIONS, check_name, definition, transition
from mtaserver.contacts import ContactConflict, ContactError
from mtaserver.cron import CronError
from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv
from mtaserver.segments import SegmentNotFound, parse
from mtaserver.storage.sqlite.campaigns import Campaign, CampaignStore
from mtaserver.storage.sqlite.segments import SegmentStore

log = get_logger("api")

READ: Final = "contacts.read"
WRITE: Final = "contacts.write"
BODY: Final = 64 * 1024  # a definition with a segment filter inline
FIELDS: Final = ("name", "template", "from", "list", "segment", "send_at", "cron", "tz")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _TooLarge(Exception):
    pass


class Campaigns:
    def __init__(self, deps: ApiDeps, store: CampaignStore, segments: SegmentStore) -> None:
        self.deps = deps
        self.store = store
        self.segments = segments

    async def list(self, r: web.Request, key: KeyInfo) -> Answer:
        return _ok({"campaigns": [_view(c) for c in await self.store.list_all(key.user)]})

    async def get(self, r: web.Request, key: KeyInfo) -> Answer:
        c = await self._find(r, key)
        view = _view(c)
        view["runs"] = [
            {"fire_at": x.fire_at, "status": x.status, "audience": x.audience,
             "queued": x.queued, "skipped": x.skipped}
            for x in await self.store.runs(c.id)
        ]  # fmt: skip
        return _ok(view)

    async def create(self, r: web.Request, key: KeyInfo) -> Answer:
        body = await _body(r)
        extra = sorted(set(body) - set(FIELDS))
        if extra:
            name = str(extra[0])[:64]
            raise ContactError(f"{name}: unknown field (known: {', '.join(FIELDS)})", name)
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
            from_name=sender.get("name"),
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
            tz=d.tz, from_name=d.from_name,
        )  # fmt: skip
        return _ok(_view(c), 201)

    async def act(self, r: web.Request, key: KeyInfo) -> Answer:
        action = r.match_info["action"]
        if action not in ACTIONS:
            return error(404, f"no such action {action[:32]!r} (one of {', '.join(ACTIONS)})")
        c = await self._find(r, key)
        paused = any(x.status == "paused" for x in await self.store.runs(c.id))
        status, nxt = transition(
            action, c.name, c.status, schedule=c.schedule, send_at=c.send_at, cron=c.cron,
            tz=c.tz, next_run_at=c.next_run_at, paused_run=paused, now=self.deps.clock.now(),
        )  # fmt: skip
        await self.store.set_status(c.id, status, nxt)
        log.info(kv(event="campaign_" + action, campaign=c.name, owner=key.user, status=status))
        found = await self.store.get(key.user, c.name)
        return _ok(_view(found or c))

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
        "cron": c.cron, "tz": c.tz, "next_run_at": c.next_run_at,
        "created_at": c.created_at, "updated_at": c.updated_at,
    }  # fmt: skip


def _ok(value: object, status: int = 200) -> Answer:
    return Answer(status, json.dumps(value, ensure_ascii=False).encode())


async def _body(request: web.Request) -> dict[str, object]:
    data = bytearray()
    while chunk := await request.content.readany():
        data += chunk
        if len(data) > BODY:
            raise _TooLarge
    try:
        value = json.loads(bytes(data) or b"null")
    except (ValueError, RecursionError):
        raise ContactError("body: not JSON", "body") from None
    if not isinstance(value, dict):
        raise ContactError("body: expected a JSON object", "body")
    return value


Fn = Callable[[web.Request, KeyInfo], Awaitable[Answer]]


def _handler(deps: ApiDeps, scope: str, fn: Fn) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        key, answer = await authenticate(deps, request, scope)
        if answer is None:
            assert key is not None
            answer = await _guarded(request, fn, key)
        resp = web.Response(status=answer.status, body=answer.body or None)
        if answer.body:
            resp.content_type = "application/json"
        for name, value in answer.headers:
            resp.headers[name] = value
        if answer.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="mtaserver"'
        return resp

    return handler


async def _guarded(request: web.Request, fn: Fn, key: KeyInfo) -> Answer:
    try:
        return await fn(request, key)
    except SegmentNotFound as exc:
        return error(404, str(exc), exc.field)
    except ContactConflict as exc:
        return error(409, str(exc), exc.field)
    except ContactError as exc:
        return error(400, str(exc), exc.field)
    except CronError as exc:
        return error(400, str(exc), "cron")
    except _TooLarge:
        return Answer(413, error(413, f"body: larger than {BODY} bytes").body,
                      (("Connection", "close"),))  # fmt: skip
    except StorageError as exc:
        log.error(kv(event="api_storage_error", path=request.path, error=str(exc)))
        return Answer(503, error(503, "the database is unavailable; try again").body,
                      (("Retry-After", "5"),))  # fmt: skip
    except Exception:
        log.exception(kv(event="api_handler_failed", path=request.path, key=key.key_id))
        return error(500, "internal error")


def add_campaign_routes(app: web.Application, deps: ApiDeps) -> None:
    """Serve the campaign endpoints on the contact store's database, when wired."""
    if deps.contacts is None:
        return
    api = Campaigns(
        deps,
        CampaignStore(deps.contacts.db, deps.clock),
        SegmentStore(deps.contacts.db, deps.clock),
    )
    add = app.router
    add.add_get("/v1/campaigns", _handler(deps, READ, api.list))
    add.add_post("/v1/campaigns", _handler(deps, WRITE, api.create))
    add.add_get("/v1/campaigns/{name}", _handler(deps, READ, api.get))
    add.add_post("/v1/campaigns/{name}/{action}", _handler(deps, WRITE, api.act))
