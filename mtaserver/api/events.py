"""``/v1/events`` and ``/v1/triggers`` on the API listener: events in, triggered mail out.

``POST /v1/events`` takes one event or ``{"events": [...]}`` (at most 1,000) and answers
202 only once the events, and every sequence step they start or cancel, are committed; the
answer counts them and names addresses that are not the key's user's contacts (their
events are not stored: create the contact first). ``/v1/triggers/{name}`` is PUT (create
or replace), GET and DELETE; ``GET /v1/triggers`` lists them with per-step counts.

The same keys and scopes as ``/v1/contacts``: ``contacts.write`` to send events and change
triggers, ``contacts.read`` to read triggers. Everything is scoped to the key's user.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from mtaserver.api.auth import authenticate
from mtaserver.api.deps import ApiDeps, KeyInfo, TemplateSource
from mtaserver.api.errors import Answer, error
from mtaserver.clock import Clock
from mtaserver.errors import StorageError
from mtaserver.journeys import TriggerError, check_name, events_input, trigger_from_json
from mtaserver.log import get_logger, kv
from mtaserver.storage.sqlite.journeys import JourneyStore

log = get_logger("api")

READ: Final = "contacts.read"
WRITE: Final = "contacts.write"
EVENTS_BODY: Final = 16 << 20  # bytes of one POST /v1/events (1,000 events with properties)
TRIGGER_BODY: Final = 256 << 10
Fn = Callable[[web.Request, KeyInfo, bytes], Awaitable[Answer]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _TooLarge(Exception):
    pass


def _ok(value: object, status: int = 200) -> Answer:
    return Answer(status, json.dumps(value, ensure_ascii=False).encode())


def _json(body: bytes) -> object:
    try:
        return json.loads(body or b"null")
    except (ValueError, RecursionError):
        raise TriggerError("body: not JSON", "body") from None


async def _read(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    total = 0
    while chunk := await request.content.readany():
        total += len(chunk)
        if total > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class EventsApi:
    def __init__(self, store: JourneyStore, templates: TemplateSource, clock: Clock) -> None:
        self.store = store
        self.templates = templates
        self.clock = clock

    async def post_events(self, r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        events = events_input(_json(body), self.clock.now())
        got = await self.store.record_events(key.user, events)
        log.info(kv(event="events_recorded", user=key.user, key=key.key_id, stored=got.stored,
                    started=got.started, cancelled=got.cancelled,
                    unknown=len(got.unknown)))  # fmt: skip
        return _ok(got.as_json(), 202)

    async def put_trigger(self, r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        name = check_name(r.match_info["name"], "name")
        t = trigger_from_json(_json(body), name)
        for i, s in enumerate(t.steps):
            if await self.templates.get(s.template) is None:
                raise TriggerError(
                    f"steps[{i}].template: no stored template {s.template!r} (create it with "
                    "mtaserver template put or the admin API first)",
                    f"steps[{i}].template",
                )
        info, created = await self.store.put_trigger(key.user, t)
        log.info(kv(event="trigger_put", user=key.user, key=key.key_id, trigger=name,
                    created=created))  # fmt: skip
        return _ok(info.as_json(), 201 if created else 200)

    async def get_trigger(self, r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        name = check_name(r.match_info["name"], "name")
        info = await self.store.get_trigger(key.user, name)
        if info is None:
            return error(404, f"no trigger {name}")
        counts = await self.store.step_counts(key.user, name)
        steps = {str(i): c for i, c in sorted(counts.items())}
        return _ok(info.as_json() | {"step_counts": steps})

    async def list_triggers(self, r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        return _ok({"triggers": [t.as_json() for t in await self.store.triggers(key.user)]})

    async def delete_trigger(self, r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        name = check_name(r.match_info["name"], "name")
        if not await self.store.delete_trigger(key.user, name):
            return error(404, f"no trigger {name}")
        log.info(kv(event="trigger_deleted", user=key.user, key=key.key_id, trigger=name))
        return Answer(204)


def _handler(deps: ApiDeps, scope: str, limit: int, fn: Fn) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        started = deps.clock.monotonic()
        key, answer = await authenticate(deps, request, scope)
        if answer is None:
            assert key is not None
            answer = await _guarded(request, fn, key, limit)
        resp = web.Response(status=answer.status, body=answer.body or None)
        if answer.body:
            resp.content_type = "application/json"
        for name, value in answer.headers:
            resp.headers[name] = value
        if answer.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="mtaserver"'
        log.debug(kv(event="api_request", method=request.method, path=request.path,
                     status=answer.status, key=key.key_id if key else None,
                     ms=round((deps.clock.monotonic() - started) * 1000, 1)))  # fmt: skip
        return resp

    return handler


async def _guarded(request: web.Request, fn: Fn, key: KeyInfo, limit: int) -> Answer:
    try:
        return await fn(request, key, await _read(request, limit))
    except TriggerError as exc:
        return error(400, str(exc), exc.field)
    except _TooLarge:
        return Answer(413, error(413, f"body: larger than {limit} bytes").body,
                      (("Connection", "close"),))  # fmt: skip
    except StorageError as exc:
        log.error(kv(event="api_storage_error", path=request.path, error=str(exc)))
        return Answer(503, error(503, "the database is unavailable; nothing was stored, try "
                                 "again").body, (("Retry-After", "5"),))  # fmt: skip
    except Exception:
        log.exception(kv(event="api_handler_failed", path=request.path, key=key.key_id))
        return error(500, "internal error; nothing was stored")


def add_event_routes(app: web.Application, deps: ApiDeps) -> None:
    """Serve events and triggers when the daemon wired a journey store."""
    store = deps.journeys
    if store is None:
        return
    api = EventsApi(store, deps.templates, deps.clock)
    add = app.router
    add.add_post("/v1/events", _handler(deps, WRITE, EVENTS_BODY, api.post_events))
    add.add_get("/v1/triggers", _handler(deps, READ, 0, api.list_triggers))
    add.add_get("/v1/triggers/{name}", _handler(deps, READ, 0, api.get_trigger))
    add.add_put("/v1/triggers/{name}", _handler(deps, WRITE, TRIGGER_BODY, api.put_trigger))
    add.add_delete("/v1/triggers/{name}", _handler(deps, WRITE, 0, api.delete_trigger))
