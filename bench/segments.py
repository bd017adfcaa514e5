"""Segment count and page-through: ``SegmentStore`` against hand-written SQL on the same data.

Run: ``.venv/bin/python -m bench.segments [--n 100000]``

One database (WAL, ``synchronous=FULL``) holds ``n`` contacts of the measured owner and
``n / 5`` of another owner with the same attributes, one message per 1,000 contacts
and an open event for every fifth contact. Two segments are measured, each two ways:

- ``attrs``: ``plan = pro and age >= 30 and consent = subscribed``;
- ``engaged``: ``plan = pro and opened in the last 30 days``.

Baseline: the SQL a person would write for that question (``json_extract(attributes,
'$.plan') = 'pro'`` …, a keyset loop over ``(owner, address)``) on a plain connection.
Ours: the compiled filter through the store, ``count()`` and ``page()`` 1,000 rows at a
time through the database's reader thread — what ``/v1/segments/{name}/contacts`` and a
campaign snapshot cost. The compiled SQL also reads numbers stored as text (a CSV import
stores ``"34"``), which the baseline does not; the figures show what that costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from mtaserver.auth import hash_password
from mtaserver.segments import parse
from mtaserver.storage.sqlite.db import Database, configure
from mtaserver.storage.sqlite.segments import SegmentStore
from mtaserver.storage.sqlite.users import UserStore

OWNER, OTHER = "bench", "other"
DAY = 86400.0
ATTRS = {"and": [{"attr": "plan", "eq": "pro"}, {"attr": "age", "gte": 30},
                 {"consent": "subscribed"}]}  # fmt: skip
ENGAGED = {"and": [{"attr": "plan", "eq": "pro"}, {"opened": {"days": 30}}]}
RAW = {
    "attrs": "json_extract(attributes, '$.plan') = 'pro' AND json_extract(attributes, '$.age') "
    ">= 30 AND consent_status = 'subscribed'",
    "engaged": "json_extract(attributes, '$.plan') = 'pro' AND address IN (SELECT "
    "lower(e.recipient) FROM events e JOIN messages m ON m.id = e.queue_id WHERE "
    "m.user = :owner AND e.type = 'open' AND e.at >= :since)",
}


def fill(path: Path, n: int, now: float) -> None:
    """Contacts, messages and open events, written the quickest way (bench set-up only)."""
    conn = sqlite3.connect(path, isolation_level=None)
    configure(conn)
    conn.execute("BEGIN IMMEDIATE")
    for owner, count in ((OWNER, n), (OTHER, n // 5)):
        conn.executemany(
            "INSERT INTO contacts (owner, address, attributes, consent_status, created_at, "
            "updated_at) VALUES (?,?,?,?,?,?)",
            [(owner, f"user{i:07d}@example{i % 97}.test",
              json.dumps({"plan": "pro" if i % 3 == 0 else "free", "age": 18 + i % 60,
                          "signup": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}"}),
              "unsubscribed" if i % 10 == 0 else "subscribed", now, now)
             for i in range(count)],
        )  # fmt: skip
        for m in range(0, count, 1000):
            qid = f"{owner[:2]}{m:014d}"
            conn.execute(
                "INSERT INTO messages (id, sender, user, received_at, size) VALUES (?,?,?,?,?)",
                (qid, "news@example.test", owner, now - 10 * DAY, 1000),
            )
            conn.executemany(
                "INSERT INTO events (at, type, queue_id, recipient) VALUES (?,?,?,?)",
                [(now - (i % 40) * DAY, "open", qid, f"user{i:07d}@example{i % 97}.test")
                 for i in range(m, min(count, m + 1000)) if i % 5 == 0],
            )  # fmt: skip
    conn.execute("COMMIT")
    conn.close()


def raw(path: Path, name: str, now: float) -> tuple[int, float, float]:
    """(matches, count seconds, page-through seconds) of the hand-written query."""
    conn = sqlite3.connect(path)
    configure(conn)
    args = {"owner": OWNER, "since": now - 30 * DAY}
    where = f"owner = :owner AND {RAW[name]}"
    t0 = time.perf_counter()
    total = conn.execute(f"SELECT count(*) FROM contacts WHERE {where}", args).fetchone()[0]
    t1 = time.perf_counter()
    seen, after = 0, ""
    sql = f"SELECT id, address FROM contacts WHERE {where} AND address > :after "
    sql += "ORDER BY address LIMIT 1000"
    while rows := conn.execute(sql, {**args, "after": after}).fetchall():
        seen += len(rows)
        after = rows[-1][1]
    t2 = time.perf_counter()
    conn.close()
    assert seen == total
    return total, t1 - t0, t2 - t1


class _Clock:
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


async def ours(db: Database, name: str, now: float) -> tuple[int, float, float]:
    store = SegmentStore(db, _Clock(now))
    flt = parse(ATTRS if name == "attrs" else ENGAGED)
    t0 = time.perf_counter()
    total = await store.count(OWNER, flt)
    t1 = time.perf_counter()
    seen, after = 0, None
    while rows := await store.page(OWNER, flt, after, 1000):
        seen += len(rows)
        after = rows[-1][1]
    t2 = time.perf_counter()
    assert seen == total
    return total, t1 - t0, t2 - t1


async def run(n: int) -> dict[str, tuple[float, float]]:
    """Per segment: (count ratio, page-through ratio), ours / baseline time."""
    out: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-segments-") as tmp:
        path = Path(tmp) / "seg.db"
        db = Database(path)
        await db.open()
        try:
            pw = hash_password("bench password", n=2**10)
            await UserStore(db).add(OWNER, pw, ["example.test"])
            await UserStore(db).add(OTHER, pw, ["example.org"])
            now = time.time()
            await asyncio.to_thread(fill, path, n, now)
            print(f"segments: {n} contacts of the owner (+{n // 5} of another), "
                  "page = 1000 rows")  # fmt: skip
            print(f"{'segment':<9} {'matches':>8} {'count raw':>10} {'ours':>8} {'x':>6} "
                  f"{'pages raw':>10} {'ours':>8} {'x':>6} {'rows/s ours':>12}")  # fmt: skip
            for name in ("attrs", "engaged"):
                total, c_raw, p_raw = await asyncio.to_thread(raw, path, name, now)
                got, c_ours, p_ours = await ours(db, name, now)
                assert got == total, (name, got, total)
                out[name] = (c_ours / c_raw, p_ours / p_raw)
                print(f"{name:<9} {total:>8} {c_raw * 1000:>8.1f}ms {c_ours * 1000:>6.1f}ms "
                      f"{c_ours / c_raw:>5.2f}x {p_raw * 1000:>8.1f}ms {p_ours * 1000:>6.1f}ms "
                      f"{p_ours / p_raw:>5.2f}x {total / p_ours:>12.0f}")  # fmt: skip
        finally:
            await db.close()
    return out


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000, help="contacts of the measured owner")
    args = ap.parse_args(argv)
    return asyncio.run(run(args.n))


if __name__ == "__main__":
    main()
