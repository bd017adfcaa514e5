"""The supervisor restarts failed service bodies; only fatal storage errors end the daemon."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from mtaserver.diskspace import FreeSpace, Reserve, declared_size
from mtaserver.errors import StorageError
from mtaserver.storage.sqlite.db import Database, translate
from mtaserver.supervisor import Backoff, first_fatal, supervise
from tests.support.daemon import Daemon, TestConfig


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t


async def test_failed_body_is_restarted_with_doubling_backoff() -> None:
    clock = Clock()
    sleeps: list[float] = []
    restarts: list[str] = []
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs == 4:
            clock.t += 120  # ran long enough: the back-off starts over after this failure
        if runs < 6:
            raise StorageError("database error: database or disk is full", full=True)

    async def sleep(s: float) -> None:
        sleeps.append(s)

    await supervise("scheduler", body, monotonic=clock.monotonic, on_restart=restarts.append,
                    backoff=Backoff(initial=1, maximum=4, reset_after=60), sleep=sleep)  # fmt: skip
    assert runs == 6
    assert sleeps == [1, 2, 4, 1, 2]
    assert restarts == ["scheduler"] * 5


async def test_full_disk_is_retried_every_few_seconds_other_failures_back_off() -> None:
    clock = Clock()
    sleeps: list[float] = []
    errors = [StorageError("database or disk is full", full=True)] * 4 + [RuntimeError("bug")] * 2

    async def body() -> None:
        if errors:
            raise errors.pop(0)

    async def sleep(s: float) -> None:
        sleeps.append(s)

    await supervise("scheduler", body, monotonic=clock.monotonic, sleep=sleep,
                    backoff=Backoff(initial=1, maximum=60, reset_after=600, full_maximum=3))  # fmt: skip
    assert sleeps == [1, 2, 3, 3, 6, 12]


async def test_fatal_error_passes_through() -> None:
    async def body() -> None:
        raise StorageError("the database file is gone", fatal=True)

    with pytest.raises(StorageError, match="gone"):
        await supervise("storage", body, monotonic=lambda: 0.0)


async def test_cancellation_is_not_a_failure() -> None:
    restarts: list[str] = []

    async def body() -> None:
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervise("x", body, monotonic=lambda: 0.0,
                                         on_restart=restarts.append))  # fmt: skip
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert restarts == []


def test_first_fatal_finds_the_fatal_leaf() -> None:
    fatal = StorageError("corrupt", fatal=True)
    group = ExceptionGroup("tg", [ValueError("x"), ExceptionGroup("inner", [fatal])])
    assert first_fatal(group) is fatal
    assert first_fatal(ExceptionGroup("tg", [StorageError("full", full=True)])) is None


def test_corrupt_database_errors_are_fatal(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"this is not a database file at all" * 200)
    conn = sqlite3.connect(bad)
    with pytest.raises(sqlite3.DatabaseError) as caught:
        conn.execute("SELECT * FROM sqlite_master").fetchall()
    err = translate(caught.value)
    assert err.fatal and not err.full
    full = sqlite3.OperationalError("database or disk is full")
    assert translate(full).full and not translate(full).fatal


async def test_check_file_notices_a_removed_database(tmp_path: Path) -> None:
    db = Database(tmp_path / "q.db", owner=True)
    await db.open()
    try:
        db.check_file()
        (tmp_path / "q.db").unlink()
        with pytest.raises(StorageError, match="is gone") as caught:
            db.check_file()
        assert caught.value.fatal
    finally:
        await db.close()


def test_free_space_answer_is_cached_and_counts_need(tmp_path: Path) -> None:
    now = [0.0]
    free = [10 << 20]
    calls = []

    def statvfs(path: Path) -> os.statvfs_result:
        calls.append(path)
        return os.statvfs_result((4096, 4096, 0, 0, free[0] // 4096, 0, 0, 0, 0, 255))

    space = FreeSpace(tmp_path, 4 << 20, lambda: now[0], every=1.0, statvfs=statvfs)
    assert not space.low()
    assert space.low(need=7 << 20)  # 10 MiB free, 4 MiB kept, 7 MiB declared
    free[0] = 1 << 20
    assert not space.low()  # cached for a second
    now[0] = 1.5
    assert space.low()
    assert len(calls) == 2
    assert declared_size(["BODY=8BITMIME", "SIZE=12345"]) == 12345
    assert declared_size(["SIZE=abc"]) == 0


def test_reserve_is_made_only_with_room_and_released_once(tmp_path: Path) -> None:
    space = FreeSpace(tmp_path, 0, lambda: 0.0)
    reserve = Reserve(tmp_path / "reserve.bin", size=64 * 1024)
    assert reserve.ensure(space)
    assert (tmp_path / "reserve.bin").stat().st_size == 64 * 1024
    assert reserve.release() and not reserve.release()
    huge = FreeSpace(tmp_path, 1 << 60, lambda: 0.0)
    assert not reserve.ensure(huge) and not (tmp_path / "reserve.bin").exists()


@pytest.mark.sqlite_only("removes the SQLite file under the daemon")
def test_database_removed_under_the_daemon_is_fatal_in_one_line(tmp_path: Path) -> None:
    cfg = TestConfig(tmp_path, tls=False)
    daemon = Daemon(cfg).start()
    try:
        cfg.database.unlink()
        assert daemon.proc is not None
        code = daemon.proc.wait(30)
    finally:
        daemon.stop()
    log = daemon.log()
    assert code == 1, log
    fatal = [line for line in log.splitlines() if "event=fatal" in line]
    assert len(fatal) == 1 and "the database file is gone" in fatal[0], log
    assert "Traceback" not in log
