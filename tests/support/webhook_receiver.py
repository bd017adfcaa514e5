"""A webhook receiver on 127.0.0.1 that checks signatures the way the README tells users to.

rx = Receiver(secret)
await rx.start()               # or start(port) to bind a chosen free port
rx.decide = lambda ev: 500     # status per delivered JSON event (default 200)
... rx.received (accepted events, in arrival order), rx.attempts (every signed POST)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web


def verify_signature(secret: bytes, headers: Any, body: bytes, tolerance: float = 300) -> bool:
    """The README's verification snippet, verbatim in spirit: HMAC over 'timestamp.body'."""
    timestamp = headers.get("X-Mtaserver-Timestamp", "")
    signature = headers.get("X-Mtaserver-Signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False
    expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body,
                                    hashlib.sha256).hexdigest()  # fmt: skip
    return hmac.compare_digest(expected, signature)


class Receiver:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.arrivals: list[float] = []
        self.decide: Callable[[dict[str, Any]], int] = lambda ev: 200
        self.hang = False  # never answer (a black hole)
        self.open_requests = 0
        self.max_open_requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify_signature(self.secret, request.headers, body):
            self.bad_signatures += 1
            return web.Response(status=401)
        event = json.loads(body)
        assert request.headers["X-Mtaserver-Event-Id"] == str(event["id"])
        self.attempts.append(event)
        self.arrivals.append(time.monotonic())
        self.open_requests += 1
        self.max_open_requests = max(self.max_open_requests, self.open_requests)
        try:
            if self.hang:  # until the client gives up and closes the connection
                while request.transport is not None and not request.transport.is_closing():
                    await asyncio.sleep(0.01)
                return web.Response(status=504)  # nobody is listening any more
            status = self.decide(event)
        finally:
            self.open_requests -= 1
        if 200 <= status < 300:
            self.received.append(event)
        return web.Response(status=status, text="ok")

    async def start(self, port: int = 0) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class ThreadedReceiver:
    """The same receiver in its own thread and loop, for tests driving a real daemon."""

    def __init__(self, secret: bytes, port: int) -> None:
        self.rx = Receiver(secret)
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.rx.start(self._port), self._loop).result(10)
        return self.rx

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.rx.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
