"""The durable queue: enqueue, lease, record, operator ops, group commit, storage failure."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from mtaserver.errors import StorageError
from mtaserver.model import (
    Event,
    PreparedMessage,
    PreparedRecipient,
    RecipientState,
    RecipientUpdate,
)
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool, new_queue_id


def message(rcpts: list[str], *, qid: str | None = None, now: float = 1000.0, own: bool = False):
    return PreparedMessage(
        queue_id=qid or new_queue_id(time.time()),
        sender="app@example.com",
        recipients=tuple(
            PreparedRecipient(r, data=f"copy for {r}\r\n".encode() if own else None) for r in rcpts
        ),
        data=b"Subject: hi\r\n\r\nbody\r\n",
        user="app",
        client_ip="127.0.0.1",
        received_at=now,
    )


def test_queue_ids_are_unique_and_time_ordered() -> None:
    ids = [new_queue_id(1000.0 + i) for i in range(50)]
    assert len(set(ids)) == 50
    assert ids == sorted(ids)
    assert all(len(i) == 16 and i.isalnum() for i in ids)


async def test_enqueue_claim_record_roundtrip(spool: Spool, db: Database) -> None:
    msg = message(["a@x.example", "b@x.example", "c@y.example"])
    await spool.enqueue(msg)
    jobs = await spool.claim_due(now=1000.0, limit=100, lease_seconds=60)
    by_domain = {j.domain: j for j in jobs}
    assert set(by_domain) == {"x.example", "y.example"}
    assert [r.address for r in by_domain["x.example"].recipients] == ["a@x.example", "b@x.example"]
    assert by_domain["x.example"].data == msg.data
    # Leased work is not claimed twice.
    assert await spool.claim_due(now=1000.0, limit=100, lease_seconds=60) == []
    await spool.record(
        [
            RecipientUpdate(msg.queue_id, 0, RecipientState.DELIVERED, "250 ok"),
            RecipientUpdate(
                msg.queue_id, 1, RecipientState.QUEUED, "451 later", next_attempt=1300.0
            ),
            RecipientUpdate(msg.queue_id, 2, RecipientState.BOUNCED, "550 no"),
        ]
    )
    info = await spool.show(msg.queue_id)
    assert info is not None
    assert [(r.state, r.attempts) for r in info.recipients] == [
        ("delivered", 1), ("queued", 1), ("bounced", 1)
    ]  # fmt: skip
    assert await spool.claim_due(now=1299.0, limit=10, lease_seconds=60) == []
    again = await spool.claim_due(now=1300.0, limit=10, lease_seconds=60)
    assert [(j.domain, j.recipients[0].attempts) for j in again] == [("x.example", 1)]
    await spool.record([RecipientUpdate(msg.queue_id, 1, RecipientState.DELIVERED, "250 ok")])
    assert await spool.body(msg.queue_id) is None  # every recipient final: body dropped


async def test_per_recipient_copies_become_separate_jobs(spool: Spool) -> None:
    msg = message(["a@x.example", "b@x.example"], own=True)
    await spool.enqueue(msg)
    jobs = await spool.claim_due(now=1000.0, limit=10, lease_seconds=60)
    assert sorted(j.data for j in jobs) == [
        b"copy for a@x.example\r\n",
        b"copy for b@x.example\r\n",
    ]


async def test_expired_leases_come_back(spool: Spool) -> None:
    await spool.enqueue(message(["a@x.example"]))
    assert len(await spool.claim_due(now=1000.0, limit=10, lease_seconds=60)) == 1
    assert await spool.release_expired(now=1059.0) == 0
    assert await spool.release_expired(now=1061.0) == 1
    assert len(await spool.claim_due(now=1061.0, limit=10, lease_seconds=60)) == 1
    assert await spool.release_leases(now=1062.0) == 1


async def test_operator_ops(spool: Spool) -> None:
    msg = message(["a@x.example", "b@y.example"])
    await spool.enqueue(msg)
    assert await spool.hold(msg.queue_id) == 2
    assert await spool.claim_due(now=5000.0, limit=10, lease_seconds=60) == []
    assert {e.state for e in await spool.list()} == {"held"}
    assert await spool.release(msg.queue_id, now=1000.0) == 2
    summary = await spool.summary(now=1000.0 + 700)
    assert {row[0]: row[1] for row in summary.rows} == {"x.example": 1, "y.example": 1}
    assert summary.rows[0][2][summary.buckets.index("30m")] == 1
    assert [e.address for e in await spool.list(domain="y.example")] == ["b@y.example"]
    assert await spool.delete(msg.queue_id) == 2
    assert await spool.show(msg.queue_id) is None


async def test_accepted_event_is_written_with_the_message(spool: Spool, db: Database) -> None:
    msg = message(["a@x.example"])
    await spool.enqueue(msg)
    rows = await db.read(lambda c: c.execute("SELECT type, queue_id, data FROM events").fetchall())
    assert rows[0][0] == "accepted" and rows[0][1] == msg.queue_id
    assert '"recipients": 1' in rows[0][2]


async def test_record_returns_the_ids_of_its_events(spool: Spool, db: Database) -> None:
    """Callers link to the events they wrote (a suppression to its bounce) by these ids,
    also when other writers' events share the same group commit."""
    msgs = [message([f"a{i}@x.example", f"b{i}@x.example"]) for i in range(20)]
    await asyncio.gather(*(spool.enqueue(m) for m in msgs))

    async def one(m: PreparedMessage) -> tuple[str, Sequence[int]]:
        evs = [Event("bounced", 1000.0, m.queue_id, r.address) for r in m.recipients]
        return m.queue_id, await spool.record([], evs)

    results = await asyncio.gather(*(one(m) for m in msgs))
    assert await spool.record([], []) == range(0)
    for qid, ids in results:
        assert len(ids) == 2
        rows = await db.read(
            lambda c, ids=ids: c.execute(
                f"SELECT queue_id, recipient FROM events WHERE id IN ({ids[0]}, {ids[1]}) "
                "ORDER BY id"
            ).fetchall()
        )
        n = next(i for i, m in enumerate(msgs) if m.queue_id == qid)
        assert rows == [(qid, f"a{n}@x.example"), (qid, f"b{n}@x.example")]


