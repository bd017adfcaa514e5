"""A private PostgreSQL 15 server for the tests: its own temp dir, a loopback port, its PID.

Never the system service. initdb refuses to run as root, so when the tests run as root the
data directory is owned by the ``postgres`` system user (the Debian package creates it) and
the server runs under ``setpriv`` as that user; ``setpriv`` execs, so the PID we hold is the
postmaster's and stopping it is one signal to one PID. Each xdist worker starts its own
server (session fixture); each test gets a fresh database in it (``CREATE DATABASE`` from
``template1`` costs ~50 ms). PostgreSQL missing is a failure naming the package, never a skip.

Use it with ``from tests.pg import pg_server, pg_dsn  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtaserver.config.storage import PostgresConfig
from mtaserver.storage.postgres.db import PgDatabase
from tests.support.ports import free_port


def _bin_dir() -> Path:
    """$MTASERVER_PG_BIN, else 15 (Debian 12's), else the newest Debian-installed major."""
    if "MTASERVER_PG_BIN" in os.environ:
        return Path(os.environ["MTASERVER_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    preferred = Path("/usr/lib/postgresql/15/bin")
    return preferred if (preferred / "initdb").exists() or not found else found[-1].parent


BIN = _bin_dir()
USER = "mta"


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    password: str
    directory: Path
    pid: int

    def dsn(self, database: str = "postgres") -> str:
        """A DSN without the password (the config reads it from a file or the environment)."""
        return f"postgresql://{USER}@{self.host}:{self.port}/{database}"

    def dsn_with_password(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@{self.host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [str(BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", self.dsn(database), "-c", sql],
            env={**os.environ, "PGPASSWORD": self.password},
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        return out.stdout.strip()


def _as_owner() -> tuple[list[str], int | None, int | None]:
    """The command prefix and uid/gid to run PostgreSQL's binaries as (non-root)."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(
            "tests run as root but there is no 'postgres' system user: "
            "apt-get install postgresql (it creates the user), or run the tests as a normal user"
        )
    prefix = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
    return prefix, pw.pw_uid, pw.pw_gid


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited ({proc.returncode}): {log.read_text()[-2000:]}")
        ready = subprocess.run(
            [str(BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)], check=False
        )
        if ready.returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"postgres not ready after {timeout}s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def running_server() -> Iterator[PgServer]:
    """initdb + postgres in a temp dir; stopped (fast shutdown) by PID on exit."""
    if not (BIN / "initdb").exists():
        pytest.fail(
            f"PostgreSQL not found at {BIN} (set MTASERVER_PG_BIN): "
            "apt-get install postgresql (.ci/run does)"
        )
    prefix, uid, gid = _as_owner()
    top = Path(tempfile.mkdtemp(prefix="mta-pg-"))
    data = top / "data"
    password = secrets.token_hex(16)
    (top / "pw").write_text(password)
    if uid is not None and gid is not None:
        os.chown(top, uid, gid)
        os.chown(top / "pw", uid, gid)
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [*prefix, str(BIN / "initdb"), "-D", str(data), "-U", USER, "--pwfile",
             str(top / "pw"), "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        log = top / "postgres.log"
        for _attempt in range(5):
            port = free_port()
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    [*prefix, str(BIN / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                     "-p", str(port), "-k", str(top), "-c", "max_connections=200",
                     "-c", "shared_buffers=32MB", "-c", "log_min_messages=warning"],
                    stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            try:
                _wait_ready(proc, port, log, 60)
                break
            except RuntimeError:
                if proc.poll() is None:  # alive but slow: a real failure
                    raise
                proc = None  # the port was taken meanwhile: try another
        if proc is None:
            raise RuntimeError(f"postgres did not start: {log.read_text()[-2000:]}")
        yield PgServer("127.0.0.1", port, password, top, proc.pid)
    finally:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # fast shutdown: roll back, checkpoint, exit
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database of its own for one test; its DSN includes the password."""
    name = f"t_{secrets.token_hex(6)}"
    pg_server.psql(f"CREATE DATABASE {name}")
    try:
        yield pg_server.dsn_with_password(name)
    finally:
        pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def migrated(dsn: str) -> None:
    """Create the schema before the nodes start (they would race for it, harmlessly)."""
    db = PgDatabase(PostgresConfig(dsn=dsn, tls="disable"))
    await db.open()
    await db.close()
