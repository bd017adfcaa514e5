"""``mtaserver backup PATH``: a consistent online copy of the database."""

from __future__ import annotations

import argparse
from pathlib import Path

from mtaserver.cli._common import add_config_arg, config_from
from mtaserver.errors import MtaError
from mtaserver.storage.sqlite.backup import backup_sync


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "backup",
        help="copy the database to PATH while the daemon runs (SQLite backup API, verified)",
    )
    p.add_argument("path", type=Path, help="backup file to write (replaced atomically)")
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    if cfg.storage.backend == "postgresql":  # the SQLite file is not this node's data
        raise MtaError(
            f"{cfg.source}: storage.backend: mtaserver backup copies the SQLite file; back up "
            "the cluster's PostgreSQL database with pg_dump or pg_basebackup instead"
        )
    r = backup_sync(cfg.storage.database, args.path)
    print(f"{r.path}: {r.size} bytes, {r.pages} pages, integrity ok, {r.seconds:.2f}s")
    if cfg.storage.encryption_key_file is not None:
        print(f"bodies are encrypted: keep a copy of {cfg.storage.encryption_key_file} too")
    return 0
