"""``mtaserver storage migrate --to postgresql``: each database state (empty, all final,
busy: tests/support/dbstates.py) copied into a fresh PostgreSQL database and verified; a
second copy into the same database is refused, and a refusal commits nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from mtaserver.config.storage import PostgresConfig
from mtaserver.errors import MtaError
from mtaserver.storage.postgres.copy import TABLES, copy_sqlite
from mtaserver.storage.postgres.db import PgDatabase
from tests.pg import PgServer, pg_dsn, pg_server  # noqa: F401
from tests.support.daemon import ROOT, TestConfig
from tests.support.dbstates import STATES, build

pytestmark = pytest.mark.sqlite_only(
    "copies a SQLite node into PostgreSQL (runs in the sqlite entry)"
)


def cli(cfg: TestConfig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mtaserver", *args, "-c", str(cfg.write())],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip


async def counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}
    finally:
        await conn.close()


@pytest.mark.parametrize("state", STATES)
async def test_migrate_copies_and_verifies_every_state(
    tmp_path: Path,
    state: str,
    pg_server: PgServer,  # noqa: F811
    pg_dsn: str,  # noqa: F811
) -> None:
    cfg = TestConfig(tmp_path, tls=False)
    await asyncio.to_thread(build, state, cfg.database)
    (tmp_path / "pw").write_text(pg_server.password + "\n")
    dsn = pg_dsn.replace(f":{pg_server.password}@", "@")
    args = ("storage", "migrate", "--to", "postgresql", "--dsn", dsn,
            "--password-file", str(tmp_path / "pw"), "--tls", "disable")  # fmt: skip
    out = await asyncio.to_thread(cli, cfg, *args)
    assert out.returncode == 0, out.stderr
    assert "verified" in out.stdout and "recipients:" in out.stdout
    copied = await counts(pg_dsn)
    for line in out.stdout.splitlines()[:-1]:
        table, rest = line.split(": ", 1)
        assert copied[table] == int(rest.split()[0])
    if state != "empty":
        assert copied["messages"] > 0 and copied["events"] > 0 and copied["users"] >= 0
    # A second run would double the queue: refused, nothing written.
    again = await asyncio.to_thread(cli, cfg, *args)
    if state != "empty":
        assert again.returncode == 2 and "is not empty" in again.stderr
    assert await counts(pg_dsn) == copied
    # New events continue after the copied ids (the sequence was moved past them).
    conn = await asyncpg.connect(pg_dsn)
    try:
        top = await conn.fetchval("SELECT coalesce(max(id), 0) FROM events")
        new = await conn.fetchval("INSERT INTO events(at, type) VALUES (1, 'probe') RETURNING id")
        assert new == top + 1
    finally:
        await conn.close()


async def test_a_mismatch_rolls_everything_back(
    tmp_path: Path,
    pg_dsn: str,  # noqa: F811
) -> None:
    """Rows already in a target table: refused before anything is committed."""
    path = tmp_path / "mta.db"
    await asyncio.to_thread(build, "busy", path)
    db = PgDatabase(PostgresConfig(dsn=pg_dsn, tls="disable"))
    await db.open()
    try:
        async with db.transaction() as conn:
            await conn.execute(
                "INSERT INTO users(name, password_hash, created_at, updated_at) "
                "VALUES ('x', 'h', 0, 0)"
            )
        with pytest.raises(MtaError, match="users is not empty"):
            await copy_sqlite(path, db)
    finally:
        await db.close()
    left = await counts(pg_dsn)
    assert left["messages"] == 0 and left["users"] == 1
