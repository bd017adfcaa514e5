"""The queue's support for the HTTP send API: many messages in one transaction, scheduled
sends (``not_before``) and send batches (cancel, pause, resume), on a real database."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace

import pytest

from mtaserver.errors import StorageError
from mtaserver.model import PreparedMessage, PreparedRecipient, RecipientState, RecipientUpdate
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool, new_queue_id


def message(rcpts: list[str], *, now: float = 1000.0, **kw: object) -> PreparedMessage:
    return PreparedMessage(
        queue_id=new_queue_id(time.time()),
        sender="app@example.com",
        recipients=tuple(PreparedRecipient(r) for r in rcpts),
        data=b"Subject: hi\r\n\r\nbody\r\n",
        user="app",
        client_ip="127.0.0.1",
        received_at=now,
        **kw,  # type: ignore[arg-type]
    )


async def states(spool: Spool, qid: str) -> list[str]:
    info = await spool.show(qid)
    assert info is not None
    return [r.state for r in info.recipients]


async def event_types(db: Database, qid: str) -> list[str]:
    rows = await db.read(
        lambda c: c.execute(
            "SELECT type FROM events WHERE queue_id=? ORDER BY id", (qid,)
        ).fetchall()
    )
    return [r[0] for r in rows]


async def test_enqueue_many_commits_every_message(spool: Spool, db: Database) -> None:
    msgs = [message([f"r{i}@x.example"]) for i in range(300)]
    await spool.enqueue_many(msgs)
    jobs = await spool.claim_due(now=1000.0, limit=1000, lease_seconds=60)
    assert sorted(j.queue_id for j in jobs) == sorted(m.queue_id for m in msgs)
    assert await event_types(db, msgs[7].queue_id) == ["accepted"]


async def test_enqueue_many_is_all_or_nothing(spool: Spool, db: Database) -> None:
    good = [message([f"r{i}@x.example"]) for i in range(5)]
    clash = replace(good[0], recipients=(PreparedRecipient("other@x.example"),))
    with pytest.raises(StorageError):
        await spool.enqueue_many([*good, clash])  # the last one reuses a queue id
    assert await spool.claim_due(now=2000.0, limit=100, lease_seconds=60) == []
    for m in good:
        assert await spool.show(m.queue_id) is None
        assert await event_types(db, m.queue_id) == []


async def test_a_failing_companion_write_stores_nothing(spool: Spool) -> None:
    class Refused(Exception):
        pass

    def also(conn: sqlite3.Connection) -> None:
        raise Refused

    msgs = [message(["a@x.example"]), message(["b@x.example"])]
    with pytest.raises(Refused):
        await spool.enqueue_many(msgs, also=also)
    assert [await spool.show(m.queue_id) for m in msgs] == [None, None]
    # The companion sees the messages inside the same transaction.
    seen: list[int] = []

    def count(conn: sqlite3.Connection) -> None:
        seen.append(conn.execute("SELECT count(*) FROM recipients").fetchone()[0])

    await spool.enqueue_many(msgs, also=count)
    assert seen == [2]


async def test_not_before_holds_recipients_until_due(spool: Spool, db: Database) -> None:
    later = message(["late@x.example"], not_before=5000.0)
    now = message(["now@x.example"])
    await spool.enqueue_many([later, now])
    jobs = await spool.claim_due(now=4999.0, limit=10, lease_seconds=60)
    assert [j.queue_id for j in jobs] == [now.queue_id]
    jobs = await spool.claim_due(now=5000.0, limit=10, lease_seconds=60)
    assert [j.queue_id for j in jobs] == [later.queue_id]
    data = await db.read(
        lambda c: c.execute(
            "SELECT data FROM events WHERE queue_id=? AND type='accepted'", (later.queue_id,)
        ).fetchone()[0]
    )
    assert '"send_at": 5000.0' in data


async def test_cancel_makes_a_batch_final_and_never_sent(spool: Spool, db: Database) -> None:
    batch = await spool.create_batch("app", now=900.0)
    assert (await spool.batch(batch.batch_id)) == batch
    msgs = [message(["a@x.example", "b@y.example"], not_before=5000.0, batch_id=batch.batch_id)]
    other = message(["c@x.example"], not_before=5000.0)
    await spool.enqueue_many([*msgs, other])
    change = await spool.set_batch_status(batch.batch_id, "cancel", now=1001.0)
    assert change is not None and change.cancelled == 2 and change.batch.status == "cancel"
    assert await states(spool, msgs[0].queue_id) == ["suppressed", "suppressed"]
    assert await spool.body(msgs[0].queue_id) is None  # nothing left to send
    jobs = await spool.claim_due(now=6000.0, limit=10, lease_seconds=60)
    assert [j.queue_id for j in jobs] == [other.queue_id]
    assert await event_types(db, msgs[0].queue_id) == ["accepted", "cancelled", "cancelled"]
    info = await spool.show(msgs[0].queue_id)
    assert info is not None and "cancelled" in info.recipients[0].last_reply
    # Later messages with the cancelled batch id are stored final too.
    late = message(["d@x.example"], batch_id=batch.batch_id)
    await spool.enqueue(late)
    assert await states(spool, late.queue_id) == ["suppressed"]
    assert await event_types(db, late.queue_id) == ["accepted", "cancelled"]
    assert [b.status for b in await spool.list_batches("app")] == ["cancel"]


async def test_pause_holds_and_resume_releases(spool: Spool) -> None:
    batch = await spool.create_batch("app")
    first = message(["a@x.example"], not_before=3000.0, batch_id=batch.batch_id)
    await spool.enqueue(first)
    change = await spool.set_batch_status(batch.batch_id, "pause")
    assert change is not None and change.held == 1
    second = message(["b@x.example"], batch_id=batch.batch_id)  # queued while paused
    await spool.enqueue(second)
    assert await states(spool, second.queue_id) == ["held"]
    assert await spool.claim_due(now=9000.0, limit=10, lease_seconds=60) == []
    assert [(b.batch_id, b.status) for b in await spool.list_batches("app")] == [
        (batch.batch_id, "pause")
    ]
    assert await spool.list_batches("someone-else") == ()
    change = await spool.set_batch_status(batch.batch_id, None)
    assert change is not None and change.released == 2
    assert await spool.list_batches("app") == ()
    # Released rows keep their own due time: the scheduled one still waits for send_at.
    jobs = await spool.claim_due(now=2000.0, limit=10, lease_seconds=60)
    assert [j.queue_id for j in jobs] == [second.queue_id]
    jobs = await spool.claim_due(now=3000.0, limit=10, lease_seconds=60)
    assert [j.queue_id for j in jobs] == [first.queue_id]


async def test_cancel_leaves_delivered_recipients_alone(spool: Spool) -> None:
    batch = await spool.create_batch("app")
    msg = message(["a@x.example", "b@y.example"], batch_id=batch.batch_id)
    await spool.enqueue(msg)
    await spool.claim_due(now=1000.0, limit=10, lease_seconds=60)
    await spool.record([RecipientUpdate(msg.queue_id, 0, RecipientState.DELIVERED, "250 ok")])
    await spool.record(
        [RecipientUpdate(msg.queue_id, 1, RecipientState.QUEUED, "451", next_attempt=1200.0)]
    )
    change = await spool.set_batch_status(batch.batch_id, "cancel")
    assert change is not None and change.cancelled == 1
    assert await states(spool, msg.queue_id) == ["delivered", "suppressed"]


async def test_unknown_batch_and_bad_status(spool: Spool) -> None:
    assert await spool.batch("nope") is None
    assert await spool.set_batch_status("nope", "cancel") is None
    with pytest.raises(ValueError, match="batch status"):
        await spool.set_batch_status("nope", "stop")
