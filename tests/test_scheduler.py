"""The scheduler against the real spool: retries on time, expiry and DSNs, suspension,
dead destinations, draining. The agent here is scripted (replies chosen per call); the
end-to-end tests with the real DeliveryAgent and aiosmtpd sinks are in
test_scheduler_e2e.py."""

from __future__ import annotations

import asyncio
import email
import email.policy
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from mtaserver.classify import classify
from mtaserver.config.reader import Reader
from mtaserver.config.shaping import ShapingConfig, load_builtin, parse
from mtaserver.model import (
    DeliveryJob,
    DeliveryReport,
    Disposition,
    PreparedMessage,
    PreparedRecipient,
    RecipientResult,
    RoutePolicy,
    SmtpReply,
)
from mtaserver.scheduler import Scheduler, SyncBounce
from mtaserver.shaper import Shaper
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from tests.support.clock import FakeClock

Script = Callable[[DeliveryJob, str], SmtpReply]


@dataclass
class ScriptedAgent:
    """Answers every recipient of a job with the reply the script picks."""

    clock: FakeClock
    script: Script
    calls: list[tuple[float, str, str]] = field(default_factory=list)  # (now, qid, rcpt)
    jobs: list[DeliveryJob] = field(default_factory=list)
    active: int = 0
    peak: int = 0

    async def deliver(self, job: DeliveryJob, policy: RoutePolicy) -> DeliveryReport:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(0)
            self.jobs.append(job)
            now = self.clock.now()
            results = []
            for r in job.recipients:
                self.calls.append((now, job.queue_id, r.address))
                reply = self.script(job, r.address)
                disp = (
                    Disposition.DELIVERED
                    if reply.code < 400
                    else Disposition.DEFERRED
                    if reply.code < 500
                    else Disposition.BOUNCED
                )
                results.append(
                    RecipientResult(r.idx, r.address, disp, reply, mx="mx." + job.domain)
                )
            return DeliveryReport(job.queue_id, job.domain, tuple(results), now, now)
        finally:
            self.active -= 1


def shaping(toml: str = "") -> ShapingConfig:
    table = tomllib.loads(toml).get("shaping", {})
    return parse(Reader({"shaping": table}, "config.toml").table("shaping"))


@dataclass
class Harness:
    spool: Spool
    clock: FakeClock
    agent: ScriptedAgent
    scheduler: Scheduler
    task: asyncio.Task[None]

    async def wait_for(self, cond: Callable[[], Any], timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = cond()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            if loop.time() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.005)

    async def idle_polls(self, n: int = 5) -> None:
        """Let the scheduler look at the queue n more times (an absence check)."""
        start = self.scheduler.polls
        await self.wait_for(lambda: self.scheduler.polls >= start + n)

    async def dsns(self) -> list[tuple[str, str, bool, str, bytes]]:
        """DSNs the scheduler queued and then delivered: (queue id, sender, dsn flag, rcpt, data)."""
        return [
            (j.queue_id, j.sender, j.dsn, r.address, j.data)
            for j in self.agent.jobs
            if j.is_dsn and j.sender == ""
            for r in j.recipients
        ]

    async def states(self, qid: str) -> list[tuple[str, int, float]]:
        info = await self.spool.show(qid)
        assert info is not None
        return [(r.state, r.attempts, r.next_attempt) for r in info.recipients]


@pytest.fixture
def make_harness(
    spool: Spool,
) -> Callable[..., Any]:
    started: list[Harness] = []

    async def make(
        script: Script,
        toml: str = "",
        *,
        workers: int = 10,
        builtin: bool = False,
        on_bounce: Any = None,
    ) -> Harness:
        """A scheduler over the real spool with a scripted agent and a fake clock."""
        clock = FakeClock()
        cfg = shaping(toml)
        dests, rules = load_builtin() if builtin else ((), ())
        shaper = Shaper(
            cfg, clock, max_connections=workers, builtin_destinations=dests, builtin_rules=rules
        )
        agent = ScriptedAgent(clock, script)
        sched = Scheduler(
            spool=spool,
            agent=agent,
            shaper=shaper,
            clock=clock,
            retry=cfg.retry,
            settings=cfg.scheduler,
            route=RoutePolicy(),
            classify=classify,
            workers=workers,
            lease=600.0,
            hostname="mta.test",
            new_queue_id=new_queue_id,
            send_dsn=cfg.send_dsn,
            no_dsn_users=cfg.no_dsn_users,
            on_bounce=on_bounce,
        )
        task = asyncio.create_task(sched.run())
        h = Harness(spool, clock, agent, sched, task)
        started.append(h)
        return h

    yield make
    for h in started:
        if not h.task.done():
            h.task.cancel()


