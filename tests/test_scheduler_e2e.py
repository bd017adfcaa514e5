"""The scheduler with the real spool, the real DeliveryAgent and aiosmtpd sinks as MX hosts:
limits measured where they matter — at the receiving server."""

from __future__ import annotations

import asyncio
import bisect
import random
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from mtaserver.classify import classify
from mtaserver.clock import Clock, SystemClock
from mtaserver.config.reader import Reader
from mtaserver.config.shaping import ShapingConfig, parse
from mtaserver.delivery import DeliveryAgent, ReturnPath
from mtaserver.model import PreparedMessage, PreparedRecipient, RoutePolicy
from mtaserver.mx import DnsResolver
from mtaserver.scheduler import Scheduler
from mtaserver.shaper import Shaper
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from tests.support.clock import TimerClock
from tests.support.dnsserver import DnsServer
from tests.support.mxsink import SinkGroup, wait_for

BODY = b"From: app@sender.test\r\nSubject: burst\r\n\r\n" + b"x" * 200 + b"\r\n"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add("burst.test", "MX", "10 mx.burst.test.")
        server.add("mx.burst.test", "A", "127.0.0.2")
        yield server


def shaping(toml: str) -> ShapingConfig:
    table = tomllib.loads(toml).get("shaping", {})
    return parse(Reader({"shaping": table}, "config.toml").table("shaping"))


@pytest.fixture
async def run_scheduler(spool: Spool, dns: DnsServer) -> AsyncIterator[Any]:
    running: list[tuple[Scheduler, asyncio.Task[None], DeliveryAgent]] = []

    async def start(
        toml: str,
        port: int,
        clock: Clock,
        workers: int = 50,
        lease: float = 600.0,
        return_path: ReturnPath | None = None,
    ) -> Scheduler:
        cfg = shaping(toml)
        resolver = DnsResolver(
            clock, nameservers=[dns.nameserver], timeout=2.0, rng=random.Random(1)
        )
        agent = DeliveryAgent(resolver, clock, hostname="mta.test", return_path=return_path)
        sched = Scheduler(
            spool=spool,
            agent=agent,
            shaper=Shaper(cfg, clock, max_connections=workers),
            clock=clock,
            retry=cfg.retry,
            settings=cfg.scheduler,
            route=RoutePolicy(
                port=port, tls="none", connect_timeout=5, command_timeout=5, data_timeout=10
            ),
            classify=classify,
            workers=workers,
            lease=lease,
            hostname="mta.test",
            new_queue_id=new_queue_id,
        )
        running.append((sched, asyncio.create_task(sched.run()), agent))
        return sched

    yield start
    for sched, task, agent in running:
        await sched.drain(5)
        task.cancel()
        await agent.aclose()


async def enqueue_many(spool: Spool, n: int, now: float, domain: str = "burst.test") -> list[str]:
    qids = [new_queue_id(now) for _ in range(n)]
    await asyncio.gather(
        *(
            spool.enqueue(
                PreparedMessage(
                    queue_id=q,
                    sender="app@sender.test",
                    recipients=(PreparedRecipient(f"u{i}@{domain}"),),
                    data=BODY,
                    user="app",
                    client_ip="127.0.0.1",
                    received_at=now,
                )
            )
            for i, q in enumerate(qids)
        )
    )
    return qids


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(bisect.bisect_right(times, t + window) - i for i, t in enumerate(times))


async def test_burst_never_exceeds_max_connections_or_max_rate(
    spool: Spool, run_scheduler: Any
) -> None:
    n, rate, conns = 2000, 250.0, 5
    latency = 0.05  # allowance for a message between its permit and the sink's DATA reply
    burst = rate / 10  # the default bucket depth: a tenth of a second's worth
    async with SinkGroup(["127.0.0.2"]) as sinks:
        clock = SystemClock()
        await enqueue_many(spool, n, clock.now())
        await run_scheduler(
            f"""
            [shaping]
            poll_interval = "20ms"
            claim_batch = 500
            [shaping.default]
            max_connections = {conns}
            max_messages_per_connection = 1000
            max_rate = "{rate:g}/s"
            """,
            sinks.port,
            clock,
        )
        sink = sinks["127.0.0.2"]
        await wait_for(lambda: len(sink.messages) >= n, timeout=25)
        times = [m.at for m in sink.messages]
        assert len(sink.messages) == n
        assert sink.peak_open_connections <= conns
        assert sink.peak_open_connections >= 2  # the work really was spread over connections
        # Every window: at most the bucket depth plus what the rate refills — the window
        # widened by the time a message takes from its permit to the sink's DATA reply.
        for window in (0.25, 1.0, 3.0):
            limit = burst + rate * (window + latency) + conns
            assert max_in_window(times, window) <= limit, window
        elapsed = max(times) - min(times)
        assert elapsed >= (n - burst) / rate * 0.95
        # connections were reused, not one per message
        assert sink.connections <= 4 * conns


