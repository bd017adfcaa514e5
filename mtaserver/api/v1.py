"""What every ``/v1`` endpoint shares: the key check, JSON bodies read under a size cap,
and one mapping from the errors a handler raises to the answer.

A handler is ``(request, key) -> Answer``. Bad input is raised, not answered: an error
that names its field (``ContactError``, ``TriggerError``, ``CronError``, ...) becomes a 400
(404 for a named thing that does not exist, 409 for a conflict) with that field, so every
endpoint answers the same mistake the same way. A database that cannot be reached is a
503 with ``Retry-After``; anything else is logged and a 500.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from mtaserver.api.auth import authenticate
from mtaserver.api.deps import ApiDeps, KeyInfo
from mtaserver.api.errors import Answer, error
from mtaserver.contacts import ContactConflict, ContactError
from mtaserver.cron import CronError
from mtaserver.errors import StorageError
from mtaserver.journeys import TriggerError
from mtaserver.log import get_logger, kv
from mtaserver.segments import SegmentNotFound

log = get_logger("api")

READ: Final = "contacts.read"
WRITE: Final = "contacts.write"
Call = Callable[[web.Request, KeyInfo], Awaitable[Answer]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# First match wins: subclasses before their bases.
INPUT_ERRORS: Final[tuple[tuple[type[Exception], int, str | None], ...]] = (
    (SegmentNotFound, 404, None),
    (ContactConflict, 409, None),
    (ContactError, 400, None),
    (TriggerError, 400, None),
    (CronError, 400, "cron"),
)


class TooLarge(Exception):
    """The request body is over the endpoint's limit: 413, and the connection is closed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body: larger than {limit} bytes")
        self.limit = limit


def ok(value: object, status: int = 200) -> Answer:
    return Answer(status, json.dumps(value, ensure_ascii=False).encode())


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (:class:`TooLarge` beyond)."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(limit)
    data = bytearray()
    while chunk := await request.content.readany():
        data += chunk
        if len(data) > limit:
            raise TooLarge(limit)
    return bytes(data)


def parse_json(data: bytes) -> object:
    try:
        return json.loads(data or b"null")
    except (ValueError, RecursionError):
        raise ContactError("body: not JSON", "body") from None


async def read_json(request: web.Request, limit: int) -> object:
    return parse_json(await read_body(request, limit))


async def read_object(request: web.Request, limit: int) -> dict[str, object]:
    value = await read_json(request, limit)
    if not isinstance(value, dict):
        raise ContactError("body: expected a JSON object", "body")
    return value


def only(body: dict[str, object], known: tuple[str, ...]) -> None:
    """Refuse the first field of ``body`` that is not in ``known``, naming it."""
    extra = sorted(set(body) - set(known))
    if extra:
        name = str(extra[0])[:64]
        raise ContactError(f"{name}: unknown field (known: {', '.join(known)})", name)


def respond(answer: Answer) -> web.Response:
    resp = web.Response(status=answer.status, body=answer.body or None)
    if answer.body:
        resp.content_type = "application/json"
    for name, value in answer.headers:
        resp.headers[name] = value
    if answer.status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="mtaserver"'
    return resp


def endpoint(deps: ApiDeps, scope: str, call: Call) -> Handler:
    """The aiohttp handler of ``call``: key and scope checked first, errors answered."""

    async def handler(request: web.Request) -> web.StreamResponse:
        started = deps.clock.monotonic()
        key, answer = await authenticate(deps, request, scope)
        if answer is None:
            assert key is not None
            answer = await _guarded(request, call, key)
        log.debug(kv(event="api_request", method=request.method, path=request.path,
                     status=answer.status, key=key.key_id if key else None,
                     ms=round((deps.clock.monotonic() - started) * 1000, 1)))  # fmt: skip
        return respond(answer)

    return handler


async def _guarded(request: web.Request, call: Call, key: KeyInfo) -> Answer:
    try:
        return await call(request, key)
    except TooLarge as exc:
        return Answer(413, error(413, str(exc)).body, (("Connection", "close"),))
    except StorageError as exc:
        log.error(kv(event="api_storage_error", path=request.path, error=str(exc)))
        return Answer(503, error(503, "the database is unavailable; try again").body,
                      (("Retry-After", "5"),))  # fmt: skip
    except Exception as exc:
        for kind, status, default_field in INPUT_ERRORS:
            if isinstance(exc, kind):
                return error(status, str(exc), getattr(exc, "field", None) or default_field)
        log.exception(kv(event="api_handler_failed", path=request.path, key=key.key_id))
        return error(500, "internal error")
