"""``mtaserver storage keygen FILE``: create or rotate the body encryption key file."""

from __future__ import annotations

import argparse
from pathlib import Path

from mtaserver.crypto import generate_key


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


def run_keygen(args: argparse.Namespace) -> int:
    kid = generate_key(args.file, args.id)
    print(f"{args.file}: current key is now {kid!r}; older keys stay for decryption")
    return 0
