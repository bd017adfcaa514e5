"""The PostgreSQL behind every test daemon when ``MTASERVER_TEST_BACKEND=postgresql``.

The daemon-level suite (``TestConfig``/``Daemon``) runs on either backend; this switch
makes every ``TestConfig`` write ``[storage] backend = "postgresql"`` with a DSN to a private
server (``tests.pg.running_server``: a temp dir, a loopback port, stopped by PID), started
on first use once per pytest-xdist worker. Each ``TestConfig`` gets a fresh database of its
own, copied from a template migrated once per server (``CREATE DATABASE x TEMPLATE t``: the
daemon finds its schema applied instead of running every migration at each start).

Tests that only make sense on one backend or need what is not ported yet say so with the
markers in ``tests/conftest.py`` (``sqlite_only``, ``pg_pending``); ``PG_PENDING`` below is
the one list of features still waiting for their PostgreSQL port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import subprocess
import threading
from pathlib import Path
from typing import Any

import asyncpg

from tests.pg import BIN, PgServer, migrated, running_server

ENV = "MTASERVER_TEST_BACKEND"
BACKENDS = ("sqlite", "postgresql")

# Features whose PostgreSQL port has not landed: a test marked pg_pending(<feature>) is
# skipped on PostgreSQL while its feature is listed here. Remove a feature when its port
# lands; MTASERVER_TEST_PG_PENDING=run runs the pending tests anyway (to try a port).
PG_PENDING = frozenset({
    "sqlite-reads",  # test_campaign_scale.py: checks the run through the SQLite file
})  # fmt: skip


def backend() -> str:
    """The backend the daemon-level tests run on: ``$MTASERVER_TEST_BACKEND``, default sqlite."""
    value = os.environ.get(ENV, "sqlite")
    if value not in BACKENDS:
        raise RuntimeError(f"{ENV}: expected one of {', '.join(BACKENDS)}, got {value!r}")
    return value


def query(dsn: str, password: str, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
    """Run one SQLite-style statement (``?`` placeholders) on PostgreSQL; rows as tuples.

    In a thread with its own loop: tests call this from inside running event loops."""

    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn, password=password, ssl=False)
        try:
            return [tuple(r) for r in await conn.fetch(_numbered(sql), *args)]
        finally:
            await conn.close()

    out: list[list[tuple[Any, ...]]] = []
    errors: list[BaseException] = []

    def main() -> None:
        try:
            out.append(asyncio.run(run()))
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    worker = threading.Thread(target=main)
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return out[0]


# A bytea value in pg_dump's COPY text: ``\\x`` (the backslash escaped) and hex digits.
_BYTEA = re.compile(rb"\\\\x((?:[0-9a-f]{2})+)")


def dump(dsn: str, password: str) -> bytes:
    """A data-only dump of the database's live rows, each bytea value (shown as hex there)
    also appended decoded: a scan for what must never be stored sees bodies as stored."""
    out = subprocess.run(
        [str(BIN / "pg_dump"), "--data-only", "-d", dsn],
        env={**os.environ, "PGPASSWORD": password}, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    decoded = (bytes.fromhex(m.group(1).decode()) for m in _BYTEA.finditer(out.stdout))
    return b"\n".join([out.stdout, *decoded])


def _numbered(sql: str) -> str:
    """``?`` → ``$1, $2, …`` outside string literals."""
    parts = re.split(r"('(?:[^']|'')*')", sql)
    n = 0
    for i in range(0, len(parts), 2):
        pieces = parts[i].split("?")
        text = pieces[0]
        for piece in pieces[1:]:
            n += 1
            text += f"${n}{piece}"
        parts[i] = text
    return "".join(parts)


def run_pending() -> bool:
    return os.environ.get("MTASERVER_TEST_PG_PENDING") == "run"


class SuiteDatabases:
    """One server per worker (started on the first ``new()``), one database per config."""

    TEMPLATE = "mta_template"

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._server: PgServer | None = None
        self._created: list[str] = []
        self._lock = threading.Lock()

    def server(self) -> PgServer:
        with self._lock:
            if self._server is None:
                server = self._stack.enter_context(running_server())
                server.psql(f"CREATE DATABASE {self.TEMPLATE}")
                # In a thread: a TestConfig is often built inside a running event loop.
                worker = threading.Thread(
                    target=asyncio.run, args=(migrated(server.dsn_with_password(self.TEMPLATE)),)
                )
                worker.start()
                worker.join()
                # the migrated schema must be there (the thread swallows no error silently)
                tables = server.psql("SELECT count(*) FROM schema_migrations", self.TEMPLATE)
                assert int(tables) > 0, "the template database was not migrated"
                self._server = server
            return self._server

    def new(self) -> str:
        """A fresh migrated database's name."""
        server = self.server()
        name = f"t_{secrets.token_hex(6)}"
        server.psql(f"CREATE DATABASE {name} TEMPLATE {self.TEMPLATE}")
        self._created.append(name)
        return name

    def storage(self, directory: Path) -> dict[str, object]:
        """The ``[storage]`` table of a daemon on a fresh database; the password in a file."""
        server = self.server()
        name = self.new()
        pw = directory / "pg.password"
        pw.write_text(server.password + "\n")
        return {
            "backend": "postgresql",
            "dsn": server.dsn(name),
            "password_file": str(pw),
            "tls": "disable",
        }

    def drop_created(self) -> None:
        """Drop the databases made since the last call (their daemons have stopped)."""
        if self._server is None:
            return
        for name in self._created:
            self._server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self._created.clear()

    def close(self) -> None:
        self._stack.close()
        self._server = None


_suite: SuiteDatabases | None = None


def install(suite: SuiteDatabases | None) -> None:
    """Set (session start) or clear (session end) the worker's databases; conftest does."""
    global _suite
    _suite = suite


def current() -> SuiteDatabases:
    if _suite is None:
        raise RuntimeError(
            f"{ENV}=postgresql but no suite databases are installed (tests/conftest.py does)"
        )
    return _suite
