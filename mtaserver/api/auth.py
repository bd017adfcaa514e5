"""Who is calling: the bearer credential of a request, checked once for every API route.

An API key or (through ``app.bearer``) an OAuth access token. Missing or invalid → 401 with
``WWW-Authenticate``; valid without the route's scope → 403; a token that cannot be checked
now (its issuer's keys unavailable) → 503 with ``Retry-After`` — never accepted.
"""

from __future__ import annotations

from aiohttp import web

from mtaserver.api.deps import ApiDeps, KeyInfo, KeysUnavailable
from mtaserver.api.errors import AUTH_REQUIRED, FORBIDDEN, UNAUTHORIZED, Answer, error, errors
from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv
from mtaserver.sendapi.model import ApiError

log = get_logger("api")

UNAVAILABLE = (
    "The access token cannot be checked now (its issuer's keys are unavailable). Try again."
)


def bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def authenticate(
    deps: ApiDeps, request: web.Request, scope: str
) -> tuple[KeyInfo | None, Answer | None]:
    """The caller's key and None, or the key (if any) and the answer that refuses it."""
    text = bearer(request)
    if text is None:
        return None, error(401, AUTH_REQUIRED)
    try:
        key = await deps.keys.verify(text)
    except (KeysUnavailable, StorageError):  # an issuer, or the database, unreachable
        refused = errors(503, [ApiError(UNAVAILABLE, None, None)])
        return None, Answer(refused.status, refused.body, (("Retry-After", "30"),))
    if key is None:
        log.info(kv(event="api_unauthorized", client_ip=request.remote))
        return None, error(401, UNAUTHORIZED)
    if scope not in key.scopes:
        return key, error(403, FORBIDDEN)
    return key, None
