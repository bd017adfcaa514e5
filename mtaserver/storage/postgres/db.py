"""The PostgreSQL connection pool, its migrations, and the translation of its failures.

Several nodes share one database, so migrations run under a transaction-scoped advisory
lock: the first node to start applies them, the others wait and find them applied. Each
migration is one transaction, recorded in ``schema_migrations`` like SQLite's runner.
Durability is PostgreSQL's own (``synchronous_commit`` on, the server default): a COMMIT
that returned is on the server's disk, so 250 after ``transaction()`` exits is safe;
concurrent sessions' commits share the WAL flush (PostgreSQL's own group commit). Each
commit's latency (BEGIN to COMMIT returned) goes to the ``on_commit`` observers, as SQLite's
group commits do: ``mtaserver_db_commit_seconds`` on either backend.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import asyncpg

from mtaserver.clock import Clock, SystemClock
from mtaserver.config.storage import PostgresConfig
from mtaserver.errors import ConfigError, StorageError

# Any number: the cluster-wide lock key that serializes schema migrations.
_MIGRATION_LOCK = 0x6D7461_0001
# SQLSTATE classes that mean "full": disk full (53100), out of memory (53200), too many
# connections (53300) is temporary like any other.
_FULL = {"53100", "53200"}

Connection = Any  # asyncpg.Connection; asyncpg ships no type information


def translate(exc: BaseException) -> StorageError:
    """PostgreSQL and network failures → StorageError (disk full → 452, others → 451)."""
    state = getattr(exc, "sqlstate", None)
    return StorageError(f"postgresql: {type(exc).__name__}: {exc}", full=state in _FULL)


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every migration in ``migrations/`` next to this module, sorted."""
    pkg = resources.files("mtaserver.storage.postgres") / "migrations"
    out = [
        (e.name.removesuffix(".sql"), e.read_text(encoding="utf-8"))
        for e in pkg.iterdir()
        if e.name.endswith(".sql")
    ]
    return sorted(out)


def read_password(cfg: PostgresConfig, environ: dict[str, str] | None = None) -> str | None:
    """The password from ``password_file`` (first line) or ``password_env``; None if neither."""
    env = os.environ if environ is None else environ
    if cfg.password_file is not None:
        try:
            return cfg.password_file.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError(
                f"storage.password_file: cannot read a password from {cfg.password_file}: {exc}"
            ) from None
    if cfg.password_env is not None:
        value = env.get(cfg.password_env)
        if not value:
            raise ConfigError(
                f"storage.password_env: environment variable {cfg.password_env} is not set"
            )
        return value
    return None


def ssl_for(cfg: PostgresConfig) -> ssl.SSLContext | str | bool:
    """asyncpg's ``ssl`` argument for ``tls`` (libpq's sslmode names, libpq's meaning:
    ``require`` encrypts without checking the certificate, ``verify-ca`` checks it against
    ``tls_ca_file`` (or the system store), ``verify-full`` checks the host name too)."""
    if cfg.tls == "disable":
        return False
    if cfg.tls in ("prefer", "require") and cfg.tls_cert_file is None:
        return cfg.tls
    ctx = ssl.create_default_context(
        cafile=str(cfg.tls_ca_file) if cfg.tls_ca_file is not None else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.tls != "verify-full":
        ctx.check_hostname = False
    if cfg.tls in ("prefer", "require"):
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.tls_cert_file is not None and cfg.tls_key_file is not None:
        ctx.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file))
    return ctx


class PgDatabase:
    """One pool per process; ``transaction()`` for writes, ``connection()`` for reads."""

    def __init__(
        self, cfg: PostgresConfig, *, password: str | None = None, clock: Clock | None = None
    ) -> None:
        self.cfg = cfg
        self._password = password
        self._pool: Any = None
        self.clock: Clock = clock or SystemClock()
        self.on_commit: list[Callable[[float, int], None]] = []  # (seconds, 1) per commit

    async def open(self, *, migrate: bool = True) -> list[str]:
        """Connect; apply pending migrations (under the cluster-wide lock). Their names."""
        password = self._password if self._password is not None else read_password(self.cfg)
        try:
            self._pool = await asyncpg.create_pool(
                self.cfg.dsn,
                password=password,
                ssl=ssl_for(self.cfg),
                min_size=0,  # no background reconnects (asyncpg logs each failure)
                max_size=self.cfg.pool_size,
                timeout=self.cfg.connect_timeout,
                command_timeout=60,
                server_settings={"application_name": "mtaserver"},
            )
            async with self._pool.acquire() as conn:  # fail here, naming the DSN, if we cannot
                await conn.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None
            raise StorageError(
                f"storage.dsn: cannot connect to {self.cfg.dsn}: {type(exc).__name__}: {exc}"
            ) from None
        return await self.migrate() if migrate else []

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def migrate(self) -> list[str]:
        applied = []
        async with self.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name text PRIMARY KEY, applied_at double precision)"
            )
            done = {r[0] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for name, sql in migration_files():
                if name in done:
                    continue
                async with conn.transaction():  # a savepoint: one migration, all or nothing
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations(name, applied_at) "
                        "VALUES ($1, extract(epoch from now()))",
                        name,
                    )
                applied.append(name)
        return applied

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A connection inside one transaction; committed on exit, failures → StorageError."""
        if self._pool is None:
            raise StorageError("postgresql: the pool is not open")
        try:
            async with self._pool.acquire() as conn:
                started = self.clock.monotonic()
                async with conn.transaction():
                    yield conn
                elapsed = self.clock.monotonic() - started
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise translate(exc) from None
        for observer in self.on_commit:
            observer(elapsed, 1)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A connection for reads (autocommit)."""
        if self._pool is None:
            raise StorageError("postgresql: the pool is not open")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise translate(exc) from None