async def test_concurrent_enqueues_share_commits(spool: Spool, db: Database) -> None:
    batches: list[int] = []
    db.on_commit.append(lambda _s, n: batches.append(n))
    await asyncio.gather(*(spool.enqueue(message([f"u{i}@x.example"])) for i in range(200)))
    assert sum(batches) == 200
    assert len(batches) < 100  # group commit: far fewer transactions than messages
    count = await db.read(lambda c: c.execute("SELECT count(*) FROM messages").fetchone()[0])
    assert count == 200


async def test_duplicate_id_fails_alone_without_sinking_the_batch(
    spool: Spool, db: Database
) -> None:
    await spool.enqueue(message(["a@x.example"], qid="DUP"))
    results = await asyncio.gather(
        spool.enqueue(message(["b@x.example"], qid="DUP")),
        spool.enqueue(message(["c@x.example"], qid="OK1")),
        return_exceptions=True,
    )
    assert isinstance(results[0], StorageError) and results[1] is None
    assert await spool.show("OK1") is not None


async def test_full_database_raises_storage_error_and_keeps_earlier_mail(tmp_path: Path) -> None:
    db = Database(tmp_path / "small.db")
    await db.open()
    try:
        spool = Spool(db)
        await spool.enqueue(message(["a@x.example"], qid="EARLY"))
        pages = await db.read(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await db.write(lambda c: c.execute(f"PRAGMA max_page_count={pages + 2}"))
        big = PreparedMessage(
            queue_id="BIG", sender="a@example.com", recipients=(PreparedRecipient("b@x.example"),),
            data=b"x" * 200_000, user=None, client_ip="", received_at=1.0,
        )  # fmt: skip
        with pytest.raises(StorageError) as err:
            await spool.enqueue(big)
        assert err.value.full
        assert (await spool.show("EARLY")) is not None
        assert (await spool.show("BIG")) is None
    finally:
        await db.close()


async def test_durability_pragmas_and_migrations(tmp_path: Path) -> None:
    db = Database(tmp_path / "m.db", owner=True)
    await db.open()
    assert not db.unclean_start
    mode = await db.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
    sync = await db.read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
    assert (mode, sync) == ("wal", 2)
    await db.close()
    conn = sqlite3.connect(tmp_path / "m.db")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert version == len(names) >= 1 and names[0] == "0001_core"
    # Simulate an unclean stop: the flag says the last run did not close the database.
    conn.execute("UPDATE meta SET value='0' WHERE key='clean_shutdown'")
    conn.commit()
    conn.close()
    db2 = Database(tmp_path / "m.db", owner=True)
    await db2.open()
    assert db2.unclean_start
    await db2.close()
    assert time.time() > 0