async def _stop(h: Harness) -> None:
    await h.scheduler.drain(5.0)
    await h.task


async def enqueue(
    h: Harness, rcpts: list[str], *, sender: str = "app@sender.test", **kw: Any
) -> str:
    qid = new_queue_id(h.clock.now())
    await h.spool.enqueue(
        PreparedMessage(
            queue_id=qid,
            sender=sender,
            recipients=tuple(PreparedRecipient(r) for r in rcpts),
            data=b"From: app@sender.test\r\nSubject: hello\r\nMessage-ID: <m1@sender.test>\r\n"
            b"\r\nbody\r\n",
            client_ip="127.0.0.1",
            received_at=h.clock.now(),
            **({"user": "app"} | kw),
        )
    )
    return qid


FAST = """
[shaping]
poll_interval = "10ms"
"""


async def test_4xx_is_retried_at_the_scheduled_time(make_harness: Any) -> None:
    replies = iter([SmtpReply(451, "try later", "4.3.0"), SmtpReply(250, "ok", "2.0.0")])
    h: Harness = await make_harness(lambda job, rcpt: next(replies), FAST)
    t0 = h.clock.now()
    qid = await enqueue(h, ["a@dest.test"])
    await h.wait_for(lambda: len(h.agent.calls) == 1)
    await h.wait_for(lambda: h.states(qid), timeout=5)
    await h.wait_for(lambda: _is(h.states(qid), [("queued", 1, t0 + 300)]))
    h.clock.advance(299)
    await h.idle_polls()
    assert len(h.agent.calls) == 1  # not before its time
    h.clock.advance(1)
    await h.wait_for(lambda: _is(h.states(qid), [("delivered", 2, None)]))
    assert [c[0] for c in h.agent.calls] == [t0, t0 + 300]
    rows = await h.spool.db.read(
        lambda c: c.execute(
            "SELECT type FROM events WHERE queue_id=? ORDER BY id", (qid,)
        ).fetchall()
    )
    assert [r[0] for r in rows] == ["accepted", "deferred", "delivered"]
    await _stop(h)


async def _is(states_coro: Any, want: list[tuple[str, int, float | None]]) -> bool:
    """States match; a None time in `want` means "any time"."""
    got = await states_coro
    if len(got) != len(want):
        return False
    return all(
        (s, n) == (ws, wn) and (wt is None or t == wt)
        for (s, n, t), (ws, wn, wt) in zip(got, want, strict=True)
    )


