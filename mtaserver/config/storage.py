"""``[storage]``: which backend holds the queue and the tables, and how to reach it.

``backend = "sqlite"`` (default): one file, ``database``. ``backend = "postgresql"``: a
server shared by several nodes, reached at ``dsn``; the password comes from
``password_file`` or the environment variable ``password_env``, never from the config
file (a DSN with a password in it is an error naming the key).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mtaserver.config.reader import Reader
from mtaserver.errors import ConfigError

BACKENDS = ("sqlite", "postgresql")
TLS_MODES = ("disable", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    dsn: str  # postgresql://user@host:port/dbname, no password
    password_file: Path | None = None
    password_env: str | None = None
    tls: str = "verify-full"  # libpq's sslmode names
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None  # client certificate, for servers that require one
    tls_key_file: Path | None = None
    pool_size: int = 10
    connect_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class StorageConfig:
    database: Path
    # TOML key file (``mtaserver.crypto``): when set, queued bodies are AES-GCM encrypted;
    # read and checked by ``mtaserver.keyfiles``, not here (config does no key I/O)
    encryption_key_file: Path | None = None
    # below this much free space on the database's filesystem, MAIL answers 452 4.3.1
    min_free: int = 64 * 1024 * 1024
    backend: str = "sqlite"
    postgres: PostgresConfig | None = None  # set when backend = "postgresql"


_PG_KEYS = (
    "dsn", "password_file", "password_env", "tls", "tls_ca_file", "tls_cert_file",
    "tls_key_file", "pool_size", "connect_timeout",
)  # fmt: skip


def parse(r: Reader, data_dir: Path) -> StorageConfig:
    backend = r.choice("backend", BACKENDS, "sqlite")
    pg = _postgres(r) if backend == "postgresql" else None
    if pg is None:
        for key in _PG_KEYS:
            if r.has(key):
                raise r.error(key, 'only used with backend = "postgresql"')
    cfg = StorageConfig(
        database=r.path("database", None) or data_dir / "mtaserver.db",
        encryption_key_file=r.path("encryption_key_file", None),
        min_free=r.size("min_free", 64 * 1024 * 1024),
        backend=backend,
        postgres=pg,
    )
    r.finish()
    return cfg


def _postgres(r: Reader) -> PostgresConfig:
    dsn = r.string("dsn", None)
    if not dsn:
        raise r.error("dsn", 'required with backend = "postgresql" (postgresql://user@host/db)')
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise r.error("dsn", f"expected postgresql://user@host:port/dbname, got {dsn!r}")
    if parts.password is not None:
        raise r.error("dsn", "must not contain the password: use password_file or password_env")
    if parts.query:
        raise r.error("dsn", "no query parameters: TLS is set by tls, tls_ca_file, ...")
    try:
        _ = parts.port
    except ValueError:
        raise r.error("dsn", f"bad port in {dsn!r}") from None
    password_file = r.path("password_file", None, readable=True)
    password_env = r.string("password_env", None)
    if password_file is not None and password_env is not None:
        raise r.error("password_env", "set password_file or password_env, not both")
    cert, key = r.path("tls_cert_file", None, readable=True), r.path("tls_key_file", None)
    if (cert is None) != (key is None):
        raise r.error("tls_key_file" if key is None else "tls_cert_file", "set both or neither")
    return PostgresConfig(
        dsn=dsn,
        password_file=password_file,
        password_env=password_env,
        tls=r.choice("tls", TLS_MODES, "verify-full"),
        tls_ca_file=r.path("tls_ca_file", None, readable=True),
        tls_cert_file=cert,
        tls_key_file=key,
        pool_size=r.integer("pool_size", 10, min=1, max=1000),
        connect_timeout=r.duration("connect_timeout", 10.0),
    )


SUPPORTED_ON_POSTGRESQL = (
    "SMTP submission (server.workers too), the queue, delivery, the bounce listener, events, "
    "suppressions, users, retention, the HTTP send API (api.listen: keys, idempotency, "
    "send batches, templates, /v1 contacts, lists, segments and contact timelines), the "
    "admin API (admin.listen: admin tokens, queue, events, stats, users, suppressions, "
    "templates, privacy export and erase), "
    "webhooks (the same [[webhooks]] on every node), tracking (tracking.listen: opens, "
    "clicks, one-click and mailto: unsubscribes, the double opt-in confirm and preferences "
    "pages; the same tracking secret_file on every node), the double opt-in mailer (each "
    "confirmation queued once across nodes), "
    "campaigns (every node's feeder claims its own rows of a run: each recipient queued "
    "once) and their stats (stats --campaign/--trigger, the admin API's stats routes), "
    "triggers (/v1/events, /v1/triggers; every node's step runner claims the due steps it "
    "fires: each sent once)"
)


def check_postgres(file: str, enabled: dict[str, bool]) -> None:
    """Refuse a config that turns on what is not ported to PostgreSQL yet (``enabled``:
    config key → on), naming the key: such a component must never quietly use SQLite."""
    off = [key for key, on in enabled.items() if on]
    if off:
        raise ConfigError(
            f'{file}: {off[0]}: not yet supported with storage.backend = "postgresql" '
            f"(supported so far: {SUPPORTED_ON_POSTGRESQL}); turn it off or use sqlite"
        )
