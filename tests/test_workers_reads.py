"""The workers' inline read path (``Database.read_quick``): a suppression is seen the
moment its commit returns, by another process's connection, without a thread hop."""

from __future__ import annotations

import threading
from pathlib import Path

from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.suppressions import SuppressionStore


async def test_a_committed_suppression_is_seen_at_once_by_a_second_connection(
    tmp_path: Path,
) -> None:
    owner = Database(tmp_path / "q.db", owner=True)
    await owner.open()
    worker = Database(tmp_path / "q.db", owner=False)  # as a worker process opens it
    await worker.open()
    try:
        writes, reads = SuppressionStore(owner), SuppressionStore(worker)
        assert await reads.check("a@dest.example", "example.com") is None  # quick conn open
        for i in range(20):
            await writes.add(f"u{i}@dest.example", "hard-bounce")
            hit = await reads.check(f"U{i}@Dest.Example", "example.com")
            assert hit is not None and hit.reason == "hard-bounce"
        await writes.add("s@dest.example", "complaint", scope="other.example")
        assert await reads.check("s@dest.example", "example.com") is None
        assert await reads.check("s@dest.example", "other.example") is not None
    finally:
        await worker.close()
        await owner.close()


async def test_read_quick_runs_on_the_callers_thread(tmp_path: Path) -> None:
    db = Database(tmp_path / "q.db", owner=True)
    await db.open()
    try:
        threads = [await db.read_quick(lambda c: threading.get_ident()) for _ in range(2)]
        hop = await db.read(lambda c: threading.get_ident())
        assert threads == [threading.get_ident()] * 2 and hop != threads[0]
    finally:
        await db.close()
