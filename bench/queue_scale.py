"""Does picking due work stay cheap as the queue grows? (claim latency and RSS vs queue size)

For each size, a fresh database is filled (bulk insert through the spool's ``db.write``) with
that many *deferred* recipients spread over many destination domains — due at random times
over the next five days — plus a fixed 5,000 recipients due now. A fresh process then opens
it the way the daemon does and reports:

* ``claim``: milliseconds for ``Spool.claim_due`` to lease one batch of 500 due recipients
  (median of 8 batches);
* ``loop``: the real ``Scheduler`` run for a few seconds over that queue with an agent that
  defers everything at once (so every claim is followed by a record): recipients handled
  per second;
* ``rss``: the measuring process's resident memory after that run (``VmHWM``, peak).

    .venv/bin/python -m bench.queue_scale                 # 10k, 100k, 1M
    .venv/bin/python -m bench.queue_scale --sizes 10000   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mtaserver.classify import classify
from mtaserver.config.shaping import ShapingConfig, load_builtin
from mtaserver.model import (
    DeliveryJob,
    DeliveryReport,
    Disposition,
    RecipientResult,
    RoutePolicy,
    SmtpReply,
)
from mtaserver.scheduler import Scheduler
from mtaserver.shaper import Shaper
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool, new_queue_id

DUE_NOW = 5000
RCPTS_PER_MESSAGE = 10
DOMAINS = 2000
BATCH = 500
BODY = b"From: a@b.example\r\nSubject: bench\r\n\r\n" + b"x" * 400 + b"\r\n"


async def fill(path: Path, size: int, now: float) -> float:
    db = Database(path)
    await db.open()
    t0 = time.perf_counter()
    rng = random.Random(size)
    domains = [f"d{i}.example" for i in range(DOMAINS)]
    total = size + DUE_NOW
    chunk = 20_000
    done = 0
    while done < total:
        n = min(chunk, total - done)
        msgs = []
        rcpts = []
        for m in range(0, n, RCPTS_PER_MESSAGE):
            received = now - rng.uniform(0, 86400)
            qid = new_queue_id(received)
            msgs.append((qid, "sender@app.example", "app", "127.0.0.1", received, len(BODY), BODY))
            for k in range(min(RCPTS_PER_MESSAGE, n - m)):
                i = done + m + k
                dom = domains[rng.randrange(DOMAINS)]
                due = now - 1 if i < DUE_NOW else now + rng.uniform(60, 5 * 86400)
                rcpts.append((qid, k, f"u{i}@{dom}", dom, "queued", 1, due, "451 later", now))

        def op(conn: sqlite3.Connection, msgs: list = msgs, rcpts: list = rcpts) -> None:  # type: ignore[type-arg]
            conn.executemany(
                "INSERT INTO messages(id, sender, user, client_ip, received_at, size, body) "
                "VALUES (?,?,?,?,?,?,?)",
                msgs,
            )
            conn.executemany(
                "INSERT INTO recipients(queue_id, idx, address, domain, state, attempts, "
                "next_attempt, last_reply, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                rcpts,
            )

        await db.write(op)
        done += n
    await db.close()
    return time.perf_counter() - t0


class DeferAll:
    """An agent that answers 451 for everybody at once: the scheduler's own cost only."""

    async def deliver(self, job: DeliveryJob, policy: RoutePolicy) -> DeliveryReport:
        now = time.time()
        reply = SmtpReply(451, "try again later", "4.3.0")
        results = tuple(
            RecipientResult(r.idx, r.address, Disposition.DEFERRED, reply) for r in job.recipients
        )
        return DeliveryReport(job.queue_id, job.domain, results, now, now)


def rss_kib(field: str = "VmHWM") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def measure(path: Path, seconds: float) -> dict[str, float]:
    db = Database(path)
    await db.open()
    spool = Spool(db)
    now = time.time()
    timings = []
    for _ in range(8):
        t0 = time.perf_counter()
        jobs = await spool.claim_due(now, BATCH, 600)
        timings.append((time.perf_counter() - t0) * 1000)
        assert sum(len(j.recipients) for j in jobs) == BATCH, "not enough due work"
    await spool.release_leases(now - 1)
    # the real scheduler over the whole queue for a few seconds
    from mtaserver.clock import SystemClock

    clock = SystemClock()
    cfg = ShapingConfig()
    dests, rules = load_builtin()
    shaper = Shaper(
        cfg, clock, max_connections=200, builtin_destinations=dests, builtin_rules=rules
    )
    sched = Scheduler(
        spool=spool,
        agent=DeferAll(),
        shaper=shaper,
        clock=clock,
        retry=cfg.retry,
        settings=cfg.scheduler,
        route=RoutePolicy(),
        classify=classify,
        workers=200,
        lease=600.0,
        hostname="bench.example",
        new_queue_id=new_queue_id,
    )
    task = asyncio.create_task(sched.run())
    before = await _handled(db)
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    await sched.drain(10)
    await task
    elapsed = time.perf_counter() - t0
    handled = await _handled(db) - before
    await db.close()
    return {
        "claim_ms": statistics.median(timings),
        "claim_ms_max": max(timings),
        "loop_per_s": handled / elapsed,
        "rss_mib": rss_kib() / 1024,
    }


async def _handled(db: Database) -> int:
    def fn(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT coalesce(sum(attempts), 0) FROM recipients").fetchone()[0])

    return await db.read(fn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--seconds", type=float, default=3.0, help="scheduler run per size")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(asyncio.run(measure(Path(args.measure), args.seconds))))
        return
    print(f"{'deferred':>10} {'fill s':>7} {'db MiB':>7} {'claim ms':>9} {'max ms':>7} "
          f"{'loop rcpt/s':>11} {'RSS MiB':>8}")  # fmt: skip
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="mta-qscale-") as tmp:
            path = Path(tmp) / "mtaserver.db"
            fill_s = asyncio.run(fill(path, size, time.time()))
            out = subprocess.run(
                [sys.executable, "-m", "bench.queue_scale", "--measure", str(path),
                 "--seconds", str(args.seconds)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            size_mib = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2**20
            print(f"{size:>10} {fill_s:>7.1f} {size_mib:>7.0f} {r['claim_ms']:>9.1f} "
                  f"{r['claim_ms_max']:>7.1f} {r['loop_per_s']:>11.0f} {r['rss_mib']:>8.1f}",
                  flush=True)  # fmt: skip
    print(f"(batch {BATCH} due recipients of {DUE_NOW} due, {DOMAINS} domains, "
          f"{RCPTS_PER_MESSAGE} recipients per message, pid {os.getpid()})")  # fmt: skip


if __name__ == "__main__":
    main()
