"""Helpers shared by command modules: the -c option and opening the database."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from mtaserver.auth import normalize_name
from mtaserver.config import Config
from mtaserver.errors import MtaError
from mtaserver.keyfiles import load_checked
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.users import UserStore

if TYPE_CHECKING:  # asyncpg loads in with_pg, for a PostgreSQL config only
    from mtaserver.storage.postgres.db import PgDatabase
    from mtaserver.storage.postgres.users import PgUserStore

T = TypeVar("T")
S = TypeVar("S")


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get("MTASERVER_CONFIG", "/etc/mtaserver/mtaserver.toml"),
        help="config file (default: $MTASERVER_CONFIG or /etc/mtaserver/mtaserver.toml)",
    )


def config_from(args: argparse.Namespace) -> Config:
    return load_checked(args.config)


def with_db(config: Config, fn: Callable[[Database], Awaitable[T]]) -> T:
    """Open the daemon's database (safe while it runs: WAL), run ``fn``, close.

    With ``backend = "postgresql"`` the SQLite file is not the node's database: refuse
    rather than show or change the wrong data."""
    if config.storage.backend == "postgresql":
        raise MtaError(
            f"{config.source}: storage.backend: this command is not yet supported with "
            'backend = "postgresql" (every command is but dev-setup, which makes a local '
            "SQLite database, and backup: use pg_dump)"
        )

    async def runner() -> T:
        db = Database(config.storage.database)
        await db.open()
        try:
            return await fn(db)
        finally:
            await db.close()

    return asyncio.run(runner())


def with_pg(config: Config, fn: Callable[[PgDatabase], Awaitable[T]]) -> T:
    """Open the cluster's PostgreSQL database (backend = "postgresql"), run ``fn``, close."""
    pg = config.storage.postgres
    if pg is None:
        raise MtaError(f'{config.source}: storage.backend: not "postgresql"')
    from mtaserver.storage.postgres.db import PgDatabase  # asyncpg: PostgreSQL configs only

    async def runner() -> T:
        db = PgDatabase(pg)
        await db.open()
        try:
            return await fn(db)
        finally:
            await db.close()

    return asyncio.run(runner())


def with_users(config: Config, fn: Callable[[UserStore | PgUserStore], Awaitable[T]]) -> T:
    """Run ``fn`` on the user store of the configured backend (PostgreSQL: the cluster's)."""
    if config.storage.postgres is None:
        return with_db(config, lambda db: fn(UserStore(db)))
    from mtaserver.storage.postgres.users import PgUserStore  # with_pg's backend

    return with_pg(config, lambda db: fn(PgUserStore(db)))


def with_store(
    config: Config,
    lite: Callable[[Database], S],
    pg: Callable[[PgDatabase], Any],
    fn: Callable[[S], Awaitable[T]],
) -> T:
    """Run ``fn`` on the store(s) ``lite`` builds over the SQLite file, or ``pg`` over the
    cluster's database with backend = "postgresql" (owners with the same methods)."""
    if config.storage.postgres is None:
        return with_db(config, lambda db: fn(lite(db)))
    return with_pg(config, lambda db: fn(cast(S, pg(db))))


def with_owner(
    config: Config,
    lite: Callable[[Database], S],
    pg: Callable[[PgDatabase], Any],
    user: str,
    fn: Callable[[S, str], Awaitable[T]],
) -> T:
    """``with_store`` for a marketing command: ``fn(store, owner)`` with ``--user`` checked
    against the same backend's users (refused when unknown)."""
    owner = normalize_name(user)

    async def run(store: S, users: UserStore | PgUserStore) -> T:
        if await users.lookup(owner) is None:
            raise ArgError(f"--user: no user {owner!r} (see `mtaserver user list`)")
        return await fn(store, owner)

    if config.storage.postgres is None:
        return with_db(config, lambda db: run(lite(db), UserStore(db)))
    from mtaserver.storage.postgres.users import PgUserStore  # with_pg's backend

    return with_pg(config, lambda db: run(cast(S, pg(db)), PgUserStore(db)))


class ArgError(MtaError, ValueError):
    """A command-line argument that cannot be used; the message names the option."""


async def known_user(db: Database, name: str) -> str:
    """The ``--user`` a marketing command acts for, normalized; refused when unknown."""
    user = normalize_name(name)
    if await UserStore(db).lookup(user) is None:
        raise ArgError(f"--user: no user {user!r} (see `mtaserver user list`)")
    return user


def text_arg(raw: str, option: str, limit: int) -> str:
    """A document given on the command line as text, ``@FILE`` or ``@-`` (stdin), read up
    to ``limit + 1`` characters (so the caller can tell it is too large)."""
    if not raw.startswith("@"):
        return raw
    name = raw[1:]
    try:
        if name == "-":
            return sys.stdin.read(limit + 1)
        with Path(name).open(encoding="utf-8") as f:
            return f.read(limit + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise ArgError(f"{option}: {name}: {getattr(exc, 'strerror', None) or exc}") from None
