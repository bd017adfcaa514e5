"""``mtaserver user add|list|passwd|remove``: the accounts that may submit mail.

Passwords come from a prompt (asked twice) or, for scripts, one line on stdin with
``--password-stdin``; they are never taken from the command line, where ``ps`` and shell
history would keep them.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime

from mtaserver.auth import MIN_PASSWORD, UserError, hash_password
from mtaserver.cli._common import add_config_arg, config_from, with_users


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("user", help="manage submission users")
    cmds = p.add_subparsers(dest="user_command", metavar="ACTION")
    cmds.required = True

    add = cmds.add_parser("add", help="create a user allowed to send as the given domains")
    add.add_argument("name")
    add.add_argument(
        "--domain", action="append", required=True, help="a domain it may send as (repeat)"
    )
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add.set_defaults(func=_add)

    lst = cmds.add_parser("list", help="list users and their domains")
    lst.set_defaults(func=_list)

    pw = cmds.add_parser("passwd", help="set a new password")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    pw.set_defaults(func=_passwd)

    rm = cmds.add_parser("remove", help="delete a user")
    rm.add_argument("name")
    rm.set_defaults(func=_remove)

    for parser in (add, lst, pw, rm):
        add_config_arg(parser)


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise UserError("passwords do not match")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password too short (at least {MIN_PASSWORD} characters)")
    return password


def _add(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    password_hash = hash_password(read_password(args.password_stdin))
    with_users(cfg, lambda users: users.add(args.name, password_hash, args.domain))
    print(f"user {args.name.strip().lower()} added")
    return 0


def _list(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    records = with_users(cfg, lambda users: users.list())
    for r in records:
        created = datetime.fromtimestamp(r.created_at, UTC).strftime("%Y-%m-%d")
        print(f"{r.name}\t{','.join(r.domains)}\tcreated {created}")
    if not records:
        print("no users", file=sys.stderr)
    return 0


def _passwd(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    password_hash = hash_password(read_password(args.password_stdin))
    with_users(cfg, lambda users: users.set_password(args.name, password_hash))
    print(f"password of {args.name.strip().lower()} changed")
    return 0


def _remove(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    with_users(cfg, lambda users: users.remove(args.name))
    print(f"user {args.name.strip().lower()} removed")
    return 0
