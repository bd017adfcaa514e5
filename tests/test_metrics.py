"""Metrics: the event tail, scrape-time gauges, hooks; /metrics on a running daemon parses with
the Prometheus text parser and moves as a scripted scenario runs."""

from __future__ import annotations

import asyncio
import smtplib
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mtaserver.config.reader import Reader
from mtaserver.config.shaping import ShapingConfig, parse
from mtaserver.config.webhooks import WebhookConfig
from mtaserver.metrics import OTHER, Metrics
from mtaserver.model import Event, PreparedMessage, PreparedRecipient
from mtaserver.shaper import Shaper
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.outbox import WebhookOutbox
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from tests.support.admin import AdminClient
from tests.support.clock import FakeClock
from tests.support.daemon import Daemon
from tests.test_admin_api import base_url, create_token, emit, enqueue, make_config


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(snap: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return snap.get((name, tuple(sorted(labels.items()))), 0.0)


def message(rcpts: list[str], received_at: float) -> PreparedMessage:
    return PreparedMessage(
        queue_id=new_queue_id(time.time()), sender="a@example.com",
        recipients=tuple(PreparedRecipient(r) for r in rcpts), data=b"x\r\n", user=None,
        client_ip="127.0.0.1", received_at=received_at,
    )  # fmt: skip


async def test_event_tail_and_queue_gauges(tmp_path: Path) -> None:
    db = Database(tmp_path / "m.db")
    await db.open()
    try:
        spool, events = Spool(db), EventLog(db)
        await spool.enqueue(message(["old@before.test"], time.time() - 100))
        metrics = Metrics(Spool(db), EventLog(db), top_destinations=2, clock=time.time)
        db.on_commit.append(metrics.db_committed)
        await metrics.start()  # counting starts here: the earlier message is not "accepted"
        now = time.time()
        for domain, n in (("a.test", 3), ("b.test", 2), ("c.test", 1)):
            await spool.enqueue(message([f"r{i}@{domain}" for i in range(n)], now - 30))
        await events.emit(
            Event("delivered", now, "Q", "r@a.test", (("delay", 3.0),)),
            Event("delivered", now, "Q", "r@a.test", (("delay", 7200.0),)),
            Event("deferred", now, "Q", "r@a.test", (("category", "greylisted"),)),
            Event("bounced", now, "Q", "r@a.test",
                  (("source", "sync"), ("kind", "hard"), ("category", "unknown-recipient"))),
            Event("bounced", now, "Q", "r@a.test",
                  (("source", "async"), ("kind", "soft"), ("category", "mailbox-full"))),
            Event("complaint", now, "Q", "r@a.test"),
            Event("open", now, "Q", "r@a.test", (("machine", True), ("reason", "proxy"))),
            Event("open", now, "Q", "r@a.test"),
            Event("click", now, "Q", "r@a.test", (("url", "https://x.test/"),)),
            Event("unsubscribe", now, "Q", "r@a.test"),
            Event("suppressed", now, "Q", "r@a.test", (("reason", "bounce"),)),
            Event("dsn_sent", now, "Q"),
        )  # fmt: skip
        snap = samples((await metrics.render()).decode())
    finally:
        await db.close()
    assert value(snap, "mtaserver_messages_accepted_total") == 3
    assert value(snap, "mtaserver_recipients_accepted_total") == 6
    assert value(snap, "mtaserver_events_total", type="accepted") == 3
    assert value(snap, "mtaserver_events_total", type="dsn_sent") == 1
    assert value(snap, "mtaserver_deliveries_total", disposition="delivered", category="ok") == 2
    assert value(snap, "mtaserver_deliveries_total", disposition="deferred",
                 category="greylisted") == 1  # fmt: skip
    assert value(snap, "mtaserver_deliveries_total", disposition="bounced",
                 category="unknown-recipient") == 1  # fmt: skip
    # An async bounce is a bounce, not a delivery attempt.
    assert value(snap, "mtaserver_bounces_total", source="async", kind="soft",
                 category="mailbox-full") == 1  # fmt: skip
    assert value(snap, "mtaserver_delivery_delay_seconds_count") == 2
    assert value(snap, "mtaserver_delivery_delay_seconds_bucket", le="5.0") == 1
    assert value(snap, "mtaserver_delivery_delay_seconds_sum") == 7203.0
    assert value(snap, "mtaserver_complaints_total") == 1
    assert value(snap, "mtaserver_tracking_events_total", type="open", machine="true") == 1
    assert value(snap, "mtaserver_tracking_events_total", type="open", machine="false") == 1
    assert value(snap, "mtaserver_tracking_events_total", type="click", machine="false") == 1
    assert value(snap, "mtaserver_tracking_events_total", type="unsubscribe",
                 machine="false") == 1  # fmt: skip
    assert value(snap, "mtaserver_suppressed_recipients_total", action="dropped",
                 reason="bounce") == 1  # fmt: skip
    # Queue depth counts every waiting recipient, including the one queued before start.
    assert value(snap, "mtaserver_queue_recipients", state="queued") == 7
    assert value(snap, "mtaserver_queue_recipients", state="held") == 0
    assert value(snap, "mtaserver_queue_destination_recipients", domain="a.test") == 3
    assert value(snap, "mtaserver_queue_destination_recipients", domain="b.test") == 2
    assert value(snap, "mtaserver_queue_destination_recipients", domain=OTHER) == 2
    assert value(snap, "mtaserver_queue_oldest_age_seconds") >= 100
    assert value(snap, "mtaserver_db_commit_seconds_count") >= 4
    assert "mtaserver_webhook_backlog" not in {k[0] for k in snap}  # no outbox wired


async def test_webhook_backlog_is_read_from_the_outbox(tmp_path: Path) -> None:
    db = Database(tmp_path / "m.db")
    await db.open()
    try:
        outbox = WebhookOutbox(db)
        hooks = [WebhookConfig("crm", "https://crm.test/h", ("bounced",), b"s" * 16),
                 WebhookConfig("all", "https://all.test/h", (), b"s" * 16)]  # fmt: skip
        await outbox.sync(hooks)
        metrics = Metrics(Spool(db), EventLog(db))
        metrics.webhooks = outbox
        await EventLog(db).emit(
            Event("delivered", 1.0, "Q1", "a@x.test"),
            Event("bounced", 1.0, "Q1", "a@x.test"),
            Event("bounced", 1.0, "Q2", "b@x.test"),
        )
        snap = samples((await metrics.render()).decode())
    finally:
        await db.close()
    assert value(snap, "mtaserver_webhook_backlog", webhook="all") == 3
    assert value(snap, "mtaserver_webhook_backlog", webhook="crm") == 2
    assert value(snap, "mtaserver_webhook_failed", webhook="crm") == 0


async def test_counting_resumes_where_it_stopped(tmp_path: Path) -> None:
    """Each event is counted once, however the scrapes and periodic tails interleave."""
    db = Database(tmp_path / "m.db")
    await db.open()
    try:
        events = EventLog(db)
        metrics = Metrics(Spool(db), EventLog(db))
        await metrics.start()
        total = 0
        for batch in (1, 7, 0, 3):
            await events.emit(*(Event("open", 1.0, "Q") for _ in range(batch)))
            total += batch
            await asyncio.gather(metrics.tail(), metrics.refresh(), metrics.tail())
            got = metrics.registry.get_sample_value(
                "mtaserver_tracking_events_total", {"type": "open", "machine": "false"}
            )
            assert (got or 0) == total
    finally:
        await db.close()


def test_shaping_state_is_read_from_the_shaper() -> None:
    clock = FakeClock()
    cfg = parse(Reader({"shaping": {"default": {"max_connections": 4}, "slow.test": {
        "max_rate": "60/min"}}}, "config.toml").table("shaping"))  # fmt: skip
    assert isinstance(cfg, ShapingConfig)
    shaper = Shaper(cfg, clock)
    assert shaper.acquire("busy.test") is None
    assert shaper.acquire("busy.test") is None
    assert shaper.acquire("slow.test") is None
    shaper.suspend("down.test", clock.now() + 300, "dead-destination")
    metrics = Metrics(_NoDb(), _NoDb(), clock=clock.now)
    metrics.shaper = shaper
    snap = samples(_expose(metrics))
    assert value(snap, "mtaserver_shaping_connections_total") == 3
    assert value(snap, "mtaserver_shaping_connections", destination="busy.test") == 2
    assert value(snap, "mtaserver_shaping_suspended", destination="down.test") == 1
    assert value(snap, "mtaserver_shaping_suspended", destination="busy.test") == 0
    assert value(snap, "mtaserver_shaping_suspended_seconds", destination="down.test") == 300
    assert value(snap, "mtaserver_shaping_rate", destination="slow.test") == 1.0
    assert ("mtaserver_shaping_rate", (("destination", "busy.test"),)) not in snap  # unlimited


def test_smtp_and_attempt_hooks() -> None:
    metrics = Metrics(_NoDb(), _NoDb())
    metrics.session_started("submission")
    metrics.session_started("submission")
    metrics.auth_failed("submission-tls")
    metrics.attempt_finished(0.3)
    snap = samples(_expose(metrics))
    assert value(snap, "mtaserver_smtp_sessions_total", listener="submission") == 2
    assert value(snap, "mtaserver_smtp_auth_failures_total", listener="submission-tls") == 1
    assert value(snap, "mtaserver_delivery_attempt_seconds_bucket", le="0.5") == 1


def test_two_instances_share_nothing() -> None:
    a, b = Metrics(_NoDb(), _NoDb()), Metrics(_NoDb(), _NoDb())
    a.session_started("x")
    assert b.registry.get_sample_value("mtaserver_smtp_sessions_total", {"listener": "x"}) is None


class _NoDb:
    async def read(self, fn: object) -> object:
        raise AssertionError("not used")


def _expose(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


# -- against the daemon ---------------------------------------------------------------------------
def test_metrics_endpoint_moves_with_a_scenario(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    with Daemon(cfg) as d:
        api = AdminClient(base_url(cfg), create_token(d, "prometheus"))

        def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            r = api.get("/metrics")
            assert r.status == 200
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            return samples(r.text)

        before = scrape()
        assert value(before, "mtaserver_build_info", version=_version()) == 1
        # One message through the real submission listener (trusted, plaintext) ...
        host, port = cfg.address("submission", "listen_plain")
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            smtp.sendmail("app@example.com", ["x@three.test"],
                          b"From: app@example.com\r\nSubject: m\r\n\r\nbody\r\n")  # fmt: skip
        # ... and two held back (received "later"), queued through the spool directly.
        ids = enqueue(
            cfg,
            ("a@example.com", ["r1@one.test", "r2@one.test"]),
            ("a@example.com", ["r3@two.test"]),
        )
        after = scrape()
        assert value(after, "mtaserver_messages_accepted_total") - value(
            before, "mtaserver_messages_accepted_total") == 3  # fmt: skip
        assert value(after, "mtaserver_recipients_accepted_total") - value(
            before, "mtaserver_recipients_accepted_total") == 4  # fmt: skip
        assert value(after, "mtaserver_smtp_sessions_total", listener="plain") == 1
        assert value(after, "mtaserver_queue_recipients", state="queued") + value(
            after, "mtaserver_queue_recipients", state="leased") == 4  # fmt: skip
        assert value(after, "mtaserver_queue_destination_recipients", domain="one.test") == 2

        api.ok("POST", f"/api/v1/queue/{ids[0]}/hold")
        now = time.time()
        emit(cfg,
             Event("delivered", now, ids[1], "r3@two.test", (("delay", 0.5),)),
             Event("open", now, ids[1], "r3@two.test"))  # fmt: skip
        later = scrape()
        assert value(later, "mtaserver_queue_recipients", state="held") == 2
        # The hold went through the daemon's own writer: one more commit observed (a group
        # commit on SQLite, the hold's transaction on PostgreSQL).
        assert value(later, "mtaserver_db_commit_seconds_count") > value(
            after, "mtaserver_db_commit_seconds_count")  # fmt: skip
        assert value(later, "mtaserver_deliveries_total", disposition="delivered",
                     category="ok") == 1  # fmt: skip
        assert value(later, "mtaserver_delivery_delay_seconds_count") == 1
        assert value(later, "mtaserver_tracking_events_total", type="open", machine="false") == 1

        # Released, the message is due: the real scheduler tries it against a relay port
        # nobody listens on; the attempt and the deferrals show up.
        api.ok("POST", f"/api/v1/queue/{ids[0]}/release")
        deadline = time.monotonic() + 30
        while True:
            snap = scrape()
            deferred = sum(v for (name, labels), v in snap.items()
                           if name == "mtaserver_deliveries_total"
                           and ("disposition", "deferred") in labels)  # fmt: skip
            if deferred >= 3 and value(snap, "mtaserver_delivery_attempt_seconds_count") >= 1:
                break
            assert time.monotonic() < deadline, f"no deferral seen:\n{d.log()[-3000:]}"
            time.sleep(0.1)
        assert value(snap, "mtaserver_queue_recipients", state="held") == 0
        assert ("mtaserver_shaping_connections_total", ()) in snap  # the daemon's shaper


def test_metrics_without_token_when_configured(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, metrics_auth="none")
    with Daemon(cfg) as d:
        api = AdminClient(base_url(cfg), None)
        r = api.get("/metrics")
        assert r.status == 200 and "mtaserver_queue_recipients" in r.text
        denied = api.get("/api/v1/queue")
        assert denied.status == 401
        assert api.get("/api/v1/queue", token=create_token(d, "t")).status == 200


def test_suppressed_recipients_count_rejected_and_dropped_apart(tmp_path: Path) -> None:
    """A suppressed RCPT refused with 550 counts as action="rejected"; after a SIGHUP to
    accept-and-drop, the same address accepted and dropped counts as action="dropped"."""
    cfg = make_config(tmp_path, metrics_auth="none")
    cfg.set("inbound.suppression", at_rcpt="reject")
    name = "mtaserver_suppressed_recipients_total"
    host, port = cfg.address("submission", "listen_plain")
    body = b"From: app@example.com\r\nSubject: m\r\n\r\nbody\r\n"
    with Daemon(cfg) as d:
        api = AdminClient(base_url(cfg), None)
        added = d.cli("suppression", "add", "gone@dead.test", "--reason", "manual")
        assert added.returncode == 0, added.stderr
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("app@example.com")
            assert smtp.rcpt("gone@dead.test")[0] == 550
            assert smtp.rcpt("ok@live.test")[0] == 250
            assert smtp.data(body)[0] == 250
        snap = samples(api.get("/metrics").text)
        assert value(snap, name, action="rejected", reason="manual") == 1
        assert value(snap, name, action="dropped", reason="manual") == 0

        cfg.set("inbound.suppression", at_rcpt="accept-and-drop")
        cfg.write()
        d.reload()
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            smtp.sendmail("app@example.com", ["gone@dead.test", "ok@live.test"], body)
        snap = samples(api.get("/metrics").text)
        assert value(snap, name, action="dropped", reason="manual") == 1
        assert value(snap, name, action="rejected", reason="manual") == 1


def _version() -> str:
    from mtaserver import __version__

    return __version__
