"""Event ingestion with triggers evaluated, against a raw executemany baseline.

    .venv/bin/python -m bench.events [N]

Stores N events (batches of 1,000, as ``POST /v1/events`` takes them) for 1,000 contacts
through ``JourneyStore.record_events`` with three triggers (one starting a 2-step
sequence on a tenth of the events, one cancelled by another tenth), then the same rows
with one raw ``executemany`` per batch into ``contact_events`` on a second database.
Prints events/s of each and the ratio (goal: >= 5,000 events/s with triggers).
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from mtaserver.auth import hash_password
from mtaserver.contacts import ContactInput
from mtaserver.journeys import EventInput, trigger_from_json
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.journeys import JourneyStore
from mtaserver.storage.sqlite.users import UserStore

BATCH = 1000
CONTACTS = 1000


def events(n: int, now: float) -> list[EventInput]:
    names = ["page_view"] * 8 + ["cart", "purchase"]
    return [EventInput(f"c{i % CONTACTS}@bench.test", names[i % 10], '{"sku":"A-1"}',
                       now - 60 + i * 1e-4) for i in range(n)]  # fmt: skip


async def ours(path: Path, n: int) -> float:
    db = Database(path)
    await db.open()
    try:
        await UserStore(db).add("u", hash_password("x" * 12, n=2**10), ["bench.test"])
        rows = [ContactInput(f"c{i}@bench.test", "{}", None) for i in range(CONTACTS)]
        await ContactStore(db).upsert_many("u", rows)
        store = JourneyStore(db)
        for name, doc in (
            ("cart", {"event": "cart", "cancel": ["purchase"], "once_per": "1h",
                      "steps": [{"wait": "1h", "template": "r"}, {"wait": "1d", "template": "s"}]}),
            ("welcome", {"event": "signup", "steps": [{"wait": "0s", "template": "w"}]}),
            ("pro", {"event": "cart", "match": {"plan": "pro"}, "steps": [{"template": "p"}]}),
        ):  # fmt: skip
            await store.put_trigger("u", trigger_from_json({**doc, "from": "a@bench.test"}, name))
        evs = events(n, time.time())
        started = time.perf_counter()
        for i in range(0, n, BATCH):
            await store.record_events("u", evs[i : i + BATCH])
        return n / (time.perf_counter() - started)
    finally:
        await db.close()


async def baseline(path: Path, n: int) -> float:
    db = Database(path)
    await db.open()
    await UserStore(db).add("u", hash_password("x" * 12, n=2**10), ["bench.test"])
    rows = [ContactInput(f"c{i}@bench.test", "{}", None) for i in range(CONTACTS)]
    await ContactStore(db).upsert_many("u", rows)
    await db.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    ids = dict(conn.execute("SELECT address, id FROM contacts").fetchall())
    evs = events(n, time.time())
    now = time.time()
    started = time.perf_counter()
    for i in range(0, n, BATCH):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO contact_events (contact_id, name, properties, occurred_at, received_at)"
            " VALUES (?,?,?,?,?)",
            [(ids[e.address], e.name, e.properties, e.occurred_at, now)
             for e in evs[i : i + BATCH]],
        )  # fmt: skip
        conn.execute("COMMIT")
    rate = n / (time.perf_counter() - started)
    conn.close()
    return rate


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = await baseline(Path(tmp) / "raw.db", n)
        mine = await ours(Path(tmp) / "ours.db", n)
    print(f"events: {n}, batch {BATCH}, {CONTACTS} contacts, 3 triggers")
    print(f"raw executemany baseline: {base:,.0f} events/s")
    print(f"record_events (triggers evaluated): {mine:,.0f} events/s")
    print(
        f"ratio: {mine / base:.2f}  goal >= 5,000 events/s: {'met' if mine >= 5000 else 'NOT met'}"
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))
