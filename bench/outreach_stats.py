"""Per-campaign stats at scale, against the tag cohort's read over the same messages.

Run: ``.venv/bin/python -m bench.outreach_stats [--n 100000] [--repeat 3]``

One database (migrated by :class:`Database`, WAL) holds one campaign run of ``n`` queued
messages, one recipient each, tagged with the campaign's name, and their outcomes as the
delivery and tracking stages record them: every message delivered (2% bounced instead,
hard and soft), 30% opened (a third of those by an image proxy too), 10% clicked, 0.5%
unsubscribed, 0.1% complained — about 1.5 events per message. The rows are written with
bulk SQL (a benchmark's fixture, not the owners' paths, which are tested elsewhere).

Two reads on the reader connection, best of ``--repeat``:

- baseline: ``storage.sqlite.reports.cohort_stats`` for the campaign's tag and owner
  (what ``mtaserver stats --campaign TAG --user U`` ran before campaigns had their own);
- campaign: ``storage.sqlite.outreach_stats.campaign_report`` (``mtaserver stats
  --campaign NAME --user U``, ``GET /api/v1/campaigns/{name}/stats``): run by run, bounce
  classes, human and machine opens and clicks.

Goal: the campaign report within 2x of the cohort read (it reads the same events, plus
the campaign's snapshot rows and the bounce classes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.outreach_stats import campaign_report
from mtaserver.storage.sqlite.reports import cohort_stats

OWNER = "bench"
NAME = "spring"
T0 = 1_800_000_000.0


def build(path: Path, n: int) -> None:
    async def migrate() -> None:
        db = Database(path)
        await db.open()
        await db.close()

    asyncio.run(migrate())
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        with conn:
            conn.execute("INSERT INTO users VALUES (?, 'x', ?, ?)", (OWNER, T0, T0))
            conn.executemany(
                "INSERT INTO contacts(id, owner, address, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                ((i, OWNER, f"c{i}@dest.test", T0, T0) for i in range(n)),
            )
            conn.execute(
                "INSERT INTO campaigns(id, owner, name, template, from_email, audience_kind, "
                "audience, schedule, status, created_at, updated_at) VALUES "
                "(1, ?, ?, 't', 'news@example.com', 'list', 'all', 'once', 'done', ?, ?)",
                (OWNER, NAME, T0, T0),
            )
            conn.execute(
                "INSERT INTO campaign_runs(id, campaign_id, fire_at, status, audience, "
                "queued, started_at) VALUES (1, 1, ?, 'done', ?, ?, ?)",
                (T0, n, n, T0),
            )
            qid = [f"Q{i:015d}" for i in range(n)]
            conn.executemany(
                "INSERT INTO campaign_recipients(run_id, contact_id, address, state, queue_id) "
                "VALUES (1, ?, ?, 'queued', ?)",
                ((i, f"c{i}@dest.test", qid[i]) for i in range(n)),
            )
            conn.executemany(
                "INSERT INTO messages(id, sender, user, received_at, size, campaign) "
                "VALUES (?, 'news@example.com', ?, ?, 1000, ?)",
                ((qid[i], OWNER, T0, NAME) for i in range(n)),
            )
            conn.executemany(
                "INSERT INTO recipients(queue_id, idx, address, domain, state, next_attempt, "
                "updated_at) VALUES (?, 0, ?, 'dest.test', 'delivered', 0, ?)",
                ((qid[i], f"c{i}@dest.test", T0) for i in range(n)),
            )
            conn.executemany(
                "INSERT INTO events(at, type, queue_id, recipient, data) VALUES (?,?,?,?,?)",
                (row for i in range(n) for row in _events(i, qid[i])),
            )
    finally:
        conn.close()


def _events(i: int, qid: str) -> list[tuple[float, str, str, str, str]]:
    a = f"c{i}@dest.test"
    hit = json.dumps({"idx": 0, "campaign": NAME, "user": OWNER, "machine": False})
    bot = json.dumps({"idx": 0, "campaign": NAME, "user": OWNER, "machine": True})
    if i % 50 == 0:
        kind, cat, why = ("hard", "unknown-recipient", "userunknown") if i % 100 == 0 else (
            "soft", "mailbox-full", "mailboxfull")  # fmt: skip
        data = json.dumps({"source": "sync", "kind": kind, "category": cat, "reason": why})
        return [(T0 + 1, "bounced", qid, a, data)]
    out = [(T0 + 1, "delivered", qid, a, "{}")]
    if i % 10 < 3:
        out.append((T0 + 60, "open", qid, a, hit))
        if i % 30 == 0:
            out.append((T0 + 2, "open", qid, a, bot))
    if i % 10 == 5:
        out.append((T0 + 90, "click", qid, a, hit))
    if i % 200 == 7:
        out.append((T0 + 120, "unsubscribe", qid, a, '{"idx": 0}'))
    if i % 1000 == 9:
        out.append((T0 + 130, "complaint", qid, a, '{"idx": 0}'))
    return out


def best(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="messages in the campaign")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mta.db"
        t = time.perf_counter()
        build(path, args.n)
        print(f"built {args.n} messages in {time.perf_counter() - t:.1f} s")
        conn = sqlite3.connect(path)
        try:
            cohort = cohort_stats(conn, campaign=NAME, user=OWNER)
            rep = campaign_report(conn, OWNER, NAME)
            assert rep is not None and rep.total.queued == cohort.messages == args.n
            assert rep.total.delivered == cohort.delivered
            assert rep.total.opens.unique_human == cohort.unique_human_opens
            base = best(lambda: cohort_stats(conn, campaign=NAME, user=OWNER), args.repeat)
            mine = best(lambda: campaign_report(conn, OWNER, NAME), args.repeat)
        finally:
            conn.close()
    print(f"baseline cohort_stats(tag, user): {base * 1000:.0f} ms")
    print(f"campaign_report(user, name):      {mine * 1000:.0f} ms  "
          f"({args.n / mine:,.0f} messages/s)")  # fmt: skip
    print(f"ratio campaign/baseline: {mine / base:.2f}x  (goal <= 2x)")


if __name__ == "__main__":
    main()
