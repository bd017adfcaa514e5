"""Does claiming stay cheap as the shared PostgreSQL queue grows? (claim latency vs size)

For each size, a fresh database gets that many *deferred* recipients (due over the next
five days, 10 per message, over 2,000 domains) plus 5,000 due now, loaded with COPY; then
``PgQueue.claim_due`` leases batches of 500 (median of 8, milliseconds). The claim walks the
partial ``(state, next_attempt)`` index and stops at the limit, so the figure should stay
flat from 10 k to 1 M, as ``bench.queue_scale`` shows for SQLite.

    .venv/bin/python -m bench.pg_claim_scale                  # 10k, 100k, 1M
    .venv/bin/python -m bench.pg_claim_scale --sizes 10000    # quick
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

from mtaserver.config.storage import PostgresConfig
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.queue import PgQueue
from tests.pg import PgServer, running_server

DUE_NOW = 5000
PER_MESSAGE = 10
BATCH = 500
BODY = b"From: a@b.example\r\nSubject: bench\r\n\r\n" + b"x" * 400 + b"\r\n"


async def fill(db: PgDatabase, size: int, now: float) -> float:
    rng = random.Random(size)
    t0 = time.perf_counter()
    total = size + DUE_NOW
    msgs, rcpts = [], []
    for m in range(0, total, PER_MESSAGE):
        qid = f"Q{m:015d}"
        msgs.append((qid, "a@b.example", "app", "127.0.0.1", now - 60, len(BODY), "", None,
                     1, 0, BODY, None, None))  # fmt: skip
        for k in range(min(PER_MESSAGE, total - m)):
            i = m + k
            dom = f"d{rng.randrange(2000)}.example"
            due = now - 1 if i < DUE_NOW else now + rng.uniform(60, 5 * 86400)
            rcpts.append((qid, k, f"u{i}@{dom}", dom, "queued", 1, due, "451 later", None,
                          now, None))  # fmt: skip
    cols_m = ["id", "sender", "user", "client_ip", "received_at", "size", "message_id",
              "campaign", "dsn", "is_dsn", "body", "batch_id", "release_at"]  # fmt: skip
    cols_r = ["queue_id", "idx", "address", "domain", "state", "attempts", "next_attempt",
              "last_reply", "body", "updated_at", "lease_node"]  # fmt: skip
    async with db.transaction() as conn:
        await conn.copy_records_to_table("messages", records=msgs, columns=cols_m)
        await conn.copy_records_to_table("recipients", records=rcpts, columns=cols_r)
    async with db.connection() as conn:
        await conn.execute("ANALYZE messages")
        await conn.execute("ANALYZE recipients")
    return time.perf_counter() - t0


async def one(server: PgServer, size: int, k: int) -> tuple[float, float]:
    name = f"s{k}"
    server.psql(f"CREATE DATABASE {name}")
    db = PgDatabase(PostgresConfig(dsn=server.dsn_with_password(name), tls="disable"))
    await db.open()
    try:
        now = time.time()
        filled = await fill(db, size, now)
        q = PgQueue(db, "bench")
        timings = []
        for _ in range(8):
            t0 = time.perf_counter()
            jobs = await q.claim_due(now, BATCH, 600)
            timings.append((time.perf_counter() - t0) * 1000)
            assert sum(len(j.recipients) for j in jobs) == BATCH, "not enough due work"
        return filled, statistics.median(timings)
    finally:
        await db.close()
        server.psql(f"DROP DATABASE {name}")


async def main(sizes: list[int]) -> None:
    print(f"{'deferred':>9} {'fill_s':>7} {'claim500_ms':>12}")
    with running_server() as server:
        for k, size in enumerate(sizes):
            filled, claim = await one(server, size, k)
            print(f"{size:>9} {filled:>7.1f} {claim:>12.1f}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    asyncio.run(main(ap.parse_args().sizes))
