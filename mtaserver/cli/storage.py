"""``mtaserver storage keygen FILE``: create or rotate the body encryption key file.
``mtaserver storage migrate --to postgresql --dsn …``: copy the SQLite database into
PostgreSQL and verify the copy (counts and checksums per table)."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
from pathlib import Path

from mtaserver.cli._common import add_config_arg, config_from
from mtaserver.config.storage import TLS_MODES, PostgresConfig
from mtaserver.crypto import generate_key
from mtaserver.errors import MtaError
from mtaserver.storage.postgres.copy import copy_sqlite
from mtaserver.storage.postgres.db import PgDatabase


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("storage", help="encryption at rest of queued bodies")
    group = p.add_subparsers(dest="storage_command", metavar="SUBCOMMAND")
    group.required = True
    k = group.add_parser(
        "keygen",
        help="add a new current key to a key file (created mode 0600); SIGHUP to start using it",
    )
    k.add_argument("file", type=Path)
    k.add_argument("--id", default=None, help="key id (default: generated)")
    k.set_defaults(func=run_keygen)
    m = group.add_parser(
        "migrate",
        help="copy the SQLite database (queue, events, suppressions, users) into PostgreSQL "
        "and verify the copy; stop the daemon first",
    )
    m.add_argument("--to", choices=("postgresql",), required=True)
    m.add_argument("--dsn", required=True, help="postgresql://user@host:port/dbname")
    pw = m.add_mutually_exclusive_group()
    pw.add_argument("--password-file", type=Path, default=None)
    pw.add_argument("--password-env", default=None, help="environment variable with it")
    m.add_argument("--tls", choices=TLS_MODES, default="verify-full")
    m.add_argument("--tls-ca-file", type=Path, default=None)
    add_config_arg(m)
    m.set_defaults(func=run_migrate)


def run_keygen(args: argparse.Namespace) -> int:
    kid = generate_key(args.file, args.id)
    print(f"{args.file}: current key is now {kid!r}; older keys stay for decryption")
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    source = cfg.storage.database
    if not source.exists():
        raise MtaError(f"{cfg.source}: storage.database: {source} does not exist")
    pg = PostgresConfig(
        dsn=args.dsn, password_file=args.password_file, password_env=args.password_env,
        tls=args.tls, tls_ca_file=args.tls_ca_file, pool_size=2,
    )  # fmt: skip
    lock = source.with_suffix(".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MtaError(
                f"{lock}: mtaserver is running on this database; stop it first"
            ) from None
        copies = asyncio.run(_migrate(source, pg))
    finally:
        os.close(fd)
    for c in copies:
        print(f"{c.table}: {c.rows} rows, checksum {c.checksum[:16]} (equal on both sides)")
    print(f'copied {source} into {args.dsn} and verified; set [storage] backend = "postgresql"')
    return 0


async def _migrate(source: Path, pg: PostgresConfig) -> list:  # type: ignore[type-arg]
    db = PgDatabase(pg)
    await db.open()
    try:
        return await copy_sqlite(source, db)
    finally:
        await db.close()
