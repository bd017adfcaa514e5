"""Campaign storage on a real database: the audience snapshot is fixed when a run starts
(a contact added later is not in it), a fire time has one run, and ``fed_op`` moves each
row exactly once — a second feed of the same row, or a feed after pause, stores nothing."""

from __future__ import annotations

import pytest

from mtaserver.auth import hash_password
from mtaserver.storage.sqlite.campaigns import CampaignStore, RunStopped, list_audience_sql
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.users import UserStore


async def test_snapshot_fixed_at_start_and_fed_exactly_once(db: Database) -> None:
    await UserStore(db).add("alice", hash_password("pw-pw-pw-pw", n=2**10), ["example.com"])
    await UserStore(db).add("bob", hash_password("pw-pw-pw-pw", n=2**10), ["example.net"])
    contacts, store = ContactStore(db), CampaignStore(db)
    await contacts.create_list("alice", "news")
    await contacts.create_list("bob", "news")
    await contacts.add_members("alice", "news", [f"u{i}@example.org" for i in range(50)])
    await contacts.add_members("bob", "news", ["other@example.org"])
    c = await store.create("alice", "weekly", "digest", "news@example.com",
                           audience_kind="list", audience="news")  # fmt: skip
    run = await store.begin_run(c, 100.0, list_audience_sql("alice", "news"), None)
    assert run is not None and run.audience == 50
    assert await store.begin_run(c, 100.0, list_audience_sql("alice", "news"), None) is None
    await contacts.add_members("alice", "news", ["late@example.org"])
    seen: set[str] = set()
    first = 0
    while batch := await store.pending(run.id, limit=20):
        seen.update(x.address for x in batch)
        first = first or batch[1].id
        assert all(x.owner == "alice" for x in batch)
        queued = [(x.id, f"q{x.id}") for x in batch[1:]]
        await db.write(store.fed_op(run.id, queued, [(batch[0].id, "test")]))
    assert len(seen) == 50 and "late@example.org" not in seen
    assert await store.counts(run.id) == {"queued": 47, "skipped": 3}
    with pytest.raises(RunStopped, match="fed already"):  # refused, nothing stored
        await db.write(store.fed_op(run.id, [(first, "again")], []))
    assert await store.counts(run.id) == {"queued": 47, "skipped": 3}
    await store.set_status(c.id, "paused")
    got = await store.get("alice", "weekly")
    assert got is not None and got.status == "paused"
    with pytest.raises(RunStopped, match="not running"):  # a paused run takes no feed
        await db.write(store.fed_op(run.id, [], []))
