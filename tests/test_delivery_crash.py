"""kill -9 of the daemon in the middle of delivery loses no recipient.

The queue is filled before the daemon starts; the daemon delivers to an aiosmtpd sink at a
shaped pace; SIGKILL lands while connections are busy; a fresh daemon on the same database
finishes the job. Every recipient must reach the sink, and only messages that were in
flight at the kill (at most one per worker) may arrive twice. Also with ``[server]
workers = 2``: the owner (which delivers) is killed with its submission workers beside it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import pytest

from mtaserver.model import PreparedMessage, PreparedRecipient
from mtaserver.storage.sqlite.queue import new_queue_id
from tests.support.daemon import Daemon, TestConfig, open_stores
from tests.support.mxsink import SinkGroup, eventually, wait_for

N = 600
WORKERS = 5


async def _fill(cfg: TestConfig, now: float) -> None:
    Path(cfg.data["server"]["data_dir"]).mkdir(parents=True, exist_ok=True)
    async with open_stores(cfg) as stores:
        spool = stores.spool
        await asyncio.gather(
            *(
                spool.enqueue(
                    PreparedMessage(
                        queue_id=new_queue_id(now),
                        sender="app@sender.test",
                        recipients=(PreparedRecipient(f"u{i}@dest.test"),),
                        data=f"Subject: crash {i}\r\n\r\nbody {i}\r\n".encode(),
                        user="app",
                        client_ip="127.0.0.1",
                        received_at=now,
                    )
                )
                for i in range(N)
            )
        )


async def _states(cfg: TestConfig) -> collections.Counter[str]:
    rows = await asyncio.to_thread(
        cfg.query, "SELECT state, count(*) FROM recipients GROUP BY state"
    )
    return collections.Counter({s: n for s, n in rows})


@pytest.mark.parametrize("workers", [1, 2])
async def test_kill_9_during_delivery_loses_no_recipient(tmp_path: Path, workers: int) -> None:
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        cfg = TestConfig(tmp_path, tls=False)
        cfg.set("server", workers=workers)
        cfg.set(
            "delivery",
            relay_host=f"127.0.0.2:{sinks.port}",
            tls="none",
            max_connections=WORKERS,
            nameservers=["127.0.0.1:9"],
        )
        cfg.set("shaping", poll_interval="20ms")
        cfg.set("shaping.default", max_connections=WORKERS, max_rate="150/s")
        await _fill(cfg, time.time())

        first = Daemon(cfg)
        await asyncio.to_thread(first.start)
        try:
            await wait_for(lambda: len(sink.messages) >= N // 3, timeout=30)
        finally:
            await asyncio.to_thread(first.kill)
        at_kill = len(sink.messages)
        assert at_kill < N, "everything was delivered before the kill; nothing was tested"

        second = Daemon(cfg)
        await asyncio.to_thread(second.start)
        try:
            await wait_for(
                lambda: (
                    {r for m in sink.messages for r in m.rcpt_tos}
                    >= {f"u{i}@dest.test" for i in range(N)}
                ),
                timeout=40,
            )
            # the queue agrees: every recipient delivered, none left behind
            states = await eventually(
                lambda: _states(cfg), lambda s: s["delivered"] == N, timeout=10
            )
            assert states == collections.Counter({"delivered": N})
        finally:
            code = await asyncio.to_thread(second.stop)
        assert code == 0, second.log()

    counts = collections.Counter(r for m in sink.messages for r in m.rcpt_tos)
    assert set(counts) == {f"u{i}@dest.test" for i in range(N)}  # nobody lost
    twice = [r for r, n in counts.items() if n > 1]
    assert all(counts[r] == 2 for r in twice)
    assert len(twice) <= WORKERS  # only what was in flight at the kill
