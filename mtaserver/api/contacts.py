"""``/v1/contacts`` and ``/v1/lists`` on the API listener: contacts and lists of the key's user.

The same API keys as the send API, with the scopes ``contacts.read`` (GET) and
``contacts.write`` (everything else). Every query is the key's user's (the store scopes
by owner): another user's contact or list is answered as if it did not exist.

``POST /v1/contacts/import`` streams: the body is read as it arrives and stored in
chunks (:meth:`ContactStore.import_stream`), so a 100,000-row file costs two chunks of
memory, and the answer counts what was stored and names each bad line (the first 100).
The other endpoints take JSON bodies of at most ``JSON_BODY`` bytes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import web

from mtaserver.api.deps import ApiDeps, KeyInfo
from mtaserver.api.errors import Answer, error
from mtaserver.api.v1 import (
    READ,
    WRITE,
    Handler,
    TooLarge,
    endpoint,
    ok,
    only,
    read_object,
)
from mtaserver.contacts import (
    FORMATS,
    ContactError,
    Format,
    ImportParser,
    check_list_name,
    check_status,
    contact_input,
    normalize_address,
)
from mtaserver.log import get_logger, kv
from mtaserver.storage.sqlite.activity import ActivityStore, parse_cursor
from mtaserver.storage.sqlite.contacts import (
    ContactStore,
    ImportAborted,
)
from mtaserver.storage.sqlite.optin import OptInSettings

log = get_logger("api")

JSON_BODY: Final = 4 << 20  # bytes of a PUT /v1/contacts body
MAX_IMPORT: Final = 1 << 30  # bytes of one import request
MAX_PER_REQUEST: Final = 1000  # contacts in one PUT, addresses in one members POST
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
_JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines",
                "application/json-lines")  # fmt: skip
Fn = Callable[[web.Request, KeyInfo, ContactStore], Awaitable[Answer]]


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ContactError(f"limit: a whole number from 1 to {MAX_LIMIT}", "limit")
    return int(raw)


def _path_address(request: web.Request) -> str:
    return normalize_address(request.match_info["address"], "address")


def _path_list(request: web.Request) -> str:
    return check_list_name(request.match_info["name"], "name")


def _not_found(what: str) -> Answer:
    return error(404, f"no {what}")


# -- contacts -------------------------------------------------------------------------------
async def put_contacts(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
    body = await read_object(r, JSON_BODY)
    if "contacts" not in body:
        c, created = await store.upsert(key.user, contact_input(body))
        return ok(c.as_json(), 201 if created else 200)
    items = body["contacts"]
    if set(body) != {"contacts"}:
        extra = sorted(set(body) - {"contacts"})[0]
        raise ContactError(f"{extra}: unknown field next to 'contacts'", extra)
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_PER_REQUEST:
        raise ContactError(f"contacts: a list of 1 to {MAX_PER_REQUEST} contacts", "contacts")
    rows = [contact_input(obj, f"contacts[{i}].") for i, obj in enumerate(items)]
    got = await store.upsert_many(key.user, rows)
    return ok({"created": got.created, "updated": got.updated})


def _import_format(r: web.Request) -> Format:
    fmt = r.query.get("format")
    if fmt is None:
        ctype = r.content_type.lower()
        fmt = "csv" if ctype == "text/csv" else "jsonl" if ctype in _JSONL_TYPES else None
    if fmt not in FORMATS:
        raise ContactError(
            "format: give ?format=csv or ?format=jsonl, or Content-Type text/csv or "
            "application/x-ndjson",
            "format",
        )
    return "csv" if fmt == "csv" else "jsonl"


async def import_contacts(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
    fmt = _import_format(r)
    list_name = r.query.get("list")
    if list_name is not None:
        check_list_name(list_name, "list")

    async def body() -> AsyncIterator[bytes]:
        total = 0
        async for chunk in r.content.iter_any():
            total += len(chunk)
            if total > MAX_IMPORT:
                raise TooLarge(MAX_IMPORT)  # not an end of file: the cut-off last line is not read
            yield chunk

    try:
        result = await store.import_stream(key.user, body(), ImportParser(fmt),
                                           list_name=list_name)  # fmt: skip
    except ImportAborted as exc:
        res = exc.result
        log.info(kv(event="contacts_import_aborted", user=key.user, key=key.key_id,
                    created=res.created, updated=res.updated,
                    error=type(exc.__cause__).__name__))  # fmt: skip
        if not isinstance(exc.__cause__, TooLarge):
            return error(400, str(exc), "body")
        answer = res.as_json()
        answer["errors"] = [{"message": f"the body is larger than {MAX_IMPORT} bytes; the "
                             "rows counted here were stored, the rest was not read",
                             "field": "body"}]  # fmt: skip
        return Answer(413, json.dumps(answer).encode(), (("Connection", "close"),))
    log.info(kv(event="contacts_imported", user=key.user, key=key.key_id, rows=result.rows,
                created=result.created, updated=result.updated, failed=result.failed))  # fmt: skip
    return ok(result.as_json())


async def get_contact(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
    addr = _path_address(r)
    c = await store.get(key.user, addr)
    return _not_found(f"contact {addr}") if c is None else ok(c.as_json())


async def delete_contact(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
    addr = _path_address(r)
    if not await store.delete(key.user, addr):
        return _not_found(f"contact {addr}")
    return Answer(204)


def _activity_route(timelines: ActivityStore) -> Fn:
    async def get_activity(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
        return await _activity(r, key, store, timelines)

    return get_activity


async def _activity(
    r: web.Request, key: KeyInfo, store: ContactStore, timelines: ActivityStore
) -> Answer:
    """The contact's timeline: the key's user's messages to it and their events, oldest
    first; ``next`` is the cursor of the following page (``after``)."""
    addr = _path_address(r)
    raw = r.query.get("after")
    try:
        after = (-1.0, 0, "") if raw is None else parse_cursor(raw)
    except ValueError:
        raise ContactError("after: the 'next' value of the previous page", "after") from None
    limit = _limit(r)
    if await store.get(key.user, addr) is None:
        return _not_found(f"contact {addr}")
    found = await timelines.timeline(key.user, addr, after=after, limit=limit)
    nxt = found[-1].cursor() if len(found) == limit else None
    return ok({"email": addr, "activity": [a.as_json() for a in found], "next": nxt})


async def search_contacts(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
    equals: list[tuple[str, str]] = []
    for name, value in r.query.items():
        if name.startswith("attr."):
            equals.append((name.removeprefix("attr."), value))
        elif name not in ("status", "list", "limit", "after"):
            raise ContactError(
                f"{name[:80]}: unknown parameter (attr.NAME, status, list, limit, after)",
                name[:80],
            )
    status = r.query.get("status")
    if status is not None:
        check_status(status, "status")
    after = r.query.get("after", "")
    limit = _limit(r)
    found = await store.search(key.user, equals, status=status, list_name=r.query.get("list"),
                               after=after, limit=limit)  # fmt: skip
    nxt = found[-1].address if len(found) == limit else None
    return ok({"contacts": [c.as_json() for c in found], "next": nxt})


# -- lists ----------------------------------------------------------------------------------
def _bool(body: dict[str, object], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise ContactError(f"{name}: true or false", name)
    return value


async def get_lists(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
    return ok({"lists": [x.as_json() for x in await store.lists(key.user)]})


async def create_list(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
    body = await read_object(r, JSON_BODY)
    only(body, ("name", "double_opt_in"))
    name = check_list_name(body.get("name"), "name")
    made = await store.create_list(key.user, name, bool(_bool(body, "double_opt_in")))
    return ok(made.as_json(), 201)


async def get_list(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
    name = _path_list(r)
    found = await store.get_list(key.user, name)
    return _not_found(f"list {name}") if found is None else ok(found.as_json())


async def patch_list(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
    name = _path_list(r)
    body = await read_object(r, JSON_BODY)
    only(body, ("name", "double_opt_in"))
    new = body.get("name")
    new_name = None if new is None else check_list_name(new, "name")
    got = await store.update_list(
        key.user, name, new_name=new_name, double_opt_in=_bool(body, "double_opt_in")
    )
    return _not_found(f"list {name}") if got is None else ok(got.as_json())


async def delete_list(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
    name = _path_list(r)
    return Answer(204) if await store.delete_list(key.user, name) else _not_found(f"list {name}")


async def get_members(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
    name = _path_list(r)
    raw = r.query.get("after", "0")
    if not raw.isdigit():
        raise ContactError("after: the 'next' value of the previous page", "after")
    limit = _limit(r)
    found = await store.members(key.user, name, after=int(raw), limit=limit)
    if found is None:
        return _not_found(f"list {name}")
    nxt = str(found[-1].contact.id) if len(found) == limit else None
    return ok({"members": [m.as_json() for m in found], "next": nxt})


async def add_members(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
    name = _path_list(r)
    body = await read_object(r, JSON_BODY)
    only(body, ("emails", "status"))
    emails = body.get("emails")
    if not isinstance(emails, list) or not 1 <= len(emails) <= MAX_PER_REQUEST:
        raise ContactError(f"emails: a list of 1 to {MAX_PER_REQUEST} addresses", "emails")
    addrs = [normalize_address(e, f"emails[{i}]") for i, e in enumerate(emails)]
    status = body.get("status")
    st = None if status is None else check_status(status, "status")
    added = await store.add_members(key.user, name, addrs, st)
    return _not_found(f"list {name}") if added is None else ok({"added": added})


async def remove_member(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
    name, addr = _path_list(r), _path_address(r)
    gone = await store.remove_member(key.user, name, addr)
    if gone is None:
        return _not_found(f"list {name}")
    return Answer(204) if gone else _not_found(f"member {addr} of list {name}")


def _nudging(deps: ApiDeps, fn: Fn) -> Fn:
    """After a write that may put contacts on a double opt-in list: wake the mailer."""

    async def wrapped(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
        answer = await fn(r, key, store)
        if answer.status < 300:
            deps.optin_nudge()
        return answer

    return wrapped


def _confirm_settings(body: dict[str, object]) -> OptInSettings | None:
    raw = body.get("confirm")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ContactError("confirm: an object {from, subject, body}", "confirm")
    only(raw, ("from", "subject", "body"))
    for name in ("from", "subject", "body"):
        if raw.get(name) is not None and not isinstance(raw.get(name), str):
            raise ContactError(f"confirm.{name}: a string or null", f"confirm.{name}")
    return OptInSettings(raw.get("from"), raw.get("subject"), raw.get("body"))


def _list_routes(deps: ApiDeps) -> tuple[Fn, Fn, Fn]:
    """POST, GET and PATCH of a list with its confirmation mail settings (``confirm``)."""
    optin = deps.optin

    async def with_confirm(key: KeyInfo, name: str, answer: Answer,
                           s: OptInSettings | None) -> Answer:  # fmt: skip
        if optin is None or answer.status >= 300:
            return answer
        if s is not None:
            await optin.set_settings(key.user, name, s)
        got = await optin.settings(key.user, name)
        out = json.loads(answer.body)
        out["confirm"] = (got or OptInSettings()).as_json()
        return ok(out, answer.status)

    async def post(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
        body = await read_object(r, JSON_BODY)
        only(body, ("name", "double_opt_in", "confirm"))
        name = check_list_name(body.get("name"), "name")
        s = _confirm_settings(body)
        if s is not None:
            s.check()  # before the list exists: a bad setting creates nothing
        made = await store.create_list(key.user, name, bool(_bool(body, "double_opt_in")))
        return await with_confirm(key, name, ok(made.as_json(), 201), s)

    async def get(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
        return await with_confirm(key, _path_list(r), await get_list(r, key, store), None)

    async def patch(r: web.Request, key: KeyInfo, store: ContactStore) -> Answer:
        name = _path_list(r)
        body = await read_object(r, JSON_BODY)
        only(body, ("name", "double_opt_in", "confirm"))
        s = _confirm_settings(body)
        if s is not None:
            s.check()
        new = body.get("name")
        new_name = None if new is None else check_list_name(new, "name")
        got = await store.update_list(
            key.user, name, new_name=new_name, double_opt_in=_bool(body, "double_opt_in")
        )
        if got is None:
            return _not_found(f"list {name}")
        return await with_confirm(key, got.name, ok(got.as_json()), s)

    return post, get, patch


def add_contact_routes(app: web.Application, deps: ApiDeps) -> None:
    """Serve the contact and list endpoints when the daemon wired a contact store."""
    store = deps.contacts
    if store is None:
        return

    def h(scope: str, fn: Fn) -> Handler:
        async def call(r: web.Request, key: KeyInfo) -> Answer:
            return await fn(r, key, store)

        return endpoint(deps, scope, call)

    post_list, get_list_, patch_list_ = _list_routes(deps)

    add = app.router
    add.add_put("/v1/contacts", h(WRITE, put_contacts))
    add.add_get("/v1/contacts", h(READ, search_contacts))
    add.add_post("/v1/contacts/import", h(WRITE, _nudging(deps, import_contacts)))
    add.add_get("/v1/contacts/{address}", h(READ, get_contact))
    timelines = deps.activity or ActivityStore(store.db)  # the backend's, else on its db
    add.add_get("/v1/contacts/{address}/activity", h(READ, _activity_route(timelines)))
    add.add_delete("/v1/contacts/{address}", h(WRITE, delete_contact))
    add.add_get("/v1/lists", h(READ, get_lists))
    add.add_post("/v1/lists", h(WRITE, post_list))
    add.add_get("/v1/lists/{name}", h(READ, get_list_))
    add.add_patch("/v1/lists/{name}", h(WRITE, patch_list_))
    add.add_delete("/v1/lists/{name}", h(WRITE, delete_list))
    add.add_get("/v1/lists/{name}/members", h(READ, get_members))
    add.add_post("/v1/lists/{name}/members", h(WRITE, _nudging(deps, add_members)))
    add.add_delete("/v1/lists/{name}/members/{address}", h(WRITE, remove_member))
