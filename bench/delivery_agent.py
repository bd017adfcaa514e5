"""Delivery agent throughput against Postfix's smtp-sink, with a naive-client baseline.

Three senders deliver the same N messages (4 KB, one recipient each) over C concurrent
workers to ``smtp-sink`` on a loopback high port, in one invocation:

* ``aiosmtplib.send``: the baseline — one new connection per message (what a simple
  client does), no MX lookup;
* ``agent, no reuse``: ``DeliveryAgent`` with ``max_messages_per_connection = 1``;
* ``agent, reuse``: ``DeliveryAgent`` with ``max_messages_per_connection = 100`` (pooled
  connections, RSET between messages).

The agent routes through a static resolver (no DNS), so what is measured is the SMTP
client path: connect, EHLO, MAIL/RCPT/DATA, result values.

    .venv/bin/python -m bench.delivery_agent              # 5,000 messages, 20 workers
    .venv/bin/python -m bench.delivery_agent -n 500 -c 5
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable

import aiosmtplib

from mtaserver.clock import SystemClock
from mtaserver.delivery import DeliveryAgent
from mtaserver.model import (
    DeliveryJob,
    Disposition,
    JobRecipient,
    MxHost,
    Route,
    RouteError,
    RoutePolicy,
)


class StaticResolver:
    """Every domain routes to 127.0.0.1."""

    async def route(self, domain: str) -> Route | RouteError:
        return Route(domain, (MxHost("sink.bench.test", 10, ("127.0.0.1",)),))

    async def host(self, name: str) -> Route | RouteError:
        return Route(name, (MxHost(name, 0, ("127.0.0.1",)),))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def message(i: int, size: int = 4096) -> bytes:
    head = (
        f"From: bench@sender.test\r\nTo: rcpt@dest.test\r\nSubject: bench {i}\r\n"
        f"Message-ID: <{i}@sender.test>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * ((size - len(head)) // len(line))


async def run_workers(n: int, c: int, one: Callable[[int], Awaitable[bool]]) -> tuple[float, int]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    ok = 0

    async def worker() -> None:
        nonlocal ok
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if await one(i):
                ok += 1

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(c):
            tg.create_task(worker())
    return time.perf_counter() - start, ok


async def baseline(port: int, n: int, c: int) -> tuple[float, int]:
    async def one(i: int) -> bool:
        await aiosmtplib.send(
            message(i),
            sender="bench@sender.test",
            recipients=["rcpt@dest.test"],
            hostname="127.0.0.1",
            port=port,
            start_tls=False,
            local_hostname="bench.test",
        )
        return True

    return await run_workers(n, c, one)


async def agent_run(port: int, n: int, c: int, per_conn: int) -> tuple[float, int]:
    agent = DeliveryAgent(StaticResolver(), SystemClock(), hostname="bench.test")
    policy = RoutePolicy(tls="none", port=port, max_messages_per_connection=per_conn)

    async def one(i: int) -> bool:
        job = DeliveryJob(
            queue_id=f"q{i}",
            sender="bench@sender.test",
            domain="dest.test",
            recipients=(JobRecipient(0, "rcpt@dest.test", 0),),
            data=message(i),
            received_at=0.0,
            lease_until=0.0,
        )
        report = await agent.deliver(job, policy)
        return report.results[0].disposition is Disposition.DELIVERED

    try:
        return await run_workers(n, c, one)
    finally:
        await agent.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=5000, help="messages per sender")
    ap.add_argument("-c", type=int, default=20, help="concurrent workers")
    args = ap.parse_args()
    sink_bin = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    port = free_port()
    sink = subprocess.Popen(
        [sink_bin, "-u", "nobody", f"127.0.0.1:{port}", "1024"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        runs = [
            ("aiosmtplib.send (baseline)", lambda: baseline(port, args.n, args.c)),
            ("agent, no reuse", lambda: agent_run(port, args.n, args.c, 1)),
            ("agent, reuse (100/conn)", lambda: agent_run(port, args.n, args.c, 100)),
        ]
        print(f"{args.n} messages of 4 KB, {args.c} workers, to smtp-sink on 127.0.0.1")
        print(f"{'sender':<28} {'msg/s':>8} {'seconds':>8} {'delivered':>10} {'ratio':>6}")
        base_rate = 0.0
        for name, fn in runs:
            seconds, ok = asyncio.run(fn())
            rate = ok / seconds if seconds else 0.0
            base_rate = base_rate or rate
            print(f"{name:<28} {rate:>8.0f} {seconds:>8.2f} {ok:>10} {rate / base_rate:>6.2f}")
    finally:
        sink.terminate()
        sink.wait(5)


if __name__ == "__main__":
    main()
