"""Online backups: a consistent copy of the live database, taken while the daemon runs.

SQLite's backup API copies every page of one read snapshot in a single step; in WAL mode
the writer keeps committing meanwhile (readers never block writers), and the copy is the
database as of one commit — never a torn mix. The copy is written to ``PATH.tmp``,
checked with ``PRAGMA integrity_check``, fsynced and renamed into place, so ``PATH`` is
either absent or a complete, verified backup.

Restore: stop the daemon, copy the backup over the database file, delete the old ``-wal`` and
``-shm`` files next to it, start the daemon (README). With ``[storage]
encryption_key_file`` set, back up the key file too: the bodies in the copy are encrypted.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from mtaserver.clock import Clock, SystemClock
from mtaserver.errors import MtaError
from mtaserver.storage.sqlite.db import mark_clean


class BackupError(MtaError):
    """The backup could not be made; nothing was left at the target path."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    size: int
    pages: int
    seconds: float


def backup_sync(source: Path, target: Path, clock: Clock | None = None) -> BackupResult:
    """Copy ``source`` to ``target`` consistently (blocking; run it in a thread)."""
    if not source.exists():
        raise BackupError(f"{source}: database not found")
    if target.resolve() == source.resolve():
        raise BackupError(f"{target}: refusing to back up a database onto itself")
    tmp = target.with_name(target.name + ".tmp")
    clock = clock or SystemClock()
    started = clock.monotonic()
    try:
        tmp.unlink(missing_ok=True)
        src = sqlite3.connect(source, timeout=30)
        try:
            src.execute("PRAGMA busy_timeout=30000")
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)  # pages=-1: the whole snapshot in one step
                result = dst.execute("PRAGMA integrity_check").fetchone()[0]
                if result != "ok":
                    raise BackupError(f"{tmp}: integrity_check failed: {result}")
                # The copy is a consistent, checked snapshot: a daemon restored from it has
                # no unclean stop to recover from.
                mark_clean(dst)
                dst.commit()
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
            finally:
                dst.close()
        finally:
            src.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (sqlite3.Error, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"backup to {target} failed: {exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BackupResult(target, target.stat().st_size, pages, clock.monotonic() - started)


async def backup(source: Path, target: Path) -> BackupResult:
    """The same, off the event loop (for the admin API)."""
    return await asyncio.to_thread(backup_sync, source, target)