async def test_expiry_bounces_with_4_4_7_and_one_dsn_per_message(make_harness: Any) -> None:
    h: Harness = await make_harness(
        lambda job, rcpt: SmtpReply(451, "mailbox busy", "4.2.1"),
        FAST + 'retry_schedule = ["10m"]\nretry_every = "30m"\nmax_lifetime = "1h"\n',
    )
    t0 = h.clock.now()
    qid = await enqueue(h, ["a@one.test", "b@one.test", "c@two.test"])
    times = []
    for _ in range(10):
        await h.wait_for(lambda: h.scheduler.inflight == 0 and len(h.agent.calls) > 0)
        st = await h.states(qid)
        if all(s == "bounced" for s, _, _ in st):
            break
        nxt = min(t for s, _, t in st if s == "queued")
        if nxt > h.clock.now():
            h.clock.advance(nxt - h.clock.now())
        times.append(h.clock.now() - t0)
        n = len(h.agent.calls)
        await h.wait_for(lambda n=n: len(h.agent.calls) >= n + 3 or False)
    await h.wait_for(lambda: _count(h.dsns(), 1))
    st = await h.states(qid)
    assert [s for s, _, _ in st] == ["bounced"] * 3
    # attempts at 0, 10m, 40m and exactly at the end of the lifetime (1h), then expired
    assert times == [600, 2400, 3600]
    # one DSN for the message: null sender, to the original sender, itself never bounced
    [(_, sender, dsn_flag, rcpt, body)] = await h.dsns()
    assert (sender, dsn_flag, rcpt) == ("", False, "app@sender.test")
    msg = email.message_from_bytes(body, policy=email.policy.default)
    assert msg["To"].addresses[0].addr_spec == "app@sender.test"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["In-Reply-To"] == "<m1@sender.test>"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, headers = msg.get_payload()
    assert human.get_content_type() == "text/plain"
    assert "mailbox busy" in human.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, *per_rcpt = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mta.test"
    assert per_message["X-Mtaserver-Queue-ID"] == qid
    assert per_message["Arrival-Date"]
    assert [
        (f["Final-Recipient"], f["Action"], f["Status"], f["Remote-MTA"], f["Diagnostic-Code"])
        for f in per_rcpt
    ] == [
        (
            "rfc822; a@one.test",
            "failed",
            "4.4.7",
            "dns; mx.one.test",
            "smtp; 451 4.2.1 mailbox busy",
        ),
        (
            "rfc822; b@one.test",
            "failed",
            "4.4.7",
            "dns; mx.one.test",
            "smtp; 451 4.2.1 mailbox busy",
        ),
        (
            "rfc822; c@two.test",
            "failed",
            "4.4.7",
            "dns; mx.two.test",
            "smtp; 451 4.2.1 mailbox busy",
        ),
    ]
    assert headers.get_content_type() == "text/rfc822-headers"
    quoted = body.split(b"Content-Type: text/rfc822-headers\r\n\r\n", 1)[1]
    assert quoted.startswith(b"From: app@sender.test\r\nSubject: hello\r\n")
    events = await h.spool.db.read(
        lambda c: c.execute(
            "SELECT type, data FROM events WHERE queue_id=? AND type IN ('bounced','dsn_sent')",
            (qid,),
        ).fetchall()
    )
    assert sorted(t for t, _ in events) == ["bounced", "bounced", "bounced", "dsn_sent"]
    assert all('"source": "expired"' in d for t, d in events if t == "bounced")
    await _stop(h)


