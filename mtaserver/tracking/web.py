"""The public tracking endpoint (aiohttp): pixel, click redirect, one-click unsubscribe.

- ``GET /o/{token}.gif``: a 1x1 transparent GIF, ``Cache-Control: no-store``;
- ``GET /c/{token}``: 302 to the URL signed into the token - never to anything else;
- ``GET /u/{token}``: a confirmation page whose form POSTs back (GET never changes state:
  link scanners GET everything);
- ``POST /u/{token}`` with ``List-Unsubscribe=One-Click``: unsubscribe (RFC 8058).
- ``/s/{token}`` and ``/p/{token}``: the double opt-in confirm page and the preferences
  page (:mod:`mtaserver.tracking.preferences`), when contacts are wired.

A token that does not verify, or is used on the wrong endpoint, gets 404 without a
``Location``. HEAD gets the same answer as GET but is never counted. Handlers never wait on
the database for opens and clicks: hits go to the :class:`Recorder`'s buffer. The access
log shows only the first characters of a token.

The endpoint runs on aiohttp's low-level server (``web.Server``): three fixed paths need
no router, middleware or application, and skipping them (and yarl's parsing of the path)
is the difference between serving 0.6 and 0.7+ of what a bare aiohttp application serves
(``bench/tracking_http.py``). Dispatch is on the raw path; a token is base64url, so a
percent-encoded or otherwise odd path simply fails verification and gets 404.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from mtaserver.clock import Clock
from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv
from mtaserver.tracking.bots import Hit
from mtaserver.tracking.preferences import ConsentPages
from mtaserver.tracking.recorder import Recorder
from mtaserver.tracking.tokens import (
    CLICK,
    OPEN,
    UNSUBSCRIBE,
    TokenCodec,
    TokenData,
    TokenError,
    is_trackable_url,
)

log = get_logger("tracking")
access_log = get_logger("tracking.access")

GIF = base64.b64decode(b"R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_NO_STORE = "no-store, max-age=0"
_TOKEN_IN_PATH = re.compile(r"/([ocusp])/([A-Za-z0-9_-]{6})[^/?]*")
_SAFE = "!#$%&'()*+,-./:;=?@[]_~"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow"><title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32em;margin:4em auto;padding:0 1em}}
button{{font:inherit;padding:.5em 1.5em}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""
_CONFIRM = _PAGE.format(
    title="Unsubscribe",
    body='<p>Stop receiving these emails at this address?</p>\n<form method="post" action="">'
    '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
    '<button type="submit">Unsubscribe</button></form>',
)
_DONE = _PAGE.format(title="Unsubscribed", body="<p>You will not receive these emails again.</p>")
_SERVER = {"Server": "mtaserver"}  # not aiohttp's name and version
_MAX_BODY = 16 * 1024  # an RFC 8058 POST is a few dozen bytes
_GET: tuple[str, ...] = ("GET", "HEAD")
_GET_POST: tuple[str, ...] = ("GET", "HEAD", "POST")
_PIXEL_HEADERS = {"Cache-Control": _NO_STORE, **_SERVER}
_REDIRECT_HEADERS = {"Cache-Control": _NO_STORE, "Referrer-Policy": "no-referrer", **_SERVER}
_PAGE_HEADERS = {
    **_SERVER,
    "Cache-Control": _NO_STORE,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def redact_path(path: str) -> str:
    """``/c/AbCdEf…`` instead of the whole token; query strings dropped."""
    return _TOKEN_IN_PATH.sub(lambda m: f"/{m.group(1)}/{m.group(2)}…", path.split("?", 1)[0])


class RedactingAccessLogger(AbstractAccessLogger):
    """One key=value line per request, with tokens shortened to 6 characters."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # Built by hand and handed to the logger without a caller lookup: this runs for
        # every pixel, so it must cost microseconds, not tens of them.
        line = (
            f"event=http method={request.method} {kv(path=redact_path(request.rel_url.raw_path))}"
            f" status={response.status} bytes={response.body_length} ms={time * 1000:.1f}"
        )
        access_log.handle(
            access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, line, (), None)
        )

    @property
    def enabled(self) -> bool:
        return access_log.isEnabledFor(logging.INFO)


