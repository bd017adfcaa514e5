"""What a /metrics scrape costs as the queue grows, against `queue summary` on the same data.

Run: ``.venv/bin/python -m bench.admin_metrics [--sizes 10000,100000] [--rounds 5]``

For each size, a fresh database holds that many queued recipients (1-3 per message, spread
over 1,000 destination domains with a long tail) and as many events in the log. Measured in
one process, median of ``--rounds``:

* ``summary``: ``Spool.summary()`` — what ``mtaserver queue summary`` and
  ``GET /api/v1/queue/summary`` run (the baseline);
* ``scrape``: ``Metrics.render()`` with nothing new in the event log (queue depth by state
  and destination, oldest age, exposition);
* ``tail``: counting that many new events once (the first scrape after a burst).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from mtaserver.metrics import Metrics
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.queue import Spool


def _fill(conn: Any, recipients: int, events: int, now: float) -> None:
    msgs, rcpts, evs = [], [], []
    qn = 0
    made = 0
    while made < recipients:
        qid = f"Q{qn:015d}"
        n = 1 + qn % 3
        msgs.append((qid, "a@example.com", None, "127.0.0.1", now - qn % 7200, 100, "", None,
                     1, 0, b"x"))  # fmt: skip
        for i in range(min(n, recipients - made)):
            domain = f"d{(qn * 7 + i) % 1000 if qn % 4 else qn % 10}.test"
            rcpts.append((qid, i, f"r{i}@{domain}", domain, "queued", now, None, now))
            made += 1
        qn += 1
    conn.executemany(
        "INSERT INTO messages(id, sender, user, client_ip, received_at, size, message_id, "
        "campaign, dsn, is_dsn, body) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        msgs,
    )
    conn.executemany(
        "INSERT INTO recipients(queue_id, idx, address, domain, state, next_attempt, body, "
        "updated_at) VALUES (?,?,?,?,?,?,?,?)",
        rcpts,
    )
    for i in range(events):
        kind = ("delivered", "deferred", "open")[i % 3]
        data = {"delay": 1.5} if kind == "delivered" else {"category": "greylisted"}
        evs.append((now, kind, f"Q{i:015d}", "r0@d1.test", json.dumps(data)))
    conn.executemany(
        "INSERT INTO events(at, type, queue_id, recipient, data) VALUES (?,?,?,?,?)", evs
    )


async def _median(fn: Callable[[], Awaitable[object]], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def measure(size: int, rounds: int, directory: Path) -> dict[str, float]:
    db = Database(directory / f"bench-{size}.db")
    await db.open()
    try:
        metrics = Metrics(Spool(db), EventLog(db), top_destinations=20)
        await metrics.start()  # counting starts before the events below are written
        now = time.time()
        await db.write(lambda c: _fill(c, size, size, now))
        start = time.perf_counter()
        await metrics.tail()
        tail = time.perf_counter() - start
        spool = Spool(db)
        summary = await _median(lambda: spool.summary(now), rounds)
        scrape = await _median(metrics.render, rounds)
        queued = metrics.registry.get_sample_value(
            "mtaserver_queue_recipients", {"state": "queued"}
        )
        assert queued == size, queued
        return {"size": size, "summary": summary, "scrape": scrape, "tail": tail}
    finally:
        await db.close()


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    print("recipients  summary_ms  scrape_ms  scrape/summary  tail_ms(events=recipients)")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            r = asyncio.run(measure(size, args.rounds, Path(tmp)))
            rows.append(r)
            print(f"{size:>10}  {r['summary'] * 1000:>10.1f}  {r['scrape'] * 1000:>9.1f}  "
                  f"{r['scrape'] / r['summary']:>14.2f}  {r['tail'] * 1000:>10.1f}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
