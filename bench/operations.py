"""What the operations features cost, each against a baseline measured in the same run.

    .venv/bin/python -m bench.operations [N]

1. secure_delete: enqueue N messages (20 KB), then record them delivered (bodies dropped),
   with PRAGMA secure_delete OFF (baseline) and ON (what mtaserver runs).
2. encryption: enqueue + claim N messages with the identity codec vs AES-GCM.
3. webhooks: 10N event inserts without / with a webhook (the outbox trigger); N events
   POSTed to a local receiver, events/s.
4. erase: one address among N messages / 3N events; seconds.
5. backup: copy of the resulting database; seconds and MB/s.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from mtaserver import privacy
from mtaserver.clock import SystemClock
from mtaserver.config.webhooks import WebhookConfig
from mtaserver.crypto import AesGcmCodec, Keyring
from mtaserver.model import (
    Event,
    PreparedMessage,
    PreparedRecipient,
    RecipientState,
    RecipientUpdate,
)
from mtaserver.storage.sqlite import db as dbmod
from mtaserver.storage.sqlite.backup import backup
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.outbox import WebhookOutbox
from mtaserver.storage.sqlite.privacy import SqlitePrivacy
from mtaserver.storage.sqlite.queue import BodyCodec, IdentityCodec, Spool
from mtaserver.webhooks import WebhookDispatcher

BODY = b"From: a@example.com\r\nTo: r@x.example\r\nSubject: s\r\n\r\n" + b"y" * 20000


def msg(i: int, rcpt: str = "r@x.example") -> PreparedMessage:
    return PreparedMessage(f"Q{i:08d}", "a@example.com", (PreparedRecipient(rcpt),), BODY,
                           None, "127.0.0.1", time.time())  # fmt: skip


async def enqueue_all(spool: Spool, n: int, rcpt: str = "r@x.example") -> None:
    for start in range(0, n, 100):
        await asyncio.gather(
            *(spool.enqueue(msg(i, rcpt)) for i in range(start, min(n, start + 100)))
        )


async def secure_delete(n: int, on: bool, d: Path) -> tuple[float, float]:
    original = dbmod.configure

    def configure(conn):  # type: ignore[no-untyped-def]
        original(conn)
        conn.execute(f"PRAGMA secure_delete={'ON' if on else 'OFF'}")

    dbmod.configure = configure
    try:
        db = Database(d / f"sd{int(on)}.db")
        await db.open()
        spool = Spool(db)
        t0 = time.perf_counter()
        await enqueue_all(spool, n)
        t1 = time.perf_counter()
        jobs = await spool.claim_due(time.time() + 1, n, 60)
        t2 = time.perf_counter()
        for start in range(0, len(jobs), 100):
            await asyncio.gather(*(
                spool.record([RecipientUpdate(j.queue_id, 0, RecipientState.DELIVERED, "250")])
                for j in jobs[start:start + 100]
            ))  # fmt: skip
        t3 = time.perf_counter()
        await db.close()
        return t1 - t0, t3 - t2
    finally:
        dbmod.configure = original


async def codec_cost(n: int, codec: BodyCodec, d: Path, name: str) -> float:
    db = Database(d / f"codec-{name}.db")
    await db.open()
    spool = Spool(db, codec)
    t0 = time.perf_counter()
    await enqueue_all(spool, n)
    jobs = await spool.claim_due(time.time() + 1, n, 60)
    assert len(jobs) == n and jobs[0].data == BODY
    elapsed = time.perf_counter() - t0
    await db.close()
    return elapsed


async def webhooks(n: int, d: Path) -> float:
    got = 0
    done = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        nonlocal got
        await request.read()
        got += 1
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
    db = Database(d / "hooks.db")
    await db.open()
    hook = WebhookConfig("b", f"http://127.0.0.1:{port}/", (), b"s" * 32, concurrency=16)
    disp = WebhookDispatcher(db, [hook], SystemClock())
    await disp.start()
    task = asyncio.create_task(disp.run())
    t0 = time.perf_counter()
    await EventLog(db).emit_many([Event("delivered", time.time(), f"Q{i % 500}") for i in range(n)])
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - t0
    await disp.drain(5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await db.close()
    await runner.cleanup()
    return n / elapsed


async def event_inserts(n: int, d: Path, with_webhook: bool) -> float:
    """Seconds to write 10 x n events, with the outbox trigger (one webhook) or without."""
    db = Database(d / f"events{int(with_webhook)}.db")
    await db.open()
    hooks = [WebhookConfig("b", "http://127.0.0.1:9/", (), b"s" * 32)] if with_webhook else []
    await WebhookOutbox(db).sync(hooks)
    log = EventLog(db)
    t0 = time.perf_counter()
    for start in range(0, 10 * n, 1000):
        await log.emit_many([Event("delivered", time.time(), f"Q{i % 500}", "r@x.example")
                             for i in range(start, start + 1000)])  # fmt: skip
    elapsed = time.perf_counter() - t0
    await db.close()
    return elapsed


async def erase_and_backup(n: int, d: Path) -> tuple[float, float, float]:
    db = Database(d / "erase.db")
    await db.open()
    spool = Spool(db)
    await enqueue_all(spool, n)
    await EventLog(db).emit_many(
        [Event("open", time.time(), f"Q{i % n:08d}", "r@x.example", (("ip", "1"),))
         for i in range(2 * n)]
    )  # fmt: skip
    await spool.enqueue(msg(n + 1, "bob@example.net"))
    t0 = time.perf_counter()
    r = await privacy.erase(SqlitePrivacy(db), "bob@example.net")
    t_erase = time.perf_counter() - t0
    assert r.recipients == 1
    b = await backup(db.path, d / "copy.db")
    await db.close()
    return t_erase, b.seconds, b.size / 1e6 / max(b.seconds, 1e-9)


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        off = await secure_delete(n, False, d)
        on = await secure_delete(n, True, d)
        print(f"secure_delete: record(drop bodies) {n} x 20KB: off {off[1]:.2f}s, on {on[1]:.2f}s "
              f"(x{on[1] / off[1]:.2f}); enqueue off {off[0]:.2f}s on {on[0]:.2f}s")  # fmt: skip
        plain = await codec_cost(n, IdentityCodec(), d, "plain")
        aes = await codec_cost(n, AesGcmCodec(Keyring((("k", b"k" * 32),), "k")), d, "aes")
        print(f"encryption: enqueue+claim {n} x 20KB: identity {plain:.2f}s, "
              f"AES-GCM {aes:.2f}s (x{aes / plain:.2f})")  # fmt: skip
        bare = await event_inserts(n, d, False)
        hooked = await event_inserts(n, d, True)
        print(f"events: {10 * n} inserts without webhooks {bare:.2f}s, with one webhook "
              f"(outbox trigger) {hooked:.2f}s (x{hooked / bare:.2f})")  # fmt: skip
        rate = await webhooks(n, d)
        print(f"webhooks: {n} events to a local receiver: {rate:.0f} events/s")
        t_erase, t_backup, mbps = await erase_and_backup(n, d)
        print(f"erase: one address among {n} messages / {2 * n} events: {t_erase:.2f}s; "
              f"backup {t_backup:.2f}s ({mbps:.0f} MB/s)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
