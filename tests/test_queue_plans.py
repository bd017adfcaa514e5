"""The queue's per-destination writes go by the destination's index, not through the queue.

A suspension (421 from a provider) defers every queued recipient of one destination; by the
``(state, next_attempt)`` index that walked every queued recipient of every destination,
and with a large campaign queued the writer spent its time there.
"""

from __future__ import annotations

import sqlite3

from mtaserver.model import PreparedMessage, PreparedRecipient
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool


def message(qid: str, domain: str) -> PreparedMessage:
    return PreparedMessage(
        queue_id=qid, sender="app@example.com",
        recipients=(PreparedRecipient(f"a@{domain}", None), PreparedRecipient(f"b@{domain}", None)),
        data=b"Subject: s\r\n\r\nbody\r\n", user=None, client_ip="127.0.0.1", received_at=1000.0,
    )  # fmt: skip


async def test_defer_domain_pushes_one_destination_by_its_index(db: Database) -> None:
    spool = Spool(db)
    await spool.enqueue_many([message(f"q{i}", f"d{i % 3}.example") for i in range(30)])
    traced: list[str] = []
    await db.write(lambda conn: conn.set_trace_callback(traced.append))
    try:
        assert await spool.defer_domain("D1.example", 5000.0) == 20  # 10 messages of 2
    finally:
        await db.write(lambda conn: conn.set_trace_callback(None))
    updates = [s for s in traced if s.lstrip().upper().startswith("UPDATE RECIPIENTS")]
    assert len(updates) == 1, traced

    def plan(conn: sqlite3.Connection) -> list[str]:
        return [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + updates[0])]

    assert any("recipients_domain" in step for step in await db.write(plan)), updates

    def due(conn: sqlite3.Connection) -> dict[str, set[float]]:
        out: dict[str, set[float]] = {}
        for domain, at in conn.execute("SELECT domain, next_attempt FROM recipients"):
            out.setdefault(domain, set()).add(at)
        return out

    times = await db.write(due)
    assert times["d1.example"] == {5000.0}
    assert 5000.0 not in times["d0.example"] | times["d2.example"]
