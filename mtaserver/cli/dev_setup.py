"""``mtaserver dev-setup``: what ``make run`` needs on a fresh clone.

Creates the certificate, DKIM keys and secrets the config names (when missing) and a
``dev`` submission user for the config's DKIM domains, whose password is kept in
``data_dir/dev-credentials`` (mode 0600) and printed on every run.
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

from mtaserver.auth import hash_password
from mtaserver.cli._common import add_config_arg, config_from, with_db
from mtaserver.config import Config
from mtaserver.devsetup import ensure_dev_files, write_private
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.users import UserStore

DEV_USER = "dev"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dev-setup",
        help="create the dev certificate, DKIM keys, secrets and dev user a config needs",
    )
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    files = ensure_dev_files(Path(args.config))
    for path in files.created:
        print(f"created {path}")
    config = config_from(args)  # everything it names now exists: validate fully
    password = with_db(config, lambda db: _ensure_user(config, db))
    listeners = [
        (name, addr)
        for name, addr in (
            ("STARTTLS", config.submission.listen),
            ("implicit TLS", config.submission.listen_tls),
        )
        if addr
    ]
    print(f"dev user: {DEV_USER}  password: {password}")
    for name, (host, port) in listeners:
        print(f"  submit with AUTH over {name} at {host}:{port}")
    if config.submission.listen_plain:
        host, port = config.submission.listen_plain
        print(f"  trusted-network plaintext submission at {host}:{port}")
    return 0


async def _ensure_user(config: Config, db: Database) -> str:
    creds = config.server.data_dir / "dev-credentials"
    store = UserStore(db)
    existing = await store.lookup(DEV_USER)
    if existing is not None and creds.exists():
        return creds.read_text().strip()
    password = secrets.token_urlsafe(12)
    domains = sorted({k.domain for k in config.dkim}) or ["example.com"]
    if existing is None:
        await store.add(DEV_USER, hash_password(password), domains)
    else:
        await store.set_password(DEV_USER, hash_password(password))
    if creds.exists():
        creds.unlink()
    write_private(creds, password.encode() + b"\n")
    return password
