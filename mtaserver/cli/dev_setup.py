"""``mtaserver dev-setup``: create dev certificates, keys and secrets (used by ``make run``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mtaserver.cli._common import add_config_arg, config_from
from mtaserver.devsetup import ensure_dev_files


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
    config_from(args)  # everything it names now exists: validate fully
    return 0
