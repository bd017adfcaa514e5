"""The SQLite database: one writer with group commit, a reader, and forward migrations.

Every write in the process goes through :meth:`Database.write`. The writer task takes all
operations that are waiting, runs them in ONE ``BEGIN IMMEDIATE … COMMIT`` (each inside its
own SAVEPOINT, so one failing operation does not sink the others) and resolves their futures
only after COMMIT returned — with ``synchronous=FULL`` that is after the fsync. Fifty SMTP
sessions finishing DATA at once therefore share one fsync instead of paying fifty.

The connection runs in aiosqlite's worker thread; the batch function is handed to it whole
(``Connection._execute``) so a batch costs one thread hop, not one per statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from mtaserver.clock import Clock, SystemClock
from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv

T = TypeVar("T")
log = get_logger("db")

WriteOp = Callable[[sqlite3.Connection], Any]

_FULL_CODES = {sqlite3.SQLITE_FULL}
_FATAL_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


def translate(exc: sqlite3.Error) -> StorageError:
    """Map SQLite failures to our StorageError (full → 452, anything else → 451; a corrupt
    file is fatal)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    full = primary in _FULL_CODES or "full" in str(exc).lower()
    fatal = primary in _FATAL_CODES
    return StorageError(f"database error: {exc}", full=full, fatal=fatal)