@functools.lru_cache(maxsize=16384)
def location_for(url: str) -> str | None:
    """The ``Location`` value for a signed URL: ASCII only, http(s) only, else None.

    Memoized: many recipients click the same campaign link.
    """
    if not is_trackable_url(url):
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        host.encode("ascii")
        netloc = parts.netloc
    except UnicodeEncodeError:
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
        netloc = parts.netloc.replace(host, ascii_host) if host in parts.netloc else ascii_host
    loc = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    loc = quote(loc, safe=_SAFE)
    if not loc.lower().startswith(("http://", "https://")) or loc[len(parts.scheme) + 3 :][:1] in (
        "/",
        "\\",
    ):
        return None
    return loc


class TrackingWeb:
    """Builds the aiohttp application and runs it on the configured listener."""

    def __init__(
        self,
        codec: TokenCodec,
        recorder: Recorder,
        clock: Clock,
        *,
        trusted_proxies: Sequence[Network] = (),
        access_log: bool = False,
        consent: ConsentPages | None = None,
    ) -> None:
        self.codec = codec
        self.consent = consent  # /s/ (double opt-in confirm) and /p/ (preferences)
        self.recorder = recorder
        self.clock = clock
        self.trusted_proxies = tuple(trusted_proxies)
        self.access_log = access_log
        self._runner: web.ServerRunner | None = None
        self.port: int | None = None

    def server(self) -> web.Server:
        """The low-level aiohttp server (a protocol factory) answering every request.

        Called on the running loop; the loop is looked up once here, not per request
        (on Python 3.11 every ``get_running_loop()`` is a ``getpid()`` system call).
        """
        loop = asyncio.get_running_loop()

        def make_request(
            message: Any, payload: Any, protocol: Any, writer: Any, task: Any
        ) -> web.BaseRequest:
            return web.BaseRequest(
                message, payload, protocol, writer, task, loop, client_max_size=_MAX_BODY
            )

        endpoint = self

        class _AccessLog(RedactingAccessLogger):
            # Asked once per connection: a reload switches new connections on or off.
            @property
            def enabled(self) -> bool:
                return endpoint.access_log and super().enabled

        return web.Server(
            self.handle,
            request_factory=make_request,
            access_log_class=_AccessLog,
            access_log=access_log,
        )

    def reconfigure(self, trusted_proxies: Sequence[Network], access_log: bool) -> None:
        """New proxy list and access-log switch (SIGHUP); for new connections."""
        self.trusted_proxies = tuple(trusted_proxies)
        self.access_log = access_log

    async def start(self, host: str, port: int) -> None:
        runner = web.ServerRunner(self.server(), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        self._runner = runner
        addresses = runner.addresses  # the bound sockets' names (port 0 → the real port)
        self.port = int(addresses[0][1]) if addresses else port
        log.info(kv(event="tracking_listening", host=host, port=self.port))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- dispatch ---------------------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Route on the raw path: ``/o/{token}.gif``, ``/c/{token}``, ``/u/{token}``."""
        path, _, query = request.raw_path.partition("?")
        method = request.method
        route: Callable[[web.BaseRequest, str], Awaitable[web.Response]]
        if path.startswith("/o/") and path.endswith(".gif"):
            token, route, allow = path[3:-4], self.pixel, _GET
        elif path.startswith("/c/"):
            token, route, allow = path[3:], self.click, _GET
            if query:  # a tracked link never has a query string: this one is not ours
                return _not_found()
        elif path.startswith("/u/"):
            token, route, allow = path[3:], self.unsubscribe_page, _GET_POST
            if method == "POST":
                route = self.unsubscribe
        elif self.consent is not None and path.startswith(("/s/", "/p/")):
            if method not in _GET_POST:
                return web.Response(status=405, text="method not allowed\n",
                                    headers={"Allow": ", ".join(_GET_POST), **_SERVER})  # fmt: skip
            return await self.consent.handle(request, path, self.client_ip(request))
        else:
            return _not_found()
        if method not in allow:
            return web.Response(status=405, text="method not allowed\n",
                                headers={"Allow": ", ".join(allow), **_SERVER})  # fmt: skip
        return await route(request, token)

    # -- helpers ----------------------------------------------------------------------------
    def client_ip(self, request: web.BaseRequest) -> str:
        """The peer address; behind a trusted proxy, the last untrusted X-Forwarded-For hop."""
        peer = request.remote or ""
        if not self.trusted_proxies or not _in(peer, self.trusted_proxies):
            return peer
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed([h for h in hops if h]):
            if not _in(hop, self.trusted_proxies):
                return hop
        return peer

    def _verify(self, token: str, kind: int) -> TokenData | None:
        try:
            data = self.codec.verify(token)
        except TokenError:
            return None
        return data if data.kind == kind else None

    def _hit(self, request: web.BaseRequest, data: TokenData, type_: str) -> None:
        now = self.clock.now()
        if request.method == "HEAD":
            if type_ == "click":  # link scanners probe links with HEAD before they GET
                self.recorder.head(data.queue_id, data.idx, now)
            return
        # Positional: keyword arguments make a NamedTuple noticeably slower to build.
        self.recorder.hit(
            Hit(type_, data.queue_id, data.idx, now, request.headers.get("User-Agent", ""),
                self.client_ip(request), data.link, data.links, data.url)
        )  # fmt: skip

    # -- handlers ---------------------------------------------------------------------------
    async def pixel(self, request: web.BaseRequest, token: str) -> web.Response:
        data = self._verify(token, OPEN)
        if data is None:
            return _not_found()
        self._hit(request, data, "open")
        return web.Response(
            body=GIF,
            content_type="image/gif",
            headers=_PIXEL_HEADERS,
        )

    async def click(self, request: web.BaseRequest, token: str) -> web.Response:
        data = self._verify(token, CLICK)
        loc = location_for(data.url) if data is not None and data.url else None
        if data is None or loc is None:
            return _not_found()
        self._hit(request, data, "click")
        return web.Response(
            status=302,
            headers={"Location": loc, **_REDIRECT_HEADERS},
        )

    async def unsubscribe_page(self, request: web.BaseRequest, token: str) -> web.Response:
        if self._verify(token, UNSUBSCRIBE) is None:
            return _not_found()
        return web.Response(text=_CONFIRM, content_type="text/html", headers=_PAGE_HEADERS)

    async def unsubscribe(self, request: web.BaseRequest, token: str) -> web.Response:
        data = self._verify(token, UNSUBSCRIBE)
        if data is None:
            return _not_found()
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413, text="request body too large\n", headers=_SERVER)
        except (ValueError, web.HTTPException):
            return web.Response(status=400, text="bad request\n", headers=_SERVER)
        if form.get("List-Unsubscribe") != "One-Click":
            return web.Response(status=400, text="expected List-Unsubscribe=One-Click\n")
        try:
            done = await self.recorder.unsubscribe(
                data.queue_id,
                data.idx,
                request.headers.get("User-Agent", ""),
                self.client_ip(request),
                address=data.address,
                sender_domain=data.sender_domain,
            )
        except StorageError as exc:
            log.error(kv(event="unsubscribe_failed", queue_id=data.queue_id, error=str(exc)))
            return web.Response(status=503, text="try again later\n", headers={"Retry-After": "60"})
        if not done:
            return _not_found()
        return web.Response(text=_DONE, content_type="text/html", headers=_PAGE_HEADERS)


def _not_found() -> web.Response:
    return web.Response(
        status=404, text="not found\n", headers={"Cache-Control": _NO_STORE, **_SERVER}
    )


def _in(ip: str, nets: Sequence[Network]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in n for n in nets)