async def test_no_dsn_to_null_sender_about_a_dsn_or_when_turned_off(make_harness: Any) -> None:
    h: Harness = await make_harness(
        lambda job, rcpt: SmtpReply(550, "no such user", "5.1.1"),
        FAST + 'no_dsn_users = ["Events-App"]\n',
    )
    q1 = await enqueue(h, ["x@d.test"], sender="")
    q5 = await enqueue(h, ["x@d.test"], user="events-app")  # this user turned DSNs off
    q2 = await enqueue(h, ["x@d.test"], sender="mailer@d.test", is_dsn=True)
    q3 = await enqueue(h, ["x@d.test"], dsn=False)
    q4 = await enqueue(h, ["x@d.test", "y@d.test"])
    for q in (q1, q2, q3, q4, q5):
        await h.wait_for(lambda q=q: _all_state(h, q, "bounced"))
    await h.wait_for(lambda: _count(h.dsns(), 1))
    await h.idle_polls()
    [(_, _, _, rcpt, body)] = await h.dsns()
    assert rcpt == "app@sender.test"
    msg = email.message_from_bytes(body, policy=email.policy.default)
    per_rcpt = msg.get_payload()[1].get_payload()[1:]
    assert [(f["Final-Recipient"], f["Status"]) for f in per_rcpt] == [
        ("rfc822; x@d.test", "5.1.1"),
        ("rfc822; y@d.test", "5.1.1"),
    ]
    assert per_rcpt[0]["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    await _stop(h)


async def _count(coro: Any, n: int) -> bool:
    return len(await coro) == n


async def _all_state(h: Harness, qid: str, state: str) -> bool:
    return all(s == state for s, _, _ in await h.states(qid))


async def test_421_rule_suspends_the_destination_and_it_resumes_by_itself(
    make_harness: Any,
) -> None:
    throttled = {"on": True}

    def script(job: DeliveryJob, rcpt: str) -> SmtpReply:
        if job.domain == "busy.test" and throttled["on"]:
            return SmtpReply(421, "rate limited, come back later", "4.7.0")
        return SmtpReply(250, "ok", "2.0.0")

    h: Harness = await make_harness(
        script,
        FAST
        + """
[shaping.default]
max_connections = 1
[[shaping.rule]]
name = "busy"
codes = [421]
text = "rate limited"
action = "suspend"
duration = "2m"
""",
    )
    t0 = h.clock.now()
    busy = [await enqueue(h, [f"u{i}@busy.test"]) for i in range(5)]
    other = await enqueue(h, ["v@other.test"])
    await h.wait_for(lambda: _all_state(h, other, "delivered"))
    await h.wait_for(lambda: h.scheduler.inflight == 0)
    busy_calls = [c for c in h.agent.calls if c[2].endswith("@busy.test")]
    assert len(busy_calls) == 1  # one 421, then nothing more to that destination
    # every busy.test recipient waits for the end of the suspension, not re-claimed now
    for q in busy:
        [(state, _, nxt)] = await h.states(q)
        assert state == "queued" and nxt >= t0 + 120
    await h.idle_polls()
    assert len([c for c in h.agent.calls if c[2].endswith("@busy.test")]) == 1
    throttled["on"] = False
    h.clock.advance(120)
    # the untried ones go as soon as the suspension ends …
    for q in busy[1:]:
        await h.wait_for(lambda q=q: _all_state(h, q, "delivered"))
    # … the one that drew the 421 keeps its own retry time (5 minutes)
    [(state, _, nxt)] = await h.states(busy[0])
    assert state == "queued" and nxt == t0 + 300
    h.clock.advance(180)
    await h.wait_for(lambda: _all_state(h, busy[0], "delivered"))
    await _stop(h)


async def test_dead_destination_backs_off_with_growing_suspensions(make_harness: Any) -> None:
    h: Harness = await make_harness(
        lambda job, rcpt: SmtpReply(451, "connection refused", "4.4.1"),
        FAST
        + """
[shaping.default]
max_connections = 1
dead_after = 3
dead_backoff = "10m"
dead_backoff_max = "1h"
""",
    )
    t0 = h.clock.now()
    qids = [await enqueue(h, [f"u{i}@dead.test"]) for i in range(6)]
    await h.wait_for(lambda: len(h.agent.calls) == 3 and h.scheduler.inflight == 0)
    await h.idle_polls()
    assert len(h.agent.calls) == 3  # dead after 3 failures: the rest wait
    nexts = sorted([(await h.states(q))[0][2] for q in qids])
    assert all(n >= t0 + 600 for n in nexts[3:])
    h.clock.advance(600)
    await h.wait_for(lambda: len(h.agent.calls) == 6 and h.scheduler.inflight == 0)
    await h.idle_polls()
    assert len(h.agent.calls) == 6
    t1 = h.clock.now()
    nexts = sorted([(await h.states(q))[0][2] for q in qids])
    assert min(nexts) >= t1 + 1200  # second suspension twice as long
    await _stop(h)


async def test_drain_puts_the_backlog_back(make_harness: Any) -> None:
    gate = asyncio.Event()

    class Slow(ScriptedAgent):
        async def deliver(self, job: DeliveryJob, policy: RoutePolicy) -> DeliveryReport:
            await gate.wait()
            return await super().deliver(job, policy)

    h: Harness = await make_harness(
        lambda job, rcpt: SmtpReply(250, "ok", "2.0.0"),
        FAST + "[shaping.default]\nmax_connections = 1\n",
    )
    h.scheduler._agent = Slow(h.clock, h.agent.script)
    qids = [await enqueue(h, [f"u{i}@slow.test"]) for i in range(5)]
    await h.wait_for(lambda: h.scheduler.inflight == 1)
    drain = asyncio.create_task(h.scheduler.drain(5.0))
    await h.wait_for(lambda: _count_state(h, qids, "queued", 4))
    gate.set()
    await drain
    await h.task
    states = [(await h.states(q))[0][0] for q in qids]
    assert sorted(states) == ["delivered"] + ["queued"] * 4


async def _count_state(h: Harness, qids: list[str], state: str, n: int) -> bool:
    return sum([(await h.states(q))[0][0] == state for q in qids]) == n


async def test_delay_warning_once_per_message(make_harness: Any) -> None:
    h: Harness = await make_harness(
        lambda job, rcpt: (
            SmtpReply(451, "mailbox busy", "4.2.1")
            if not job.is_dsn
            else SmtpReply(250, "ok", "2.0.0")
        ),
        FAST + 'retry_schedule = ["20m"]\nretry_every = "20m"\ndelay_warning = "30m"\n',
    )
    t0 = h.clock.now()
    qid = await enqueue(h, ["a@one.test"])
    await h.wait_for(lambda: _is(h.states(qid), [("queued", 1, t0 + 1200)]))
    assert await h.dsns() == []  # 20 minutes: too early to warn
    h.clock.advance(1200)
    await h.wait_for(lambda: _is(h.states(qid), [("queued", 2, t0 + 2400)]))
    assert await h.dsns() == []
    h.clock.advance(1200)  # 40 minutes: past the warning time
    await h.wait_for(lambda: _count(h.dsns(), 1))
    [(_, sender, _, rcpt, body)] = await h.dsns()
    assert (sender, rcpt) == ("", "app@sender.test")
    msg = email.message_from_bytes(body, policy=email.policy.default)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    [fields] = msg.get_payload()[1].get_payload()[1:]
    assert (fields["Action"], fields["Status"]) == ("delayed", "4.2.1")
    assert fields["Will-Retry-Until"]
    h.clock.advance(1200)
    await h.wait_for(lambda: _is(h.states(qid), [("queued", 4, None)]))
    await h.idle_polls()
    assert len(await h.dsns()) == 1  # warned once, not at every deferral
    await _stop(h)
    # a restarted scheduler (nothing in memory) remembers it through the events table
    h2: Harness = await make_harness(h.agent.script, FAST + 'retry_schedule = ["20m"]\n'
                                     'retry_every = "20m"\ndelay_warning = "30m"\n')  # fmt: skip
    h2.clock.advance(h.clock.now() + 1200 - h2.clock.now())
    await h2.wait_for(lambda: _is(h2.states(qid), [("queued", 5, None)]))
    await h2.idle_polls()
    assert await h2.dsns() == []
    await _stop(h2)


async def test_permanent_failures_at_delivery_go_through_the_suppression_policy(
    make_harness: Any, spool: Spool
) -> None:
    """An unknown user at RCPT is suppressed like an async bounce; a blocklist reply is not."""
    from mtaserver.storage.sqlite.suppressions import SuppressionStore

    store = SuppressionStore(spool.db)
    replies = {
        "gone@d.test": SmtpReply(550, "5.1.1 user unknown", "5.1.1"),
        "fine@d.test": SmtpReply(554, "5.7.1 blocked: listed at zen.spamhaus.org", "5.7.1"),
    }

    async def on_bounce(b: SyncBounce) -> None:
        await store.apply(b.address, b.reason, sender_domain=b.sender_domain, source="delivery",
                          reply=b.reply, queue_id=b.queue_id)  # fmt: skip

    h: Harness = await make_harness(lambda job, rcpt: replies[rcpt], FAST, on_bounce=on_bounce)
    qid = await enqueue(h, list(replies))
    await h.wait_for(lambda: _all_state(h, qid, "bounced"))
    await h.wait_for(lambda: store.check("gone@d.test", "sender.test"))
    await h.idle_polls()
    assert await store.check("fine@d.test", "sender.test") is None
    await _stop(h)
