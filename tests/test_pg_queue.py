"""The queue owner's contract, run against both backends (SQLite file, real PostgreSQL), and
what only the shared queue promises: concurrent claimers never share a recipient, a dead
node's leases expire and are taken over, a node's own release leaves others' leases alone."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mtaserver.config.storage import PostgresConfig
from mtaserver.model import (
    Event,
    PreparedMessage,
    PreparedRecipient,
    RecipientState,
    RecipientUpdate,
)
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.events import PgEventLog
from mtaserver.storage.postgres.queue import PgQueue
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from tests.pg import pg_dsn, pg_server  # noqa: F401


def message(
    rcpts: list[str], *, now: float = 1000.0, own: bool = False, suppressed: str | None = None
) -> PreparedMessage:
    return PreparedMessage(
        queue_id=new_queue_id(time.time()),
        sender="app@example.com",
        recipients=tuple(
            PreparedRecipient(
                r,
                data=f"copy for {r}\r\n".encode() if own else None,
                suppressed=suppressed if i == 0 else None,
            )
            for i, r in enumerate(rcpts)
        ),
        data=b"Subject: hi\r\n\r\nbody\r\n",
        user="app",
        client_ip="127.0.0.1",
        received_at=now,
    )


async def pg_open(dsn: str, pool_size: int = 4) -> PgDatabase:
    db = PgDatabase(PostgresConfig(dsn=dsn, tls="disable", pool_size=pool_size))
    await db.open()
    return db


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: Any, tmp_path: Path) -> AsyncIterator[tuple[Any, Any]]:
    """(queue, event log) of one backend, over a fresh database."""
    if request.param == "sqlite":
        db = Database(tmp_path / "mta.db")
        await db.open()
        try:
            yield Spool(db), EventLog(db)
        finally:
            await db.close()
    else:
        pg = await pg_open(request.getfixturevalue("pg_dsn"))
        try:
            yield PgQueue(pg, "node-a"), PgEventLog(pg)
        finally:
            await pg.close()


# -- the contract, both backends -------------------------------------------------------------
async def test_enqueue_claim_record_roundtrip(backend: tuple[Any, Any]) -> None:
    spool, _ = backend
    msg = message(["a@x.example", "b@x.example", "c@y.example"])
    await spool.enqueue(msg)
    jobs = await spool.claim_due(now=1000.0, limit=100, lease_seconds=60)
    by_domain = {j.domain: j for j in jobs}
    assert set(by_domain) == {"x.example", "y.example"}
    assert [r.address for r in by_domain["x.example"].recipients] == ["a@x.example", "b@x.example"]
    assert by_domain["x.example"].data == msg.data
    assert by_domain["x.example"].lease_until == 1060.0
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
    assert [(r.state, r.attempts, r.last_reply) for r in info.recipients] == [
        ("delivered", 1, "250 ok"), ("queued", 1, "451 later"), ("bounced", 1, "550 no")
    ]  # fmt: skip
    assert await spool.claim_due(now=1299.0, limit=10, lease_seconds=60) == []
    again = await spool.claim_due(now=1300.0, limit=10, lease_seconds=60)
    assert [(j.domain, j.recipients[0].attempts) for j in again] == [("x.example", 1)]
    assert await spool.body(msg.queue_id) == msg.data
    await spool.record([RecipientUpdate(msg.queue_id, 1, RecipientState.DELIVERED, "250 ok")])
    assert await spool.body(msg.queue_id) is None  # every recipient final: body dropped


async def test_claim_stops_at_limit_in_due_order(backend: tuple[Any, Any]) -> None:
    spool, _ = backend
    late, early = message(["l@x.example"], now=1005.0), message(["e@x.example"], now=1001.0)
    await spool.enqueue(late)
    await spool.enqueue(early)
    first = await spool.claim_due(now=1010.0, limit=1, lease_seconds=60)
    assert [j.queue_id for j in first] == [early.queue_id]
    assert await spool.claim_due(now=1004.0, limit=10, lease_seconds=60) == []


async def test_per_recipient_copies_become_separate_jobs(backend: tuple[Any, Any]) -> None:
    spool, _ = backend
    await spool.enqueue(message(["a@x.example", "b@x.example"], own=True))
    jobs = await spool.claim_due(now=1000.0, limit=10, lease_seconds=60)
    assert sorted(j.data for j in jobs) == [
        b"copy for a@x.example\r\n",
        b"copy for b@x.example\r\n",
    ]


async def test_suppressed_recipient_is_final_with_its_event(backend: tuple[Any, Any]) -> None:
    spool, events = backend
    msg = message(["gone@x.example", "ok@x.example"], suppressed="userunknown")
    await spool.enqueue(msg)
    jobs = await spool.claim_due(now=1000.0, limit=10, lease_seconds=60)
    assert [r.address for j in jobs for r in j.recipients] == ["ok@x.example"]
    kinds = [t for _, t, _ in await events.after(0, 10)]
    assert kinds == ["accepted", "suppressed"]


async def test_expired_leases_come_back(backend: tuple[Any, Any]) -> None:
    spool, _ = backend
    await spool.enqueue(message(["a@x.example"]))
    assert len(await spool.claim_due(now=1000.0, limit=10, lease_seconds=60)) == 1
    assert await spool.release_expired(now=1059.0) == 0
    assert await spool.release_expired(now=1061.0) == 1
    assert len(await spool.claim_due(now=1061.0, limit=10, lease_seconds=60)) == 1
    assert await spool.release_leases(now=1062.0) == 1
    assert len(await spool.claim_due(now=1062.0, limit=10, lease_seconds=60)) == 1


async def test_record_returns_event_ids_and_events_are_tailed(backend: tuple[Any, Any]) -> None:
    spool, events = backend
    msg = message(["a@x.example"])
    await spool.enqueue(msg)
    await spool.claim_due(now=1000.0, limit=10, lease_seconds=60)
    ids = await spool.record(
        [RecipientUpdate(msg.queue_id, 0, RecipientState.DELIVERED, "250 ok")],
        [
            Event("delivered", 1001.0, msg.queue_id, "a@x.example", (("idx", 0),)),
            Event("dsn_sent", 1001.0, msg.queue_id, None, (("action", "failed"),)),
        ],
    )
    assert len(ids) == 2 and ids[1] == ids[0] + 1
    assert await events.last_id() == ids[1]
    tail = await events.after(ids[0] - 1, 10)
    assert [(i, t) for i, t, _ in tail] == [(ids[0], "delivered"), (ids[1], "dsn_sent")]
    assert json.loads(tail[0][2]) == {"idx": 0}
    assert await spool.dsn_sent(msg.queue_id, "failed")
    assert not await spool.dsn_sent(msg.queue_id, "delayed")


async def test_defer_domain_and_gauges(backend: tuple[Any, Any]) -> None:
    spool, _ = backend
    await spool.enqueue(message(["a@x.example", "b@x.example", "c@y.example"]))
    assert await spool.defer_domain("X.example", 2000.0) == 2
    jobs = await spool.claim_due(now=1000.0, limit=10, lease_seconds=60)
    assert [j.domain for j in jobs] == ["y.example"]
    g = await spool.gauges(("queued", "leased"), top=1, now=1100.0)
    assert g.by_state == {"queued": 2, "leased": 1}
    assert g.by_destination == (("x.example", 2),) and g.other == 1
    assert g.oldest_age == 100.0


async def test_enqueue_many_is_all_or_nothing(backend: tuple[Any, Any]) -> None:
    spool, _ = backend
    first = message(["a@x.example"])
    await spool.enqueue(first)
    fresh = message(["b@x.example"])
    with pytest.raises(Exception, match=r"(?i)unique|constraint|duplicate|storage"):
        await spool.enqueue_many([fresh, first])  # the second one's id exists already
    assert await spool.show(fresh.queue_id) is None


# -- several nodes on one PostgreSQL ------------------------------------------------------
async def test_parallel_claimers_never_share_a_recipient(pg_dsn: str) -> None:  # noqa: F811
    """Three nodes, each with its own pool, claim 300 recipients as fast as they can."""
    dbs = [await pg_open(pg_dsn) for _ in range(3)]
    try:
        nodes = [PgQueue(db, f"node-{i}") for i, db in enumerate(dbs)]
        for k in range(30):
            await nodes[k % 3].enqueue_many(
                [message([f"r{k}-{j}@d{j % 4}.example" for j in range(10)])]
            )
        claimed: list[list[tuple[str, int]]] = [[] for _ in nodes]

        async def claimer(i: int) -> None:
            while True:
                jobs = await nodes[i].claim_due(now=2000.0, limit=7, lease_seconds=300)
                if not jobs:
                    return
                claimed[i].extend((j.queue_id, r.idx) for j in jobs for r in j.recipients)
                await asyncio.sleep(0)

        await asyncio.gather(*(claimer(i) for i in range(3)), *(claimer(i) for i in range(3)))
        flat = [x for c in claimed for x in c]
        assert len(flat) == 300 and len(set(flat)) == 300
        assert all(claimed), "every node got some of the work"
    finally:
        for db in dbs:
            await db.close()


async def test_a_dead_nodes_leases_are_taken_over(pg_dsn: str) -> None:  # noqa: F811
    dba, dbb = await pg_open(pg_dsn), await pg_open(pg_dsn)
    try:
        a, b = PgQueue(dba, "node-a"), PgQueue(dbb, "node-b")
        msg = message(["x@x.example", "y@y.example"])
        await a.enqueue(msg)
        assert len(await a.claim_due(now=1000.0, limit=10, lease_seconds=60)) == 2
        await dba.close()  # node A dies holding both leases
        # B restarting its own leases leaves A's alone; they are A's until they expire.
        assert await b.release_leases(now=1010.0) == 0
        assert await b.claim_due(now=1010.0, limit=10, lease_seconds=60) == []
        assert await b.release_expired(now=1030.0) == 0
        assert await b.release_expired(now=1061.0) == 2
        jobs = await b.claim_due(now=1061.0, limit=10, lease_seconds=60)
        assert sorted(j.domain for j in jobs) == ["x.example", "y.example"]
        await b.record(
            [RecipientUpdate(msg.queue_id, i, RecipientState.DELIVERED, "250 ok") for i in (0, 1)]
        )
        info = await b.show(msg.queue_id)
        assert info is not None and {r.state for r in info.recipients} == {"delivered"}
    finally:
        await dbb.close()


async def test_release_leases_returns_only_this_nodes_own(pg_dsn: str) -> None:  # noqa: F811
    db = await pg_open(pg_dsn)
    try:
        a, b = PgQueue(db, "node-a"), PgQueue(db, "node-b")
        await a.enqueue(message(["1@x.example"]))
        await a.enqueue(message(["2@x.example"], now=1001.0))
        assert len(await a.claim_due(now=1002.0, limit=1, lease_seconds=60)) == 1
        assert len(await b.claim_due(now=1002.0, limit=1, lease_seconds=60)) == 1
        assert await a.release_leases(now=1003.0) == 1
        got = await b.claim_due(now=1003.0, limit=10, lease_seconds=60)
        assert [r.address for j in got for r in j.recipients] == ["1@x.example"]
    finally:
        await db.close()


async def test_concurrent_enqueues_share_commits_and_fail_alone(backend: tuple[Any, Any]) -> None:
    """Group commit: 40 sessions at once, one of them re-using an id — that one fails, the
    other 39 are stored (PostgreSQL: savepoints in one transaction; SQLite: its batches)."""
    spool, _ = backend
    first = message(["a@x.example"])
    await spool.enqueue(first)
    msgs = [message([f"u{i}@x.example"]) for i in range(39)]
    results = await asyncio.gather(
        *(spool.enqueue(m) for m in [*msgs[:20], first, *msgs[20:]]), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and results[20] is failed[0]
    for m in msgs:
        assert await spool.show(m.queue_id) is not None
    jobs = await spool.claim_due(now=1000.0, limit=100, lease_seconds=60)
    assert sum(len(j.recipients) for j in jobs) == 40


async def test_enqueue_many_records_each_event_once(backend: tuple[Any, Any]) -> None:
    spool, events = backend
    a = message(["gone@x.example", "ok@x.example"], suppressed="userunknown")
    b = message(["all@y.example"], suppressed="userunknown")
    await spool.enqueue_many([a, b], [Event("note", 1000.0, a.queue_id)])
    kinds = sorted(t for _, t, _ in await events.after(0, 20))
    assert kinds == ["accepted", "accepted", "note", "suppressed", "suppressed"]
    assert await spool.body(a.queue_id) == a.data
    assert await spool.body(b.queue_id) is None  # every recipient final at intake


async def test_operator_ops(backend: tuple[Any, Any]) -> None:
    spool, events = backend
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
    first = await spool.list(limit=1)
    assert [e.idx for e in await spool.list(after=(first[0].queue_id, first[0].idx))] == [1]
    assert await spool.retry(None, now=900.0) == 2
    assert await spool.delete(msg.queue_id) == 2
    assert await spool.show(msg.queue_id) is None
    assert [t for _, t, _ in await events.after(0, 10)][-1] == "deleted"
