"""The HTTP send API listener: API-key auth, scopes, bounded bodies, SendGrid's errors.

Every request is authenticated before it is routed (``Authorization: Bearer KEY``); a
missing, unknown or revoked key gets 401, a key without the endpoint's scope 403. Bodies
are read by hand, not through aiohttp's ``client_max_size``: an oversized body is drained
(up to twice the limit, so the client reads the 413 instead of a reset connection) and
answered with SendGrid's 413. aiohttp's access log stays off (it would log keys in query
strings); one line per request is logged at debug level with the key's id.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from mtaserver.api.auth import authenticate
from mtaserver.api.batches import BatchApi
from mtaserver.api.campaigns import add_campaign_routes
from mtaserver.api.contacts import add_contact_routes
from mtaserver.api.deps import ApiDeps, KeyInfo
from mtaserver.api.errors import (
    Answer,
    errors_body,
)
from mtaserver.api.events import add_event_routes
from mtaserver.api.segments import add_segment_routes
from mtaserver.api.send import MailSend
from mtaserver.api.v1 import respond
from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv
from mtaserver.sendapi import too_large
from mtaserver.sendapi.model import ApiError

log = get_logger("api")

SMALL_BODY: Final = 64 * 1024  # batch endpoints
Route = Callable[[web.Request, KeyInfo, bytes], Awaitable[Answer]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than ``limit`` (drained up to twice the limit)."""
    if request.content_length is not None and request.content_length > 2 * limit + (1 << 20):
        return None  # not worth draining: the connection is closed after the answer
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        total += len(chunk)
        if total <= limit:
            chunks.append(chunk)
        elif total > 2 * limit + (1 << 20):
            return None
        else:
            chunks.clear()
    return None if total > limit else b"".join(chunks)


def _tls(request: web.Request) -> str | None:
    obj = request.transport.get_extra_info("ssl_object") if request.transport else None
    return obj.version() if isinstance(obj, ssl.SSLObject) else None


def build_api_app(deps: ApiDeps) -> web.Application:
    send = MailSend(deps)
    batches = BatchApi(deps)

    def route(
        scope: str, limit: Callable[[], int], fn: Route
    ) -> Callable[..., Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            started = deps.clock.monotonic()
            key, answer = await authenticate(deps, request, scope)
            if answer is None:
                assert key is not None
                body = await read_body(request, limit())
                if body is None:
                    answer = Answer(413, _too_large_body(), (("Connection", "close"),))
                else:
                    answer = await _guarded(request, fn, key, body)
            resp = respond(answer)
            log.debug(kv(event="api_request", method=request.method,
                         route=request.match_info.route.resource.canonical
                         if request.match_info.route.resource else request.path,
                         status=answer.status, key=key.key_id if key else None,
                         ms=round((deps.clock.monotonic() - started) * 1000, 1)))  # fmt: skip
            return resp

        return handler

    def big() -> int:
        return deps.limits().max_total_bytes

    def small() -> int:
        return SMALL_BODY

    async def mail_send(r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        return await send.handle(key, body, r.headers.get("Idempotency-Key"),
                                 r.remote or "", _tls(r))  # fmt: skip

    async def batch_create(r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        return await batches.create(key)

    async def batch_get(r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        return await batches.validate(key, r.match_info["batch_id"])

    async def sched_create(r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        return await batches.set_status(key, body, None, created=True)

    async def sched_list(r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        return await batches.list(key, r.match_info.get("batch_id"))

    async def sched_patch(r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        return await batches.set_status(key, body, r.match_info["batch_id"], created=False)

    async def sched_delete(r: web.Request, key: KeyInfo, body: bytes) -> Answer:
        return await batches.delete(key, r.match_info["batch_id"])

    app = web.Application(client_max_size=SMALL_BODY)
    s = "user.scheduled_sends."
    app.router.add_post("/v3/mail/send", route("mail.send", big, mail_send))
    app.router.add_post("/v3/mail/batch", route("mail.batch.create", small, batch_create))
    app.router.add_get("/v3/mail/batch/{batch_id}", route("mail.batch.read", small, batch_get))
    app.router.add_post("/v3/user/scheduled_sends", route(s + "create", small, sched_create))
    app.router.add_get("/v3/user/scheduled_sends", route(s + "read", small, sched_list))
    app.router.add_get("/v3/user/scheduled_sends/{batch_id}", route(s + "read", small, sched_list))
    app.router.add_patch(
        "/v3/user/scheduled_sends/{batch_id}", route(s + "update", small, sched_patch)
    )
    app.router.add_delete(
        "/v3/user/scheduled_sends/{batch_id}", route(s + "delete", small, sched_delete)
    )
    add_contact_routes(app, deps)
    add_event_routes(app, deps)
    add_segment_routes(app, deps)
    add_campaign_routes(app, deps)
    return app


def _too_large_body() -> bytes:
    return errors_body(too_large().errors)


async def _guarded(request: web.Request, fn: Route, key: KeyInfo, body: bytes) -> Answer:
    try:
        return await fn(request, key, body)
    except StorageError as exc:
        log.error(kv(event="api_storage_error", path=request.path, error=str(exc)))
        return Answer(
            503,
            _errors([ApiError("The message could not be stored; nothing was queued. "
                              "Try again.", None, None)]),
            (("Retry-After", "5"),),
        )  # fmt: skip
    except Exception:
        log.exception(kv(event="api_handler_failed", path=request.path, key=key.key_id))
        return Answer(500, _errors([ApiError("internal error; nothing was queued", None, None)]))


def _errors(errs: list[ApiError]) -> bytes:
    return errors_body(errs)


class ApiServer:
    """Binds the listener in ``start`` (before READY=1) and stops it in ``stop``."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> None:
        self._app = app
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        runner = web.AppRunner(
            self._app, access_log=None, handle_signals=False, shutdown_timeout=10.0
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=self._ssl)
        await site.start()
        self._runner = runner
        if runner.addresses:
            self.port = int(runner.addresses[0][1])
        log.info(kv(event="listening", listener="api", address=f"{host}:{self.port or port}",
                    tls=self._ssl is not None))  # fmt: skip

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