async def test_421_from_the_receiver_suspends_and_delivery_resumes(
    spool: Spool, run_scheduler: Any
) -> None:
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        sink.mail_reply = "421 4.7.0 Too much mail from you, rate limited; try again later"
        clock = TimerClock(time.time())
        t0 = clock.now()
        qids = await enqueue_many(spool, 6, t0)
        sched = await run_scheduler(
            """
            [shaping]
            poll_interval = "10ms"
            builtin = false
            [shaping.default]
            max_connections = 1
            [[shaping.rule]]
            name = "receiver-says-slow-down"
            codes = [421]
            text = "rate limited"
            action = "suspend"
            duration = "2m"
            """,
            sinks.port,
            clock,
        )

        async def states() -> list[tuple[str, float]]:
            out = []
            for q in qids:
                info = await spool.show(q)
                assert info is not None
                out.append((info.recipients[0].state, info.recipients[0].next_attempt))
            return out

        async def suspended() -> bool:
            st = await states()
            return all(s == "queued" for s, _ in st) and sched.attempts == 1

        await _poll(suspended)
        polls = sched.polls
        await _poll(lambda: _true(sched.polls >= polls + 10))
        assert sched.attempts == 1  # suspended: nothing else was tried
        st = await states()
        assert all(nxt >= t0 + 120 for _, nxt in st)
        assert sink.messages == []
        # the receiver recovers; nobody touches the queue: time alone resumes delivery
        sink.mail_reply = None
        clock.advance(120)
        await wait_for(lambda: len(sink.messages) == 5, timeout=10)
        clock.advance(180)  # the one that drew the 421 keeps its own 5-minute retry
        await wait_for(lambda: len(sink.messages) == 6, timeout=10)
        assert sorted(r for m in sink.messages for r in m.rcpt_tos) == sorted(
            f"u{i}@burst.test" for i in range(6)
        )


async def _true(value: bool) -> bool:
    return value


async def _poll(cond: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_dead_destination_is_suspended_with_growing_back_off(
    spool: Spool, run_scheduler: Any, dns: DnsServer
) -> None:
    # an MX host where nothing listens: every attempt is a connection failure
    dns.add("dead.test", "MX", "10 mx.dead.test.")
    dns.add("mx.dead.test", "A", "127.0.0.9")
    async with SinkGroup(["127.0.0.2"], refuse=["127.0.0.9"]) as sinks:
        clock = TimerClock(time.time())
        t0 = clock.now()
        qids = await enqueue_many(spool, 5, t0, domain="dead.test")
        sched = await run_scheduler(
            """
            [shaping]
            poll_interval = "10ms"
            builtin = false
            [shaping.default]
            max_connections = 1
            dead_after = 2
            dead_backoff = "10m"
            """,
            sinks.port,
            clock,
        )

        async def nexts() -> list[float]:
            out = []
            for q in qids:
                info = await spool.show(q)
                assert info is not None
                r = info.recipients[0]
                out.append(r.next_attempt if r.state == "queued" else -1.0)
            return sorted(out)

        async def settled(attempts: int) -> bool:
            if sched.attempts != attempts or sched.inflight:
                return False
            return all(n > clock.now() for n in await nexts())

        await _poll(lambda: settled(2))  # two refused connections → dead
        assert (await nexts())[2:] == [t0 + 600] * 3
        clock.advance(600)
        await _poll(lambda: settled(4))
        assert min(await nexts()) >= clock.now() + 1200  # the second suspension is longer


@pytest.mark.parametrize("scheduled", [True, False])
async def test_a_scheduled_message_gets_its_lifetime_from_its_release(
    spool: Spool, run_scheduler: Any, scheduled: bool
) -> None:
    """Held 3 days with a 1-day lifetime: deferred once released, not expired; and no delay
    warning, since it has waited minutes, not days. Unscheduled, the same age expires."""
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        sink.mail_reply = "451 4.7.1 greylisted, try again later"
        clock = TimerClock(time.time())
        t0 = clock.now()
        qid = new_queue_id(t0)
        await spool.enqueue(
            PreparedMessage(
                queue_id=qid,
                sender="app@sender.test",
                recipients=(PreparedRecipient("u@burst.test"),),
                data=BODY,
                user="app",
                client_ip="127.0.0.1",
                received_at=t0,
                not_before=t0 + 3 * 86400 if scheduled else t0 + 10,
            )
        )
        await run_scheduler(
            """
            [shaping]
            poll_interval = "10ms"
            builtin = false
            max_lifetime = "1d"
            delay_warning = "4h"
            """,
            sinks.port,
            clock,
        )
        clock.advance(3 * 86400)

        async def attempted() -> bool:
            info = await spool.show(qid)
            assert info is not None
            return info.recipients[0].attempts >= 1

        await _poll(attempted)
        info = await spool.show(qid)
        assert info is not None
        rcpt = info.recipients[0]
        if scheduled:
            assert rcpt.state == "queued", rcpt
            assert t0 + 3 * 86400 < rcpt.next_attempt <= t0 + 4 * 86400
            # no delay warning to the sender: the only waiting recipient is this one
            assert [e.address for e in await spool.list(limit=10)] == ["u@burst.test"]
        else:
            assert rcpt.state == "bounced" and "expired" in rcpt.last_reply, rcpt
