"""Online backups: consistent while writes happen, verified, atomic; restore works."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from mtaserver.model import PreparedMessage, PreparedRecipient
from mtaserver.storage.sqlite.backup import BackupError, backup
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool
from tests.support.daemon import Daemon, TestConfig

pytestmark = pytest.mark.sqlite_only("SQLite online backup and restore of the SQLite file")


def message(i: int) -> PreparedMessage:
    return PreparedMessage(
        queue_id=f"Q{i:06d}", sender="app@example.com",
        recipients=tuple(PreparedRecipient(f"r{j}@x.example") for j in range(3)),
        data=b"Subject: s\r\n\r\n" + b"x" * 5000, user=None, client_ip="127.0.0.1",
        received_at=time.time(),
    )  # fmt: skip


def check_copy(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        # One commit's snapshot: every message has its three recipients and its event.
        n = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM recipients").fetchone()[0] == 3 * n
        assert conn.execute("SELECT count(*) FROM events WHERE type='accepted'").fetchone()[0] == n
        return int(n)
    finally:
        conn.close()


async def test_backup_while_writes_happen(tmp_path: Path) -> None:
    db = Database(tmp_path / "live.db")
    await db.open()
    spool = Spool(db)
    stop = asyncio.Event()
    written = 0

    async def writer() -> None:
        nonlocal written
        while not stop.is_set():
            await asyncio.gather(*(spool.enqueue(message(written + k)) for k in range(20)))
            written += 20

    task = asyncio.create_task(writer())
    try:
        while written < 200:
            await asyncio.sleep(0.01)
        counts = []
        for k in range(3):
            r = await backup(db.path, tmp_path / f"copy{k}.db")
            assert r.pages > 0 and r.size > 0
            counts.append(check_copy(tmp_path / f"copy{k}.db"))
            await asyncio.sleep(0.05)
        assert counts[0] >= 200 and counts == sorted(counts) and counts[-1] > counts[0]
        assert not (tmp_path / "copy0.db.tmp").exists()
    finally:
        stop.set()
        await task
        await db.close()


async def test_backup_errors_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="not found"):
        await backup(tmp_path / "missing.db", tmp_path / "copy.db")
    db = Database(tmp_path / "live.db")
    await db.open()
    await db.close()
    with pytest.raises(BackupError, match="onto itself"):
        await backup(tmp_path / "live.db", tmp_path / "live.db")
    with pytest.raises(BackupError, match="failed"):
        await backup(tmp_path / "live.db", tmp_path / "no-such-dir" / "copy.db")
    assert not list((tmp_path).glob("**/copy.db*"))


def test_backup_cli_against_the_daemon_and_restore(tmp_path: Path) -> None:
    cfg = TestConfig(tmp_path, tls=False)
    target = tmp_path / "backups" / "mta.db"
    target.parent.mkdir()

    async def fill() -> None:
        db = Database(cfg.database)
        await db.open()
        await Spool(db).enqueue(message(1))
        await db.close()

    with Daemon(cfg) as d:
        asyncio.run(fill())
        r = d.cli("backup", str(target))
        assert r.returncode == 0, r.stderr
        assert "integrity ok" in r.stdout
        conn = sqlite3.connect(target)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute(
            "SELECT count(*) FROM recipients WHERE queue_id='Q000001'"
        ).fetchone() == (3,)
        conn.close()
        bad = d.cli("backup", str(tmp_path / "nope" / "x.db"))
        assert bad.returncode == 2 and "failed" in bad.stderr and "Traceback" not in bad.stderr
    # Restore: stopped daemon, copy over, drop the old WAL and SHM, start.
    cfg.database.unlink()
    for suffix in ("-wal", "-shm"):
        cfg.database.with_name(cfg.database.name + suffix).unlink(missing_ok=True)
    shutil.copy(target, cfg.database)
    with Daemon(cfg) as d:
        assert "quick_check" not in d.log()
    conn = sqlite3.connect(cfg.database)
    assert conn.execute("SELECT 1 FROM messages WHERE id='Q000001'").fetchall() == [(1,)]
    conn.close()
