"""What SendGrid's format costs against the native webhook format, in the same run.

    .venv/bin/python -m bench.webhook_sendgrid [N]

N ``delivered`` events (N/20 messages, each sent through the send API: an ``api_message``
event with categories and custom args) are POSTed to a local aiohttp receiver, once by a
native webhook (one HMAC-signed event per POST, concurrency 16) and once by a SendGrid-format
webhook (arrays of up to 100 events, ECDSA-signed, each event joined with its message).
Reported: events/s of each and the ratio sendgrid/native.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from mtaserver.clock import SystemClock
from mtaserver.config.webhooks import WebhookConfig
from mtaserver.model import Event, PreparedMessage, PreparedRecipient
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.queue import Spool
from mtaserver.webhooks import WebhookDispatcher
from mtaserver.webhooks import sendgrid as sg

PER_MESSAGE = 20


async def fill(db: Database, n: int) -> list[Event]:
    """N/20 messages of 20 recipients each, and one delivered event per recipient."""
    spool = Spool(db)
    now = time.time()
    events: list[Event] = []
    for m in range(max(1, n // PER_MESSAGE)):
        qid = f"Q{m:08d}"
        rcpts = [f"r{i}@dest.test" for i in range(PER_MESSAGE)]
        api = Event("api_message", now, qid, None, (
            ("x_message_id", "XMSG"), ("categories", json.dumps(["news"])),
            ("custom_args", json.dumps({"user_id": str(m)})), ("message_id", f"{m}@x.test"),
        ))  # fmt: skip
        to = tuple(PreparedRecipient(r) for r in rcpts)
        msg = PreparedMessage(qid, "app@example.com", to, b"x\r\n", "app", "127.0.0.1", now,
                              message_id=f"{m}@x.test")  # fmt: skip
        await spool.enqueue(msg, [api])
        events += [Event("delivered", now, qid, r, (("reply", "250 ok"),)) for r in rcpts]
    return events[:n]


async def run(hook: WebhookConfig, n: int, d: Path) -> float:
    got = 0
    done = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        nonlocal got
        body = await request.read()
        got += len(json.loads(body)) if hook.format == "sendgrid" else 1
        if got >= n:
            done.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook = replace(hook, url=f"http://127.0.0.1:{port}/")
    db = Database(d / f"{hook.name}.db")
    await db.open()
    events = await fill(db, n)
    disp = WebhookDispatcher(db, [hook], SystemClock())
    await disp.start()
    task = asyncio.create_task(disp.run())
    t0 = time.perf_counter()
    await EventLog(db).emit_many(events)
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - t0
    await disp.drain(5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await db.close()
    await runner.cleanup()
    return n / elapsed


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        key = d / "sg.pem"
        sg.write_key(key, sg.generate_key())
        url = "http://127.0.0.1:9/"  # replaced by the receiver's own port
        native = WebhookConfig("native", url, ("delivered",), b"s" * 32, concurrency=16)
        sendgrid = WebhookConfig("sendgrid", url, ("delivered",), b"", concurrency=16,
                                 format="sendgrid", signing_key=key, batch_size=100)  # fmt: skip
        base = await run(native, n, d)
        sg_rate = await run(sendgrid, n, d)
        print(f"webhooks: {n} delivered events to a local receiver: native {base:.0f} "
              f"events/s, sendgrid (batch 100, ECDSA) {sg_rate:.0f} events/s "
              f"(x{sg_rate / base:.2f})")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10000))
