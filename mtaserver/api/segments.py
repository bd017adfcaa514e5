"""``/v1/segments`` on the API listener: saved filters over the key's user's contacts.

The same API keys and scopes as ``/v1/contacts``: ``contacts.read`` for GET and for
``POST /v1/segments/count`` (it changes nothing), ``contacts.write`` to create, replace or
delete. A segment is a saved query over contacts and its members are contacts, so a key
that may read contacts may read segments, and no new scope has to be granted.

Every answer is the key's user's: the store constrains each statement by owner, a list
name in a filter is looked up among the user's own lists (an unknown one is a 400 naming
the node when a segment is saved or counted), and another user's segment is a 404.
``GET /v1/segments/{name}/contacts`` pages by keyset: pass the answer's ``next`` as
``after`` to get the following page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from mtaserver.api.deps import ApiDeps, KeyInfo
from mtaserver.api.errors import Answer, error
from mtaserver.api.v1 import READ, WRITE, Handler, endpoint, ok, only, read_object
from mtaserver.contacts import MAX_ADDRESS, ContactError
from mtaserver.segments import MAX_JSON, parse
from mtaserver.storage.sqlite.segments import SegmentStore, check_segment_name

BODY: Final = MAX_JSON + 1024  # a filter document and its envelope
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
Fn = Callable[[web.Request, KeyInfo, SegmentStore], Awaitable[Answer]]


def _name(r: web.Request) -> str:
    return check_segment_name(r.match_info["name"], "name")


def _missing(name: str) -> Answer:
    return error(404, f"no segment {name}")


async def list_segments(r: web.Request, key: KeyInfo, store: SegmentStore) -> Answer:
    return ok({"segments": [s.as_json() for s in await store.list_all(key.user)]})


async def create_segment(r: web.Request, key: KeyInfo, store: SegmentStore) -> Answer:
    body = await read_object(r, BODY)
    only(body, ("name", "filter"))
    name = check_segment_name(body.get("name"), "name")
    seg, _ = await store.save(key.user, name, body.get("filter"), create=True)
    return ok(seg.as_json(), 201)


async def get_segment(r: web.Request, key: KeyInfo, store: SegmentStore) -> Answer:
    name = _name(r)
    seg = await store.get(key.user, name)
    return _missing(name) if seg is None else ok(seg.as_json())


async def put_segment(r: web.Request, key: KeyInfo, store: SegmentStore) -> Answer:
    name = _name(r)
    body = await read_object(r, BODY)
    only(body, ("filter",))
    seg, created = await store.save(key.user, name, body.get("filter"))
    return ok(seg.as_json(), 201 if created else 200)


async def delete_segment(r: web.Request, key: KeyInfo, store: SegmentStore) -> Answer:
    name = _name(r)
    return Answer(204) if await store.delete(key.user, name) else _missing(name)


async def count(r: web.Request, key: KeyInfo, store: SegmentStore) -> Answer:
    """``{"filter": {...}}`` or ``{"segment": "name"}`` → ``{"count": n}``."""
    body = await read_object(r, BODY)
    only(body, ("filter", "segment"))
    if ("filter" in body) == ("segment" in body):
        raise ContactError("body: give either 'filter' or 'segment'", "body")
    if "segment" in body:
        flt = await store.resolve(key.user, check_segment_name(body["segment"], "segment"))
    else:
        flt = parse(body["filter"])
    await store.check(key.user, flt)
    return ok({"count": await store.count(key.user, flt)})


async def contacts(r: web.Request, key: KeyInfo, store: SegmentStore) -> Answer:
    name = _name(r)
    raw = r.query.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ContactError(f"limit: a whole number from 1 to {MAX_LIMIT}", "limit")
    limit = int(raw)
    after = r.query.get("after") or None
    if after is not None and len(after) > MAX_ADDRESS:
        raise ContactError("after: the 'next' value of the previous page", "after")
    flt = await store.resolve(key.user, name)
    rows = await store.page(key.user, flt, after, limit)
    nxt = rows[-1][1] if len(rows) == limit else None
    return ok({"contacts": [{"id": i, "email": a} for i, a in rows], "next": nxt})


def add_segment_routes(app: web.Application, deps: ApiDeps) -> None:
    """Serve the segment endpoints beside the contact ones (on the contact store's
    database), when the daemon wired a contact store."""
    if deps.contacts is None:
        return
    store = deps.segments or SegmentStore(deps.contacts.db, deps.clock)

    def h(scope: str, fn: Fn) -> Handler:
        async def call(r: web.Request, key: KeyInfo) -> Answer:
            return await fn(r, key, store)

        return endpoint(deps, scope, call)

    add = app.router
    add.add_get("/v1/segments", h(READ, list_segments))
    add.add_post("/v1/segments", h(WRITE, create_segment))
    add.add_post("/v1/segments/count", h(READ, count))
    add.add_get("/v1/segments/{name}", h(READ, get_segment))
    add.add_put("/v1/segments/{name}", h(WRITE, put_segment))
    add.add_delete("/v1/segments/{name}", h(WRITE, delete_segment))
    add.add_get("/v1/segments/{name}/contacts", h(READ, contacts))
