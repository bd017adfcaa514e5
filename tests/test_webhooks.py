"""Webhooks: signed POSTs from a durable outbox, retries, per-message order, restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mtaserver.clock import SystemClock
from mtaserver.config.webhooks import WebhookConfig
from mtaserver.model import Event
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.webhooks import WebhookDispatcher, sign, verify
from tests.support.daemon import Daemon, TestConfig, free_port
from tests.support.mxsink import eventually
from tests.support.webhook_receiver import Receiver, ThreadedReceiver

SECRET = b"webhook-secret-0123456789"


def hook(url: str, **kw: Any) -> WebhookConfig:
    base = WebhookConfig(
        name="test", url=url, events=(), secret=SECRET, timeout=2.0, max_retry_time=60.0,
        retry_interval=0.05, max_retry_interval=0.2, concurrency=4,
    )  # fmt: skip
    return replace(base, **kw)


async def until(cond: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def outbox(db: Database) -> list[tuple[Any, ...]]:
    return await db.read(
        lambda c: c.execute(
            "SELECT event_id, queue_id, state, attempts FROM webhook_outbox ORDER BY id"
        ).fetchall()
    )


class Running:
    def __init__(self, db: Database, hooks: list[WebhookConfig]) -> None:
        self.dispatcher = WebhookDispatcher(db, hooks, SystemClock())
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WebhookDispatcher:
        await self.dispatcher.start()
        self.task = asyncio.create_task(self.dispatcher.run())
        return self.dispatcher

    async def __aexit__(self, *exc: object) -> None:
        await self.dispatcher.drain(1.0)
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def rx() -> AsyncIterator[Receiver]:
    r = await Receiver(SECRET).start()
    yield r
    await r.stop()


def ev(type_: str, qid: str | None, n: int = 0, rcpt: str | None = None) -> Event:
    return Event(type=type_, at=1000.0 + n, queue_id=qid, recipient=rcpt, data=(("n", n),))


def test_signature_helpers_agree_with_the_receiver() -> None:
    body = b'{"id":1}'
    sig = sign(SECRET, 1700000000, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify(SECRET, "1700000000", body, sig)
    assert not verify(SECRET, "1700000001", body, sig)
    assert not verify(b"other-secret-0123456789", "1700000000", body, sig)
    assert not verify(SECRET, "1700000000", body + b" ", sig)


async def test_events_are_posted_signed_and_removed_from_the_outbox(
    db: Database, rx: Receiver
) -> None:
    log = EventLog(db)
    async with Running(db, [hook(rx.url, events=("delivered", "bounced"))]):
        await log.emit(
            ev("accepted", "Q1", 1), ev("delivered", "Q1", 2, "a@x.example"), ev("bounced", "Q2", 3)
        )
        await until(lambda: len(rx.received) == 2)
    assert rx.bad_signatures == 0
    assert [e["type"] for e in rx.received] == ["delivered", "bounced"]
    first = rx.received[0]
    assert first["queue_id"] == "Q1" and first["recipient"] == "a@x.example"
    assert first["data"] == {"n": 2} and first["webhook"] == "test" and first["at"] == 1002.0
    assert await outbox(db) == []  # accepted was never queued: not wanted


async def test_a_tampered_or_wrongly_keyed_request_fails_verification(
    db: Database, rx: Receiver
) -> None:
    """The receiver rejects a webhook configured with another secret (401 → retried)."""
    async with Running(db, [hook(rx.url, secret=b"not-the-receivers-secret")]):
        await EventLog(db).emit(ev("delivered", "Q1"))
        await until(lambda: rx.bad_signatures >= 2)
    assert rx.received == []
    [(_, _, state, attempts)] = await outbox(db)
    assert state == "pending" and attempts >= 2


async def test_retry_after_500(db: Database, rx: Receiver) -> None:
    statuses = [500, 503]
    rx.decide = lambda e: statuses.pop(0) if statuses else 200
    async with Running(db, [hook(rx.url)]):
        await EventLog(db).emit(ev("delivered", "Q1"))
        await until(lambda: len(rx.received) == 1)
    assert len(rx.attempts) == 3
    assert await outbox(db) == []


async def test_retry_while_the_receiver_is_down(db: Database) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    async with Running(db, [hook(url)]):
        await EventLog(db).emit(ev("delivered", "Q1"), ev("bounced", None))
        rows = await eventually(lambda: outbox(db), lambda rs: all(r[3] >= 2 for r in rs), 10)
        assert all(r[2] == "pending" and r[3] >= 2 for r in rows), rows  # refused, retried
        rx = await Receiver(SECRET).start(port)
        try:
            await until(lambda: len(rx.received) == 2)
        finally:
            await rx.stop()
    assert await outbox(db) == []


async def test_order_per_message_while_other_messages_proceed(db: Database, rx: Receiver) -> None:
    """A failing first event of A holds back A's later events, not B's."""
    a_open = asyncio.Event()
    rx.decide = lambda e: 200 if e["queue_id"] != "A" or a_open.is_set() else 500
    async with Running(db, [hook(rx.url, concurrency=8)]):
        await EventLog(db).emit(*[ev(t, q, i) for i, (t, q) in enumerate([
            ("accepted", "A"), ("accepted", "B"), ("deferred", "A"), ("delivered", "B"),
            ("deferred", "A"), ("delivered", "A"), ("accepted", "C"),
        ])])  # fmt: skip
        await until(lambda: len(rx.received) == 3)  # B's two, C's one
        await until(lambda: len([a for a in rx.attempts if a["queue_id"] == "A"]) >= 3)
        # Only A's first event was ever tried: the later ones waited.
        assert {a["data"]["n"] for a in rx.attempts if a["queue_id"] == "A"} == {0}
        only_a = {("A", "pending"), ("A", "waiting")}  # B and C settle right after the receiver

        def states(rs: list[tuple[Any, ...]]) -> set[tuple[str, str]]:
            return {(r[1], r[2]) for r in rs}

        rows = await eventually(lambda: outbox(db), lambda rs: states(rs) == only_a, 10)
        assert states(rows) == only_a
        a_open.set()
        await until(lambda: len(rx.received) == 7)
    by_msg: dict[str, list[int]] = {}
    for e in rx.received:
        by_msg.setdefault(e["queue_id"], []).append(e["data"]["n"])
    assert by_msg == {"A": [0, 2, 4, 5], "B": [1, 3], "C": [6]}
    assert await outbox(db) == []


async def test_given_up_after_max_retry_time_then_the_next_event_goes(
    db: Database, rx: Receiver
) -> None:
    rx.decide = lambda e: 500 if e["data"]["n"] == 0 else 200
    async with Running(db, [hook(rx.url, max_retry_time=0.3)]) as d:
        await EventLog(db).emit(ev("deferred", "A", 0), ev("delivered", "A", 1))
        await until(lambda: len(rx.received) == 1)
        assert rx.received[0]["data"]["n"] == 1
        # the receiver has it; the dispatcher settles it right after
        rows = await eventually(lambda: outbox(db), lambda rs: len(rs) == 1, 10)
        [(_, qid, state, attempts)] = rows
        assert (qid, state) == ("A", "failed") and attempts >= 2
        assert [(b.webhook, b.pending, b.waiting, b.failed) for b in await d.outbox.backlog()] == [
            ("test", 0, 0, 1)
        ]
        # The operator fixed the receiver and retries what failed.
        rx.decide = lambda e: 200
        assert await d.outbox.retry_failed(now=time.time()) == 1
        d._wake.set()
        await until(lambda: len(rx.received) == 2)
    assert await outbox(db) == []


async def test_a_dead_endpoint_holds_at_most_concurrency_requests(
    db: Database, rx: Receiver
) -> None:
    rx.hang = True
    async with Running(db, [hook(rx.url, concurrency=2, timeout=0.3)]):
        await EventLog(db).emit(*[ev("delivered", f"Q{i}", i) for i in range(20)])
        await until(lambda: len(rx.attempts) >= 6)  # several rounds of timeouts
        # Meanwhile the database serves other writers at once.
        started = time.monotonic()
        await EventLog(db).emit(ev("accepted", "OTHER"))
        assert time.monotonic() - started < 1.0
    # With two requests in flight at most, the third can only start once one timed out.
    t = rx.arrivals
    assert t[2] - t[0] >= 0.2 and t[4] - t[0] >= 0.45, [round(x - t[0], 3) for x in t]
    assert rx.received == []


async def test_removing_a_webhook_drops_its_outbox(db: Database, rx: Receiver) -> None:
    d = WebhookDispatcher(db, [hook("http://127.0.0.1:9/hook")], SystemClock())
    await d.start()
    await EventLog(db).emit(ev("delivered", "Q1"))
    assert len(await outbox(db)) == 1
    d2 = WebhookDispatcher(db, [], SystemClock())
    await d2.start()
    assert await outbox(db) == []
    await EventLog(db).emit(ev("delivered", "Q2"))
    assert await outbox(db) == []
    # Without webhooks there is no trigger: event inserts cost what they did before.
    triggers = await db.read(
        lambda c: c.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall()
    )
    assert triggers == []


def test_no_loss_across_a_daemon_restart(tmp_path: Path) -> None:
    """Events written while the receiver is down survive a stop; the next start sends all."""
    port = free_port()
    cfg = TestConfig(tmp_path, tls=False)
    cfg.data["webhooks"] = [
        {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET.decode(),
         "retry_interval": "50ms", "max_retry_interval": "200ms", "events": ["*"]},
    ]  # fmt: skip
    with Daemon(cfg) as d:
        # Another process writes events (as the CLI would); the trigger queues them.
        for i in range(30):
            cfg.query(
                "INSERT INTO events(at, type, queue_id, recipient, data) VALUES (?,?,?,?,?)",
                1000.0 + i, "delivered", f"Q{i % 3}", f"r{i}@x.example", f'{{"n": {i}}}',
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tried = cfg.query("SELECT count(*) FROM webhook_outbox WHERE attempts > 0")[0][0]
            if tried >= 3:  # each message's head was refused at least once
                break
            time.sleep(0.05)
        assert tried >= 3, d.log()
    assert "event=webhook_deferred" in d.log()
    status = d.cli("webhooks", "status")  # the operator's view while it is down
    assert status.returncode == 0, status.stderr
    name, pending, waiting, failed = status.stdout.splitlines()[1].split()
    assert name.endswith("/hook") and (int(pending), int(waiting), int(failed)) == (3, 27, 0)
    with ThreadedReceiver(SECRET, port) as rx, Daemon(cfg) as d2:
        deadline = time.monotonic() + 20
        while len(rx.received) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(rx.received) == 30, d2.log()
        received = list(rx.received)
    assert rx.bad_signatures == 0
    assert sorted(e["data"]["n"] for e in received) == list(range(30))
    for q in ("Q0", "Q1", "Q2"):
        ns = [e["data"]["n"] for e in received if e["queue_id"] == q]
        assert ns == sorted(ns)
    assert cfg.query("SELECT count(*) FROM webhook_outbox") == [(0,)]


def test_webhook_config(tmp_path: Path) -> None:
    from mtaserver.config import parse_config
    from mtaserver.errors import ConfigError

    def parse(entry: str) -> tuple[WebhookConfig, ...]:
        text = f'[server]\ndata_dir = "{tmp_path}"\n[[webhooks]]\n{entry}\n'
        return parse_config(text, tmp_path / "c.toml").webhooks

    secret_file = tmp_path / "hook.secret"
    secret_file.write_text("0123456789abcdef0123\n")
    [h] = parse(f'url = "https://h.example/x"\nsecret_file = "{secret_file}"\n'
                'events = ["delivered", "bounced"]\nmax_retry_time = "2h"\ntimeout = "5s"')  # fmt: skip
    assert (h.name, h.secret, h.events) == ("https://h.example/x", b"0123456789abcdef0123",
                                            ("delivered", "bounced"))  # fmt: skip
    assert (h.max_retry_time, h.timeout, h.concurrency) == (7200.0, 5.0, 4)
    assert (
        parse('url = "http://h/x"\nsecret = "s3cr3t-s3cr3t-s3cr3t"\nevents = ["*"]')[0].events == ()
    )
    for entry, match in [
        (
            'url = "ftp://h/x"\nsecret = "s3cr3t-s3cr3t-s3cr3t"',
            r"webhooks\[0\]\.url: expected an http",
        ),
        ('url = "http://h/x"', r"webhooks\[0\]\.secret: set exactly one"),
        ('url = "http://h/x"\nsecret = "short"', "at least 16"),
        (
            'url = "http://h/x"\nsecret = "s3cr3t-s3cr3t-s3cr3t"\nretries = 3',
            r"retries: unknown key",
        ),
        (
            'url = "http://h/x"\nsecret = "s3cr3t-s3cr3t-s3cr3t"\ntimeout = "soon"',
            "timeout: expected a duration",
        ),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse(entry)
