"""Delivery against a remote MX that misbehaves in the middle of a transaction.

The remote is ``tests/support/badmx.BadMx`` (a raw asyncio SMTP server on loopback) and
DNS is the test DNS server. Each case checks three things: the outcome (deferred — never
delivered, never bounced), that the broken connection is not kept for reuse, and that the
next attempt delivers every recipient exactly once (what the server accepted).
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from mtaserver.clock import SystemClock
from mtaserver.delivery import DeliveryAgent
from mtaserver.model import DeliveryReport, Disposition, PreparedMessage, PreparedRecipient
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.verp import Verp
from tests import test_delivery, test_scheduler_e2e
from tests.support.badmx import BadMx, Fault
from tests.support.daemon import Daemon, TestConfig
from tests.support.dnsserver import DnsServer
from tests.support.mxsink import eventually, wait_for
from tests.test_delivery import job, policy

# the fixtures of tests/test_delivery.py (FakeClock, DnsServer, DeliveryAgent factory)
clock = test_delivery.clock
dns_server = test_delivery.dns_server
make_agent = test_delivery.make_agent
# and those of tests/test_scheduler_e2e.py (a Scheduler on the real spool and agent)
dns = test_scheduler_e2e.dns
run_scheduler = test_scheduler_e2e.run_scheduler

RCPTS = ("b", "c")
ADDRESSES = ["b@dest.test", "c@dest.test"]


def _route(dns: DnsServer) -> None:
    dns.add("dest.test", "MX", "10 mx.dest.test.")
    dns.add("mx.dest.test", "A", "127.0.0.1")


def _deferred(report: DeliveryReport) -> None:
    assert [r.disposition for r in report.results] == [Disposition.DEFERRED] * len(report.results)
    assert all(400 <= r.reply.code < 500 for r in report.results), report
    assert all(r.reply.enhanced and r.reply.enhanced[0] == "4" for r in report.results)


async def _failed_attempt(
    make_agent: type[DeliveryAgent], mx: BadMx
) -> tuple[DeliveryAgent, DeliveryReport]:
    """One attempt against the misbehaving ``mx``: all deferred, the connection closed."""
    agent = make_agent()
    report = await agent.deliver(job(rcpts=RCPTS), policy(mx.port))
    _deferred(report)
    assert agent.idle_sessions == 0  # not kept for reuse
    await wait_for(lambda: mx.open_connections == 0)
    assert mx.accepted == []
    return agent, report


async def _retry_delivers_once(agent: DeliveryAgent, mx: BadMx, **kw: float) -> None:
    """The next attempt (the remote now behaves) delivers everyone exactly once."""
    report = await agent.deliver(job(rcpts=RCPTS), policy(mx.port, **kw))
    assert [r.disposition for r in report.results] == [Disposition.DELIVERED] * 2
    assert sorted(mx.delivered_rcpts) == ADDRESSES


@pytest.mark.parametrize(
    ("stage", "timeouts"),
    [
        ("dot", {"command_timeout": 5.0, "data_timeout": 0.5}),
        ("data", {"command_timeout": 5.0, "data_timeout": 0.5}),
        ("rcpt", {"command_timeout": 0.5, "data_timeout": 5.0}),
        ("mail", {"command_timeout": 0.5, "data_timeout": 5.0}),
    ],
)
async def test_no_reply_defers_after_the_timeout_of_that_stage(
    dns_server: DnsServer, make_agent: type[DeliveryAgent], stage: str, timeouts: dict[str, float]
) -> None:
    """Above all the final dot: the remote has the whole message and says nothing."""
    _route(dns_server)
    async with BadMx(faults=[(stage, "hang")]) as mx:
        agent = make_agent()
        loop = asyncio.get_running_loop()
        started = loop.time()
        report = await agent.deliver(job(rcpts=RCPTS), policy(mx.port, **timeouts))
        waited = loop.time() - started
        _deferred(report)
        assert 0.5 <= waited < 3.0, waited  # that stage's timeout, not the other one
        assert {(r.reply.enhanced, r.reply.text) for r in report.results} == {
            ("4.4.2", f"timed out talking to mx.dest.test [127.0.0.1]:{mx.port}")
        }
        assert agent.idle_sessions == 0  # not returned to the pool
        await wait_for(lambda: mx.open_connections == 0)  # and closed
        assert mx.accepted == []
        assert len(mx.unanswered) == (stage == "dot")
        await _retry_delivers_once(agent, mx, **timeouts)
        assert mx.connections == 2


@pytest.mark.parametrize(
    "fault",
    [("body", "drop"), ("body", "reset"), ("rcpt", "ok+drop"), ("rcpt", "drop")],
    ids=["fin-mid-data", "rst-mid-data", "close-after-rcpt-reply", "close-instead-of-rcpt"],
)
async def test_connection_lost_mid_transaction_defers_then_delivers_once(
    dns_server: DnsServer, make_agent: type[DeliveryAgent], fault: Fault
) -> None:
    _route(dns_server)
    async with BadMx(faults=[fault]) as mx:
        agent, report = await _failed_attempt(make_agent, mx)
        assert {r.reply.enhanced for r in report.results} == {"4.4.2"}
        assert all("connection to mx.dest.test" in r.reply.text for r in report.results)
        assert mx.unanswered == []
        await _retry_delivers_once(agent, mx)


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data", "dot"])
async def test_421_in_a_pooled_connections_second_message(
    dns_server: DnsServer, make_agent: type[DeliveryAgent], stage: str
) -> None:
    _route(dns_server)
    async with BadMx(faults=[None, (stage, "421 4.3.2 shutting down")]) as mx:
        agent = make_agent()
        first = await agent.deliver(job(queue_id="q1"), policy(mx.port))
        assert first.results[0].disposition is Disposition.DELIVERED
        assert agent.idle_sessions == 1
        second = await agent.deliver(job(queue_id="q2", rcpts=RCPTS), policy(mx.port))
        _deferred(second)
        assert {(r.reply.code, r.reply.enhanced) for r in second.results} == {(421, "4.3.2")}
        assert mx.connections == 1 and "RSET" in mx.verbs(1)  # it was the pooled connection
        assert agent.idle_sessions == 0  # discarded, not kept for the next message
        await wait_for(lambda: mx.open_connections == 0)
        assert mx.delivered_rcpts == ["b@dest.test"]  # the first message, once
        third = await agent.deliver(job(queue_id="q2", rcpts=RCPTS), policy(mx.port))
        assert [r.disposition for r in third.results] == [Disposition.DELIVERED] * 2
        assert mx.connections == 2
        assert sorted(mx.delivered_rcpts) == ["b@dest.test", *ADDRESSES]


async def test_421_in_the_second_verp_transaction_keeps_the_first_delivered(
    dns_server: DnsServer, make_agent: type[DeliveryAgent]
) -> None:
    _route(dns_server)
    async with BadMx(faults=[None, ("dot", "421 4.3.2 shutting down")]) as mx:
        agent = make_agent(return_path=Verp(b"s" * 32, "bounces", "bounce.sender.test"))
        report = await agent.deliver(job(rcpts=RCPTS), policy(mx.port))
        assert [r.disposition for r in report.results] == [
            Disposition.DELIVERED,
            Disposition.DEFERRED,
        ]
        assert report.results[1].reply.code == 421
        assert agent.idle_sessions == 0
        assert mx.delivered_rcpts == ["b@dest.test"]


GARBAGE = "hello, this is not SMTP"
OVERLONG = "250 2.0.0 " + "x" * 20_000


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (("dot", GARBAGE), "a reply that is not SMTP"),
        (("dot", OVERLONG), "an overlong reply"),
        (("dot", "x" * 40_000), "an overlong reply"),
        (("rcpt", GARBAGE), "a reply that is not SMTP"),
        (("mail", OVERLONG), "an overlong reply"),
        (("data", "250 2.0.0 ok"), "unexpected reply to DATA: 250 2.0.0 ok"),
        (("rcpt", "252 2.1.5 maybe"), "unexpected reply to RCPT: 252 2.1.5 maybe"),
        (("mail", "251 2.1.0 sure"), "unexpected reply to MAIL: 251 2.1.0 sure"),
    ],
    ids=[
        "garbage-at-dot",
        "overlong-line-at-dot",
        "endless-line-at-dot",
        "garbage-at-rcpt",
        "overlong-at-mail",
        "250-to-data",
        "252-to-rcpt",
        "251-to-mail",
    ],
)
async def test_reply_that_is_not_smtp_defers_with_a_clear_reason(
    dns_server: DnsServer, make_agent: type[DeliveryAgent], fault: Fault, reason: str
) -> None:
    _route(dns_server)
    async with BadMx(faults=[fault]) as mx:
        agent, report = await _failed_attempt(make_agent, mx)
        assert {r.reply.enhanced for r in report.results} == {"4.5.0"}
        for r in report.results:
            assert reason in r.reply.text, r.reply
            assert f"mx.dest.test [127.0.0.1]:{mx.port}" in r.reply.text
        await _retry_delivers_once(agent, mx)


# -- end to end: the daemon, its scheduler and retry policy -------------------------------
def _events(cfg: TestConfig) -> list[tuple[str, str, str]]:
    rows = cfg.query("SELECT type, recipient, data FROM events ORDER BY id")
    return [(t, r, json.loads(d or "{}").get("reply", "")) for t, r, d in rows]


def _states(cfg: TestConfig) -> dict[str, str]:
    return dict(cfg.query("SELECT address, state FROM recipients"))


async def test_daemon_defers_each_fault_and_delivers_once_when_the_mx_recovers(
    tmp_path: Path,
) -> None:
    faults: list[Fault | None] = [("dot", "hang"), ("body", "reset"), ("rcpt", "ok+drop")]
    async with BadMx("127.0.0.2", faults=faults) as mx:
        cfg = TestConfig(tmp_path, tls=False)
        cfg.set(
            "delivery",
            relay_host=f"127.0.0.2:{mx.port}",
            tls="none",
            connect_timeout="2s",
            command_timeout="2s",
            data_timeout="300ms",
        )
        cfg.set("shaping", poll_interval="20ms", retry_schedule=["500ms"], retry_every="500ms")
        host, port = cfg.address("submission", "listen_plain")

        def submit() -> None:
            with smtplib.SMTP(host, port, timeout=30) as client:
                client.sendmail(
                    "app@example.com",
                    ADDRESSES,
                    b"From: app@example.com\r\nSubject: faults\r\n\r\nonce only\r\n",
                )

        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        try:
            await asyncio.to_thread(submit)
            await wait_for(lambda: len(mx.accepted) == 1, timeout=30)
            await wait_for(lambda: _states(cfg) == dict.fromkeys(ADDRESSES, "delivered"), 10)
        finally:
            await asyncio.to_thread(daemon.stop)

    assert sorted(mx.delivered_rcpts) == ADDRESSES  # delivered once, nobody lost
    assert b"once only" in mx.accepted[0].data
    assert len(mx.unanswered) == 1  # the hang after the final dot
    assert mx.connections == 4  # a failed connection is never reused
    events = _events(cfg)
    for rcpt in ADDRESSES:
        mine = [(t, reply) for t, r, reply in events if r == rcpt]
        assert [t for t, _ in mine] == ["deferred", "deferred", "deferred", "delivered"]
        timeout, reset, dropped = (reply for t, reply in mine if t == "deferred")
        assert timeout.startswith("451 4.4.2 timed out talking to 127.0.0.2")
        assert reset.startswith("451 4.4.2 connection to 127.0.0.2") and "lost" in reset
        assert dropped.startswith("451 4.4.2 connection to 127.0.0.2") and "lost" in dropped
    assert not [e for e in events if e[0] in ("bounced", "dsn_sent")]
    assert "Traceback" not in daemon.log()


# -- the scheduler: an attempt stuck on a silent remote must end before its lease ---------
async def _short_lease(run_scheduler: Any, mx: BadMx, lease: float, **kw: Any) -> None:
    """A scheduler whose lease is shorter than the route's data_timeout (10 s)."""
    retry = '[shaping]\npoll_interval = "20ms"\nretry_schedule = ["100ms"]\n'
    await run_scheduler(retry, mx.port, SystemClock(), workers=2, lease=lease, **kw)