def configure(conn: sqlite3.Connection) -> None:
    """Pragmas every connection needs: durability is per connection (PITFALLS)."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    # Deleted content (delivered bodies, erased rows) is overwritten, not left in free pages.
    conn.execute("PRAGMA secure_delete=ON")


def mark_clean(conn: sqlite3.Connection) -> None:
    """Record that this database file was left consistent (a clean stop, a checked copy)."""
    conn.execute("UPDATE meta SET value='1' WHERE key='clean_shutdown'")


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every migration shipped in ``migrations/`` next to this module, sorted."""
    pkg = resources.files("mtaserver.storage.sqlite") / "migrations"
    out = []
    for entry in pkg.iterdir():
        if entry.name.endswith(".sql"):
            out.append((entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    return sorted(out)


def migrate(conn: sqlite3.Connection, now: float) -> list[str]:
    """Apply the migrations not applied yet, in order; returns their names.

    Applied names are recorded in ``schema_migrations`` and their count mirrored in
    ``PRAGMA user_version`` so ``sqlite3 file 'pragma user_version'`` tells the schema level.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)"
    )
    done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
    applied = []
    for name, sql in migration_files():
        if name in done:
            continue
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _split_sql(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations(name, applied_at) VALUES (?, ?)", (name, now)
            )
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
        applied.append(name)
    count = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]
    conn.execute(f"PRAGMA user_version={int(count)}")
    return applied


def _split_sql(sql: str) -> list[str]:
    """Split a migration into statements (sqlite3.complete_statement knows about strings)."""
    statements: list[str] = []
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip() and not buf.strip().startswith("--"):
        statements.append(buf.strip())
    return statements


@dataclass
class _Pending:
    op: WriteOp
    future: asyncio.Future[Any] = field(repr=False)


@dataclass
class _BatchOutcome:
    results: list[tuple[bool, Any]]


class Database:
    """Owns the writer connection and its group-commit task, plus one reader connection."""

    def __init__(
        self, path: Path, *, owner: bool = False, max_batch: int = 1000, queue_size: int = 10000,
        clock: Clock | None = None,
    ) -> None:  # fmt: skip
        """``owner`` is the daemon: it alone tracks clean shutdown and runs recovery checks;
        CLI tools open the same file alongside it (WAL) without touching that state."""
        self.path = path
        self.owner = owner
        self.clock: Clock = clock or SystemClock()
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_size)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._quick: sqlite3.Connection | None = None  # read_quick's, on the loop's thread
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.unclean_start = False
        self.on_commit: list[Callable[[float, int], None]] = []  # (seconds, ops) observers
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the opened file

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Queued mail is private: create the file 0600 (SQLite gives -wal/-shm the same).
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            self._writer = await aiosqlite.connect(self.path, isolation_level=None)
            await _in_thread(self._writer, self._prepare_writer)
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            await _in_thread(self._reader, configure)
        except sqlite3.Error as exc:
            await self._close_connections()
            raise translate(exc) from exc
        self._task = asyncio.create_task(self._write_loop(), name="db-writer")

    def _prepare_writer(self, conn: sqlite3.Connection) -> None:
        configure(conn)
        applied = migrate(conn, self.clock.now())
        if applied:
            log.info(kv(event="migrated", applied=",".join(applied), path=self.path))
        if not self.owner:
            return
        row = conn.execute("SELECT value FROM meta WHERE key='clean_shutdown'").fetchone()
        self.unclean_start = row is not None and row[0] != "1"
        if self.unclean_start:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            log.warning(kv(event="unclean_stop_detected", quick_check=result, path=self.path))
            if result != "ok":
                raise StorageError(f"{self.path}: quick_check failed after unclean stop: {result}")
        try:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('clean_shutdown', '0') "
                "ON CONFLICT(key) DO UPDATE SET value='0'"
            )
        except sqlite3.Error as exc:
            if not translate(exc).full:
                raise
            # A full disk must not keep the daemon down (it answers 452 until space returns);
            # leases are released at every start, so a crash before the flag is written
            # only skips the quick_check.
            log.warning(kv(event="clean_shutdown_flag_not_written", error=str(exc)))
        self._identity = _identity(self.path)

    async def close(self) -> None:
        """Finish queued writes, mark the stop as clean, close connections."""
        if self._task is not None:
            self._closing = True
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._writer is not None and self.owner:
            with contextlib.suppress(sqlite3.Error):
                await self._writer.execute("UPDATE meta SET value='1' WHERE key='clean_shutdown'")
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self._quick is not None:
            self._quick.close()
            self._quick = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._reader = self._writer = None

    def check_file(self) -> None:
        """Raise a fatal StorageError when the database file was removed or replaced.

        SQLite keeps writing to an unlinked file without an error: everything committed
        from then on would vanish at the next start. The daemon's storage service calls this
        periodically.
        """
        if self._identity is None:
            return
        now = _identity(self.path)
        if now != self._identity:
            what = "is gone" if now is None else "was replaced by another file"
            raise StorageError(f"{self.path}: the database file {what}", fatal=True)

    # -- writes --------------------------------------------------------------------------
    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` in the next group-committed batch; return its result once durable.

        Raises :class:`StorageError` if the op or the commit failed; nothing of the op is
        then stored.
        """
        if self._task is None or self._closing:
            raise StorageError("database is not open")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(op, fut))
        return await fut

    async def _write_loop(self) -> None:
        assert self._writer is not None
        conn = self._writer
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            started = self.clock.monotonic()
            try:
                outcome = await _in_thread(conn, _run_batch, [p.op for p in batch])
            except sqlite3.Error as exc:
                err = translate(exc)
                log.error(kv(event="commit_failed", ops=len(batch), error=str(exc)))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
            except BaseException as exc:  # cancelled while a batch was in flight
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(StorageError(f"writer stopped: {exc!r}"))
                    self._queue.task_done()
                raise
            else:
                elapsed = self.clock.monotonic() - started
                for observer in self.on_commit:
                    observer(elapsed, len(batch))
                for p, (ok, value) in zip(batch, outcome.results, strict=True):
                    if p.future.done():
                        continue
                    if ok:
                        p.future.set_result(value)
                    else:
                        p.future.set_exception(value)
            for _ in batch:
                self._queue.task_done()

    # -- reads ---------------------------------------------------------------------------
    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the reader connection (sees every committed write)."""
        if self._reader is None:
            raise StorageError("database is not open")
        try:
            result: T = await _in_thread(self._reader, fn)
        except sqlite3.Error as exc:
            raise translate(exc) from exc
        return result

    async def read_quick(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``read`` for a point lookup: run ``fn`` right here, without the thread hop.

        A hop to aiosqlite's thread and back costs more than an indexed lookup (a worker
        profile: ~10 % of its samples on the RCPT suppression check). The connection is
        this thread's own, read-only, in WAL mode, so it sees every committed write and
        never waits for the writer; if SQLite is busy anyway (WAL recovery, a checkpoint
        that must reset the log) the lookup goes through ``read`` rather than block the loop.
        """
        if self._reader is None:
            raise StorageError("database is not open")
        try:
            if self._quick is None:
                conn = sqlite3.connect(self.path, isolation_level=None)
                conn.execute("PRAGMA busy_timeout=0")
                conn.execute("PRAGMA query_only=1")
                self._quick = conn
            return fn(self._quick)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in (
                sqlite3.SQLITE_BUSY,
                sqlite3.SQLITE_LOCKED,
            ):
                raise translate(exc) from exc
        except sqlite3.Error as exc:
            raise translate(exc) from exc
        return await self.read(fn)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


async def _in_thread(conn: aiosqlite.Connection, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(sqlite3_connection, *args)`` in the connection's thread, in one hop."""
    return await conn._execute(fn, conn._conn, *args)  # type: ignore[no-untyped-call]


def _run_batch(conn: sqlite3.Connection, ops: list[WriteOp]) -> _BatchOutcome:
    """Runs in the database thread: one transaction, one savepoint per op.

    Some errors (SQLITE_FULL, IOERR) make SQLite roll back the whole transaction; then every
    op of the batch so far has failed with that error and the rest start a new transaction.
    """
    results: list[tuple[bool, Any]] = []
    begun_at = 0  # index of the first op in the current transaction
    conn.execute("BEGIN IMMEDIATE")
    try:
        for op in ops:
            conn.execute("SAVEPOINT op")
            try:
                value = op(conn)
            except Exception as exc:
                err: Exception = exc
                if isinstance(exc, sqlite3.Error):
                    err = translate(exc)
                    err.__cause__ = exc
                if conn.in_transaction:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((False, err))
                else:
                    for i in range(begun_at, len(results)):
                        results[i] = (False, err)
                    results.append((False, err))
                    begun_at = len(results)
                    conn.execute("BEGIN IMMEDIATE")
            else:
                conn.execute("RELEASE op")
                results.append((True, value))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return _BatchOutcome(results)
