"""The admin HTTP listener: bearer-token auth, JSON errors, and the aiohttp plumbing.

Every request is authenticated before it is routed, so a caller without a valid token
learns nothing — not which paths exist, not whether a token was revoked or never existed:
all of them get the same ``401 {"error": "unauthorized"}``. ``/metrics`` needs the token too
unless ``[admin] metrics_auth = "none"``.

aiohttp's access log is off: it would log full request lines; we log method, route,
status and the token *name* instead, one line per request at debug level.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mtaserver.errors import MtaError, StorageError
from mtaserver.log import get_logger, kv
from mtaserver.oauth import TokenInvalid, TokenUnavailable, VerifiedToken, looks_like_jwt
from mtaserver.storage.sqlite.tokens import TokenInfo

log = get_logger("admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TOKEN_KEY: web.RequestKey[TokenInfo] = web.RequestKey("token", TokenInfo)
UNAUTHORIZED = {"error": "unauthorized"}
MAX_BODY = 64 * 1024
# OAuth scopes of a JWT bearer: admin.read for reads, admin.write (which includes reading)
# for everything else. Tokens from `mtaserver admin token create` keep full access.
READ_SCOPE, WRITE_SCOPE = "admin.read", "admin.write"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ApiError(Exception):
    """A client error with its HTTP status; the message is safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=dumps)


def unauthorized() -> web.Response:
    resp = json_response(UNAUTHORIZED, 401)
    resp.headers["WWW-Authenticate"] = 'Bearer realm="mtaserver"'
    return resp


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def jwt_principal(
    request: web.Request, text: str, jwt: Callable[[str], Awaitable[VerifiedToken]]
) -> TokenInfo | web.Response:
    """The caller of an OAuth access token, or the answer refusing it (401, 403, 503)."""
    try:
        verified = await jwt(text)
    except TokenUnavailable:
        resp = json_response({"error": "token keys unavailable, try again"}, 503)
        resp.headers["Retry-After"] = "30"
        return resp
    except TokenInvalid as exc:
        log.info(kv(event="admin_unauthorized", method=request.method, client_ip=request.remote,
                    reason=exc.reason))  # fmt: skip
        return unauthorized()
    need = READ_SCOPE if request.method in _SAFE_METHODS else WRITE_SCOPE
    if need not in verified.scopes and WRITE_SCOPE not in verified.scopes:
        log.info(kv(event="admin_forbidden", method=request.method, user=verified.user,
                    issuer=verified.issuer, need=need))  # fmt: skip
        resp = json_response({"error": f"insufficient scope: needs {need}"}, 403)
        resp.headers["WWW-Authenticate"] = (
            f'Bearer realm="mtaserver", error="insufficient_scope", scope="{need}"'
        )
        return resp
    return TokenInfo(id=0, name=f"oauth:{verified.user}", created_at=0.0, last_used_at=None,
                     revoked_at=None)  # fmt: skip


def _unavailable() -> web.Response:
    resp = json_response({"error": "storage unavailable, try again"}, 503)
    resp.headers["Retry-After"] = "30"
    return resp


def build_web_app(
    routes: Callable[[web.Application], None],
    verify: Callable[[str], Awaitable[TokenInfo | None]],
    *,
    open_paths: frozenset[str] = frozenset(),
    monotonic: Callable[[], float],
    jwt: Callable[[str], Awaitable[VerifiedToken]] | None = None,
) -> web.Application:
    """The aiohttp application: auth and error middleware around ``routes``.

    With ``jwt`` (``[oauth]`` issuers), a bearer that is a JWT is checked as an OAuth access
    token and its scopes decide (``admin.read`` / ``admin.write``); other bearers are
    admin tokens as before.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = monotonic()
        token: TokenInfo | None = None
        if request.path not in open_paths:
            text = bearer(request)
            if text and jwt is not None and looks_like_jwt(text):
                principal = await jwt_principal(request, text, jwt)
                if isinstance(principal, web.Response):
                    return principal
                token = principal
            else:
                try:
                    token = await verify(text) if text else None
                except StorageError as exc:  # the database unreachable: the token unchecked
                    log.error(kv(event="admin_storage_error", path=request.path, error=str(exc)))
                    return _unavailable()
            if token is None:
                log.info(kv(event="admin_unauthorized", method=request.method,
                            client_ip=request.remote))  # fmt: skip
                return unauthorized()
            request[TOKEN_KEY] = token
        try:
            resp = await handler(request)
        except ApiError as exc:
            resp = json_response({"error": str(exc)}, exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = "not found" if exc.status == 404 else exc.reason.lower()
            resp = json_response({"error": reason}, exc.status)
            if exc.status == 405:
                resp.headers["Allow"] = exc.headers.get("Allow", "")
        except StorageError as exc:
            log.error(kv(event="admin_storage_error", path=request.path, error=str(exc)))
            resp = _unavailable()
        except MtaError as exc:
            resp = json_response({"error": str(exc)}, 400)
        except Exception:
            log.exception(kv(event="admin_handler_failed", path=request.path))
            resp = json_response({"error": "internal error"}, 500)
        route = request.match_info.route.resource
        log.debug(kv(event="admin_request", method=request.method,
                     route=route.canonical if route is not None else request.path,
                     status=resp.status, token=token.name if token else None,
                     ms=round((monotonic() - started) * 1000, 1)))  # fmt: skip
        return resp

    app = web.Application(middlewares=[middleware], client_max_size=MAX_BODY)
    routes(app)
    return app


class AdminServer:
    """Binds the listener in ``start`` (before READY=1) and stops it in ``stop``."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> None:
        self._app = app
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=self._ssl, shutdown_timeout=5.0)
        await site.start()
        self._runner = runner
        addresses = runner.addresses  # the bound sockets' names (port 0 → the real port)
        if addresses:
            self.port = int(addresses[0][1])
        log.info(kv(event="listening", listener="admin", address=f"{host}:{self.port or port}",
                    tls=self._ssl is not None))  # fmt: skip

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


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
