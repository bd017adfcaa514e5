"""Helpers shared by command modules: the -c option and opening the database."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mtaserver.config import Config
from mtaserver.keyfiles import load_checked
from mtaserver.storage.sqlite.db import Database

T = TypeVar("T")


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
    """Open the daemon's database (safe while it runs: WAL), run ``fn``, close."""

    async def runner() -> T:
        db = Database(config.storage.database)
        await db.open()
        try:
            return await fn(db)
        finally:
            await db.close()

    return asyncio.run(runner())
