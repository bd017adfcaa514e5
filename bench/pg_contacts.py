"""Contact import and segment count on PostgreSQL against SQLite, in one invocation.

Run: ``.venv/bin/python -m bench.pg_contacts [--n 100000]``

The same CSV of ``n`` contacts (email, name, plan, city, signup) is imported through
``import_stream`` (64 KiB chunks, incremental parsing, 1,000-row upsert chunks, one
committing while the next is parsed) into a fresh SQLite file and into a fresh database
of a private PostgreSQL server (``tests/pg.py``, loopback); then the same file again (every
row an update with the attribute merge), then segment counts over all of them, each the
best of ``--repeat`` (``plan = pro AND signup > 2026-06-01``, the date rule alone, the
equality alone; on jsonb / JSON text). The PostgreSQL baseline is COPY of the pre-built
rows into ``contacts`` (the cheapest way in). Figures: contacts/s, count milliseconds, and
PostgreSQL as a ratio to SQLite (and its import to its own COPY).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.contacts_import import OWNER, make_csv
from mtaserver.config.storage import PostgresConfig
from mtaserver.contacts import ImportParser
from mtaserver.segments import parse
from mtaserver.storage.postgres.contacts import PgContactStore
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.segments import PgSegmentStore
from mtaserver.storage.postgres.users import PgUserStore
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.segments import SegmentStore
from mtaserver.storage.sqlite.users import UserStore
from tests.pg import PgServer, running_server

DATE = {"attr": "signup", "gt": {"date": "2026-06-01"}}
FILTERS = {
    "plan+date": {"and": [{"attr": "plan", "eq": "pro"}, DATE]},
    "date": DATE,
    "plan": {"attr": "plan", "eq": "pro"},
}
REPEAT = 5


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 64 * 1024):
        yield data[i : i + 64 * 1024]


Counts = dict[str, tuple[float, int]]  # filter name -> (best seconds, matches)


async def run_store(store: Any, segs: Any, data: bytes) -> tuple[float, float, Counts]:
    t = time.perf_counter()
    first = await store.import_stream(OWNER, chunks(data), ImportParser("csv"))
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    await store.import_stream(OWNER, chunks(data), ImportParser("csv"))
    t2 = time.perf_counter() - t
    counts: Counts = {}
    for name, obj in FILTERS.items():
        best, n = float("inf"), -1
        for _ in range(REPEAT):
            t = time.perf_counter()
            n = await segs.count(OWNER, parse(obj))
            best = min(best, time.perf_counter() - t)
        counts[name] = (best, n)
    assert first.created == first.rows and not first.failed
    return t1, t2, counts


async def sqlite(path: Path, data: bytes) -> tuple[float, float, Counts]:
    db = Database(path)
    await db.open()
    try:
        await UserStore(db).add(OWNER, "scrypt$unused", ["example.test"])
        return await run_store(ContactStore(db), SegmentStore(db), data)
    finally:
        await db.close()


async def _fresh(server: PgServer) -> PgDatabase:
    name = f"b_{secrets.token_hex(4)}"
    server.psql(f"CREATE DATABASE {name}")
    db = PgDatabase(PostgresConfig(dsn=server.dsn_with_password(name), tls="disable"))
    await db.open()
    await PgUserStore(db).add(OWNER, "scrypt$unused", ["example.test"])
    return db


async def postgres(server: PgServer, data: bytes) -> tuple[float, float, Counts, float]:
    db = await _fresh(server)
    try:
        got = await run_store(PgContactStore(db), PgSegmentStore(db), data)
    finally:
        await db.close()
    base = await _fresh(server)
    rows = [line.split(",") for line in data.decode().splitlines()[1:]]
    records = [(OWNER, r[0], json.dumps({"name": r[1], "plan": r[2], "city": r[3],
                                         "signup": r[4]}), 1.0, 1.0) for r in rows]  # fmt: skip
    try:
        t = time.perf_counter()
        async with base.transaction() as conn:
            await conn.copy_records_to_table(
                "contacts", records=records,
                columns=["owner", "address", "attributes", "created_at", "updated_at"],
            )  # fmt: skip
        copy = time.perf_counter() - t
    finally:
        await base.close()
    return (*got, copy)


async def main(n: int) -> None:
    data = make_csv(n)
    with running_server() as server, tempfile.TemporaryDirectory() as tmp:
        lt1, lt2, lc = await sqlite(Path(tmp) / "mta.db", data)
        pt1, pt2, pc, copy = await postgres(server, data)
    assert {k: v[1] for k, v in lc.items()} == {k: v[1] for k, v in pc.items()}, (lc, pc)
    print(f"{n} contacts; segment matches the same on both: "
          + ", ".join(f"{k} {v[1]}" for k, v in pc.items()))  # fmt: skip
    for name, a, b in (("sqlite", lt1, lt2), ("postgresql", pt1, pt2)):
        print(f"{name:<11} import {n / a:9.0f}/s  re-import {n / b:9.0f}/s")
    print(f"postgresql  COPY baseline {n / copy:9.0f}/s")
    print(f"ratios: pg/sqlite import {lt1 / pt1:.2f}x, re-import {lt2 / pt2:.2f}x; "
          f"pg import/COPY {copy / pt1:.2f}x")  # fmt: skip
    print(f"segment count (best of {REPEAT}) {'sqlite ms':>10} {'pg ms':>8} {'pg/sqlite':>9}")
    for name in FILTERS:
        ls, ps = lc[name][0], pc[name][0]
        print(f"{name:<25} {ls * 1000:>10.1f} {ps * 1000:>8.1f} {ls / ps:>8.2f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    asyncio.run(main(ap.parse_args().n))