async def _history(spool: Spool, qid: str, delivered: int) -> list[tuple[str, str, str]]:
    """(recipient, type, reply) of the message's events once ``delivered`` are recorded."""

    def read(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
        return conn.execute(
            "SELECT recipient, type, data FROM events"
            " WHERE queue_id=? AND type != 'accepted' ORDER BY id",
            (qid,),
        ).fetchall()

    rows = await eventually(  # the delivered record follows the sink's 250 closely
        lambda: spool.db.read(read),
        lambda rs: [t for _, t, _ in rs].count("delivered") >= delivered,
        timeout=10,
    )
    return [(r, t, json.loads(d or "{}").get("reply", "")) for r, t, d in rows]


async def test_an_attempt_stuck_after_the_dot_ends_before_its_lease(
    spool: Spool, run_scheduler: Any
) -> None:
    """Past the lease the spool hands the recipient out again: a second delivery while the
    first still waits, and the first one's late "deferred" overwriting "delivered"."""
    async with BadMx("127.0.0.2", faults=[("dot", "hang")]) as mx:
        await _short_lease(run_scheduler, mx, 3.0)
        (qid,) = await test_scheduler_e2e.enqueue_many(spool, 1, time.time())
        await wait_for(lambda: len(mx.accepted) == 1, timeout=8)
        # the stuck attempt was over (connection closed) before the next one delivered
        assert mx.open_connections <= 1 and len(mx.unanswered) == 1
        rows = await _history(spool, qid, delivered=1)
        assert [t for _, t, _ in rows] == ["deferred", "delivered"], rows
        assert "lease" in rows[0][2]


async def test_a_reply_that_is_not_utf8_is_recorded(spool: Spool, run_scheduler: Any) -> None:
    """A Latin-1 "250 … für …" once made the spool's record fail (surrogates), so the lease
    ran out and the message went out again and again."""
    async with BadMx("127.0.0.2", faults=[("dot", "250 2.0.0 queued f\udcfcr dich")]) as mx:
        await run_scheduler('[shaping]\npoll_interval = "20ms"\n', mx.port, SystemClock())
        (qid,) = await test_scheduler_e2e.enqueue_many(spool, 1, time.time())
        await wait_for(lambda: len(mx.accepted) == 1)

        def delivered(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            return conn.execute(
                "SELECT state, last_reply FROM recipients WHERE queue_id=?", (qid,)
            ).fetchall()

        rows = await eventually(
            lambda: spool.db.read(delivered), lambda rs: rs[0][0] != "leased", 10
        )
        assert rows == [("delivered", "250 2.0.0 queued f\ufffdr dich")]


# -- the deadline: an attempt cut short keeps the outcomes it already has -----------------
VERP = Verp(b"s" * 32, "bounces", "bounce.sender.test")


def _cut_short(report: DeliveryReport, idx: int) -> None:
    r = report.results[idx]
    assert r.disposition is Disposition.DEFERRED, r
    assert (r.reply.code, r.reply.enhanced) == (451, "4.4.2"), r
    assert r.reply.text == "delivery attempt cut short: it outlasted its lease", r


async def test_the_deadline_keeps_what_earlier_transactions_delivered(
    dns_server: DnsServer, make_agent: type[DeliveryAgent], clock: Any
) -> None:
    """VERP: one transaction per recipient. The first is accepted, the remote then says
    nothing after the second's final dot: at the deadline the first stays delivered, the
    second (in flight) and the third (never tried) are deferred as cut short."""
    _route(dns_server)
    async with BadMx(faults=[None, ("dot", "hang")]) as mx:
        agent = make_agent(return_path=VERP)
        loop = asyncio.get_running_loop()
        started = loop.time()
        report = await agent.deliver(
            job(rcpts=("b", "c", "d")), policy(mx.port, deadline=clock.now() + 1.0)
        )
        waited = loop.time() - started
        assert 0.9 <= waited < 2.5, waited  # the deadline, not data_timeout (5 s)
        first = report.results[0]
        assert first.disposition is Disposition.DELIVERED and first.reply.code == 250
        assert first.mx == "mx.dest.test"
        _cut_short(report, 1)
        _cut_short(report, 2)
        assert mx.delivered_rcpts == ["b@dest.test"]
        assert [t.rcpt_tos for t in mx.unanswered] == [["c@dest.test"]]
        assert mx.verbs().count("MAIL") == 2  # "d" was never started
        assert agent.idle_sessions == 0  # the abandoned connection is not reused
        await wait_for(lambda: mx.open_connections == 0)


async def test_a_rcpt_refusal_survives_the_cut(
    dns_server: DnsServer, make_agent: type[DeliveryAgent], clock: Any
) -> None:
    """One transaction: "bad" refused at RCPT, then no reply to the final dot. The refusal
    is an answer: "bad" bounces; only "c" (in flight) is deferred."""
    _route(dns_server)
    async with BadMx(faults=[("dot", "hang")]) as mx:
        mx.rcpt_replies["bad@dest.test"] = "550 5.1.1 no such user"
        report = await make_agent().deliver(
            job(rcpts=("bad", "c")), policy(mx.port, deadline=clock.now() + 1.0)
        )
        bad = report.results[0]
        assert bad.disposition is Disposition.BOUNCED
        assert (bad.reply.code, bad.reply.enhanced) == (550, "5.1.1")
        _cut_short(report, 1)
        assert [t.rcpt_tos for t in mx.unanswered] == [["c@dest.test"]]


async def test_no_transaction_starts_in_the_last_moments_before_the_deadline(
    dns_server: DnsServer, make_agent: type[DeliveryAgent], clock: Any
) -> None:
    """The first message's reply comes 1.7 s into a 2 s attempt: the second one could not
    be sure to finish, so it is not started and the healthy connection goes back to the
    pool."""
    _route(dns_server)
    async with BadMx(faults=[("dot", "delay 1.7")]) as mx:
        agent = make_agent(return_path=VERP)
        report = await agent.deliver(
            job(rcpts=("b", "c")), policy(mx.port, deadline=clock.now() + 2.0)
        )
        assert report.results[0].disposition is Disposition.DELIVERED
        _cut_short(report, 1)
        assert mx.delivered_rcpts == ["b@dest.test"] and mx.unanswered == []
        assert mx.verbs().count("MAIL") == 1
        assert agent.idle_sessions == 1  # nothing went wrong with the connection


async def test_a_cut_short_attempt_never_sends_a_delivered_recipient_again(
    spool: Spool, run_scheduler: Any
) -> None:
    """The scheduler's lease cut-off in a VERP job: the first recipient accepted, the remote
    silent after the second's final dot. The first is recorded delivered once and never
    resent; the second is deferred as cut short and delivered alone by the next attempt."""
    async with BadMx("127.0.0.2", faults=[None, ("dot", "hang")]) as mx:
        await _short_lease(run_scheduler, mx, 2.0, return_path=VERP)
        now = time.time()
        qid = new_queue_id(now)
        rcpts = ("u0@burst.test", "u1@burst.test")
        await spool.enqueue(
            PreparedMessage(
                queue_id=qid,
                sender="app@sender.test",
                recipients=tuple(PreparedRecipient(a) for a in rcpts),
                data=test_scheduler_e2e.BODY,
                user="app",
                client_ip="127.0.0.1",
                received_at=now,
            )
        )
        await wait_for(lambda: len(mx.accepted) >= 2, timeout=8)
        rows = await _history(spool, qid, delivered=2)
        assert [(r, t) for r, t, _ in rows] == [
            ("u0@burst.test", "delivered"),
            ("u1@burst.test", "deferred"),
            ("u1@burst.test", "delivered"),
        ], rows
        assert rows[1][2] == "451 4.4.2 delivery attempt cut short: it outlasted its lease"
        info = await spool.show(qid)
        assert info is not None
        assert [(r.state, r.attempts) for r in info.recipients] == [
            ("delivered", 1),
            ("delivered", 2),
        ]
    # what the remote saw: each recipient accepted once; the retry carried only the second
    assert [t.rcpt_tos for t in mx.accepted] == [["u0@burst.test"], ["u1@burst.test"]]
    assert [t.rcpt_tos for t in mx.unanswered] == [["u1@burst.test"]]
    assert mx.verbs().count("MAIL") == 3
