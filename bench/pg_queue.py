"""Where should queued bodies live on a PostgreSQL cluster? (enqueue and claim+record cost)

One invocation, same machine, same messages, three ways:

* ``sqlite``: the single-node baseline (``Spool`` on a SQLite file, group commit);
* ``pg-bytea``: the shared queue with the body in PostgreSQL (``PgQueue``, what ships);
* ``pg-local``: the shared queue holding only the envelope, the body in this node's local
  spool directory (one file per message: write, fsync, rename, fsync the directory —
  durable before 250 like the database) and read back from the file at claim.

For each body size, ``concurrency`` sessions enqueue ``n`` one-recipient messages; then the
queue is drained by claiming batches of 100 and recording every recipient delivered.
Figures are messages per second and the ratio to the SQLite baseline of the same run.

    .venv/bin/python -m bench.pg_queue                       # 2,000 messages, 2 KiB and 50 KiB
    .venv/bin/python -m bench.pg_queue --n 10000 --sizes 2048
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mtaserver.config.storage import PostgresConfig
from mtaserver.model import PreparedMessage, PreparedRecipient, RecipientState, RecipientUpdate
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.queue import PgQueue
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from tests.pg import PgServer, running_server


def messages(n: int, size: int) -> list[PreparedMessage]:
    body = b"From: a@app.example\r\nSubject: bench\r\n\r\n" + b"x" * size + b"\r\n"
    now = time.time()
    return [
        PreparedMessage(
            queue_id=new_queue_id(now), sender="a@app.example",
            recipients=(PreparedRecipient(f"u{i}@d{i % 50}.example"),), data=body,
            user="app", client_ip="127.0.0.1", received_at=now - 1,
        )
        for i in range(n)
    ]  # fmt: skip


class LocalBodies:
    """A node-local body store: one fsynced file per message, as a spool directory would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.dirfd = os.open(root, os.O_RDONLY)

    def put(self, qid: str, data: bytes) -> None:
        tmp = self.root / f".{qid}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.root / qid)
        os.fsync(self.dirfd)

    def get(self, qid: str) -> bytes:
        return (self.root / qid).read_bytes()


async def run(
    enqueue: Callable[[PreparedMessage], Awaitable[None]],
    claim: Callable[[], Awaitable[list[Any]]],
    record: Callable[[list[RecipientUpdate]], Awaitable[Any]],
    msgs: list[PreparedMessage],
    concurrency: int,
) -> tuple[float, float]:
    it = iter(msgs)

    async def session() -> None:
        for m in it:
            await enqueue(m)

    t0 = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(concurrency)))
    t1 = time.perf_counter()
    done = 0
    while done < len(msgs):
        jobs = await claim()
        assert jobs, f"queue drained early: {done} of {len(msgs)}"
        await record(
            [
                RecipientUpdate(j.queue_id, r.idx, RecipientState.DELIVERED, "250 ok")
                for j in jobs
                for r in j.recipients
            ]
        )
        done += len(jobs)
    t2 = time.perf_counter()
    return len(msgs) / (t1 - t0), len(msgs) / (t2 - t1)


async def sqlite_case(tmp: Path, msgs: list[PreparedMessage], c: int) -> tuple[float, float]:
    db = Database(tmp / "bench.db")
    await db.open()
    try:
        spool = Spool(db)
        now = time.time() + 5
        return await run(
            spool.enqueue, lambda: spool.claim_due(now, 100, 600), spool.record, msgs, c
        )
    finally:
        await db.close()


async def pg_case(
    server: PgServer, name: str, msgs: list[PreparedMessage], c: int, local: LocalBodies | None
) -> tuple[float, float]:
    server.psql(f"CREATE DATABASE {name}")
    db = PgDatabase(PostgresConfig(dsn=server.dsn_with_password(name), tls="disable", pool_size=c))
    await db.open()
    try:
        q = PgQueue(db, "bench")
        now = time.time() + 5

        async def enqueue(m: PreparedMessage) -> None:
            if local is None:
                await q.enqueue(m)
                return
            await asyncio.to_thread(local.put, m.queue_id, m.data)
            await q.enqueue(replace(m, data=b""))

        async def claim() -> list[Any]:
            jobs = await q.claim_due(now, 100, 600)
            if local is not None:
                bodies = [await asyncio.to_thread(local.get, j.queue_id) for j in jobs]
                assert all(bodies)
            return jobs

        return await run(enqueue, claim, q.record, msgs, c)
    finally:
        await db.close()


async def main(n: int, sizes: list[int], concurrency: int) -> None:
    print(f"{'body':>7} {'backend':>9} {'enqueue/s':>10} {'x sqlite':>8} {'claim+rec/s':>12} "
          f"{'x sqlite':>8}")  # fmt: skip
    with running_server() as server, tempfile.TemporaryDirectory() as tmpdir:
        for k, size in enumerate(sizes):
            tmp = Path(tmpdir) / str(size)
            tmp.mkdir()
            base = await sqlite_case(tmp, messages(n, size), concurrency)
            rows = [("sqlite", base)]
            rows.append(("pg-bytea", await pg_case(server, f"b{k}", messages(n, size),
                                                   concurrency, None)))  # fmt: skip
            local = LocalBodies(tmp / "spool")
            rows.append(("pg-local", await pg_case(server, f"l{k}", messages(n, size),
                                                   concurrency, local)))  # fmt: skip
            for label, (enq, drain) in rows:
                print(f"{size:>7} {label:>9} {enq:>10.0f} {enq / base[0]:>8.2f} {drain:>12.0f} "
                      f"{drain / base[1]:>8.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 51200])
    ap.add_argument("--concurrency", type=int, default=32)
    a = ap.parse_args()
    asyncio.run(main(a.n, a.sizes, a.concurrency))
