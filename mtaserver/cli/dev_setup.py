"""``mtaserver dev-setup``: create dev certificates, keys and secrets (used by ``make run``)."""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

from mtaserver.auth import UserStore, hash_password
from mtaserver.cli._common import add_config_arg, config_from, with_db
from mtaserver.config import Config
from mtaserver.db import Database
from mtaserver.devsetup import ensure_dev_files, write_private


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dev-setup",
        help="create the self-signed certificate, DKIM keys and secrets a config names, if missing",
    )
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    files = ensure_dev_files(Path(args.config))
    for path in files.created:
        print(f"created {path}")
    cfg = config_from(args)  # everything it names now exists: validate fully
    ensure_dev_user(cfg)
    return 0


def ensure_dev_user(cfg: Config) -> None:
    """A submission user ``dev`` for the DKIM domains, its password printed once.

    The password is also kept in ``data_dir/dev-user.txt`` (0600) for later runs.
    """
    note = cfg.server.data_dir / "dev-user.txt"
    domains = sorted({k.domain for k in cfg.dkim}) or ["example.com"]

    async def create(db: Database) -> str | None:
        store = UserStore(db)
        if any(u.name == "dev" for u in await store.list()):
            return None
        password = secrets.token_urlsafe(12)
        await store.add("dev", hash_password(password), domains)
        return password

    password = with_db(cfg, create)
    if password is not None:
        write_private(note, f"user dev\npassword {password}\n".encode())
        print(f"created submission user dev (domains {', '.join(domains)}) password {password}")
    elif note.exists():
        print(f"submission user dev: password in {note}")
