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

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from mtaserver.api.deps import ApiDeps, KeyInfo, TemplateSource
from mtaserver.api.errors import Answer, error
from mtaserver.api.v1 import READ, WRITE, Handler, endpoint, ok, parse_json, read_body
from mtaserver.clock import Clock
from mtaserver.journeys import TriggerError, check_name, events_input, trigger_from_json
from mtaserver.log import get_logger, kv
from mtaserver.storage.sqlite.journeys import JourneyStore

log = get_logger("api")

EVENTS_BODY: Final = 16 << 20  # bytes of one POST /v1/events (1,000 events with properties)
TRIGGER_BODY: Final = 256 << 10
Fn = Callable[[web.Request, KeyInfo, bytes], Awaitable[Answer]]


class EventsApi:
    def __init__(self, store: JourneyStore, templates: TemplateSource, clock: Clock) -> None:
        self.store = store
        self.templates = templates
        self.clock = clock

    async def post_events(self, r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        events = events_input(parse_json(body), self.clock.now())
        got = await self.store.record_events(key.user, events)
        log.info(kv(event="events_recorded", user=key.user, key=key.key_id, stored=got.stored,
                    started=got.started, cancelled=got.cancelled,
                    unknown=len(got.unknown)))  # fmt: skip
        return ok(got.as_json(), 202)

    async def put_trigger(self, r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        name = check_name(r.match_info["name"], "name")
        t = trigger_from_json(parse_json(body), name)
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
        return ok(info.as_json(), 201 if created else 200)

    async def get_trigger(self, r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        name = check_name(r.match_info["name"], "name")
        info = await self.store.get_trigger(key.user, name)
        if info is None:
            return error(404, f"no trigger {name}")
        counts = await self.store.step_counts(key.user, name)
        steps = {str(i): c for i, c in sorted(counts.items())}
        return ok(info.as_json() | {"step_counts": steps})

    async def list_triggers(self, r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        return ok({"triggers": [t.as_json() for t in await self.store.triggers(key.user)]})

    async def delete_trigger(self, r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        name = check_name(r.match_info["name"], "name")
        if not await self.store.delete_trigger(key.user, name):
            return error(404, f"no trigger {name}")
        log.info(kv(event="trigger_deleted", user=key.user, key=key.key_id, trigger=name))
        return Answer(204)


def _reading(deps: ApiDeps, scope: str, limit: int, fn: Fn) -> Handler:
    """``fn`` with the body read first (at most ``limit`` bytes: 0 for GET and DELETE)."""

    async def call(r: web.Request, key: KeyInfo) -> Answer:
        return await fn(r, key, await read_body(r, limit))

    return endpoint(deps, scope, call)


def add_event_routes(app: web.Application, deps: ApiDeps) -> None:
    """Serve events and triggers when the daemon wired a journey store."""
    store = deps.journeys
    if store is None:
        return
    api = EventsApi(store, deps.templates, deps.clock)
    add = app.router
    add.add_post("/v1/events", _reading(deps, WRITE, EVENTS_BODY, api.post_events))
    add.add_get("/v1/triggers", _reading(deps, READ, 0, api.list_triggers))
    add.add_get("/v1/triggers/{name}", _reading(deps, READ, 0, api.get_trigger))
    add.add_put("/v1/triggers/{name}", _reading(deps, WRITE, TRIGGER_BODY, api.put_trigger))
    add.add_delete("/v1/triggers/{name}", _reading(deps, WRITE, 0, api.delete_trigger))
