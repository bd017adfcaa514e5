"""``[storage] backend = "postgresql"``: keys, operator-facing errors naming the key, and the
password read from a file or the environment — never from the config file."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from mtaserver.config import ConfigError, parse_config
from mtaserver.config.storage import PostgresConfig
from mtaserver.errors import StorageError
from mtaserver.storage.postgres.db import PgDatabase, read_password, ssl_for
from tests.pg import PgServer, pg_server  # noqa: F401


def load(text: str, tmp_path: Path):
    return parse_config(text, tmp_path / "config.toml")


def error_of(text: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as exc:
        load(text, tmp_path)
    return str(exc.value)


def test_sqlite_stays_the_default(tmp_path: Path) -> None:
    cfg = load("", tmp_path)
    assert cfg.storage.backend == "sqlite" and cfg.storage.postgres is None


def test_postgresql_keys(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = load(
        '[storage]\nbackend = "postgresql"\ndsn = "postgresql://mta@db.internal:5433/mail"\n'
        'password_file = "pw"\ntls = "verify-ca"\npool_size = 20\nconnect_timeout = "3s"\n',
        tmp_path,
    )
    pg = cfg.storage.postgres
    assert pg is not None and cfg.storage.backend == "postgresql"
    assert (pg.dsn, pg.password_file, pg.tls, pg.pool_size, pg.connect_timeout) == (
        "postgresql://mta@db.internal:5433/mail", tmp_path / "pw", "verify-ca", 20, 3.0
    )  # fmt: skip
    assert read_password(pg) == "s3cret"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('backend = "mysql"', "storage.backend: expected one of 'sqlite', 'postgresql'"),
        ('backend = "postgresql"', "storage.dsn: required with backend"),
        ('backend = "postgresql"\ndsn = "mysql://x/y"', "storage.dsn: expected postgresql://"),
        (
            'backend = "postgresql"\ndsn = "postgresql://u:pw@h/db"',
            "storage.dsn: must not contain the password",
        ),
        (
            'backend = "postgresql"\ndsn = "postgresql://u@h/db?sslmode=require"',
            "storage.dsn: no query",
        ),
        (
            'backend = "postgresql"\ndsn = "postgresql://u@h/db"\ntls = "on"',
            "storage.tls: expected one of",
        ),
        (
            'backend = "postgresql"\ndsn = "postgresql://u@h/db"\npassword_file = "nope"',
            "storage.password_file: file not readable",
        ),
        (
            'backend = "postgresql"\ndsn = "postgresql://u@h/db"\npool_size = 0',
            "storage.pool_size: expected an integer >= 1",
        ),
        ('dsn = "postgresql://u@h/db"', 'storage.dsn: only used with backend = "postgresql"'),
        (
            'backend = "postgresql"\ndsn = "postgresql://u@h/db"\nhost = "x"',
            "storage.host: unknown key",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, body: str, needle: str) -> None:
    assert needle in error_of(f"[storage]\n{body}\n", tmp_path)


def test_password_from_the_environment_and_its_absence() -> None:
    pg = PostgresConfig(dsn="postgresql://u@h/db", password_env="MTA_PG_PASSWORD")
    assert read_password(pg, {"MTA_PG_PASSWORD": "x"}) == "x"
    with pytest.raises(ConfigError, match=r"storage\.password_env: environment variable MTA_PG"):
        read_password(pg, {})
    assert read_password(PostgresConfig(dsn="postgresql://u@h/db"), {}) is None


def test_tls_modes() -> None:
    base = "postgresql://u@h/db"
    assert ssl_for(PostgresConfig(dsn=base, tls="disable")) is False
    assert ssl_for(PostgresConfig(dsn=base, tls="require")) == "require"
    full = ssl_for(PostgresConfig(dsn=base))
    assert isinstance(full, ssl.SSLContext) and full.check_hostname
    ca = ssl_for(PostgresConfig(dsn=base, tls="verify-ca"))
    assert isinstance(ca, ssl.SSLContext) and not ca.check_hostname
    assert ca.verify_mode == ssl.CERT_REQUIRED


async def test_password_file_logs_in_and_a_wrong_one_is_a_storage_error(
    tmp_path: Path,
    pg_server: PgServer,  # noqa: F811
) -> None:
    (tmp_path / "pw").write_text(pg_server.password + "\n")
    good = PostgresConfig(dsn=pg_server.dsn(), password_file=tmp_path / "pw", tls="disable")
    db = PgDatabase(good)
    await db.open(migrate=False)
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT 1") == 1
    await db.close()
    (tmp_path / "bad").write_text("wrong\n")
    bad = PostgresConfig(dsn=pg_server.dsn(), password_file=tmp_path / "bad", tls="disable")
    with pytest.raises(StorageError, match=r"storage\.dsn: cannot connect to postgresql://mta@"):
        await PgDatabase(bad).open()


def test_worker_processes_are_accepted_on_postgresql(tmp_path: Path) -> None:
    """server.workers > 1 was refused on PostgreSQL until workers read it (workers.pgchild);
    tests/test_pg_workers.py runs such a node."""
    text = '[storage]\nbackend = "postgresql"\ndsn = "postgresql://u@h/db"\n[server]\nworkers = 2\n'
    assert parse_config(text, tmp_path / "a.toml").server.workers == 2
