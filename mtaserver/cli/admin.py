"""``mtaserver admin token create|list|revoke``: bearer tokens for the admin API.

``create`` prints the token once, alone on stdout (``TOKEN=$(mtaserver admin token create)``
works); only its SHA-256 is stored, so a lost token is revoked and replaced, not recovered.
Safe while the daemon runs: the API checks the table on every request, so a revoked token
stops working at once.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from mtaserver.cli._common import add_config_arg, config_from, with_store
from mtaserver.clock import SystemClock
from mtaserver.storage.postgres.tokens import PgTokenStore
from mtaserver.storage.sqlite.tokens import TokenInfo, TokenStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("admin", help="admin API access: bearer tokens")
    groups = p.add_subparsers(dest="admin_command", metavar="GROUP")
    groups.required = True
    token = groups.add_parser("token", help="create, list and revoke admin API tokens")
    cmds = token.add_subparsers(dest="token_command", metavar="ACTION")
    cmds.required = True

    create = cmds.add_parser("create", help="create a token and print it (once)")
    create.add_argument("--name", help="a label for the token (default: token-YYYYMMDD-HHMMSS)")
    create.set_defaults(func=_create)

    lst = cmds.add_parser("list", help="list tokens (never their text)")
    lst.set_defaults(func=_list)

    revoke = cmds.add_parser("revoke", help="revoke a token by name or id")
    revoke.add_argument("token", metavar="NAME|ID")
    revoke.set_defaults(func=_revoke)

    for parser in (create, lst, revoke):
        add_config_arg(parser)


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _create(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    name = args.name or datetime.fromtimestamp(SystemClock().now(), UTC).strftime(
        "token-%Y%m%d-%H%M%S"
    )
    info, token = with_store(
        cfg, TokenStore, PgTokenStore, lambda st: st.create(name, SystemClock().now())
    )
    print(token)
    print(
        f"created admin token {info.name} (id {info.id}); it is shown only now. Use it as "
        "'Authorization: Bearer <token>'.",
        file=sys.stderr,
    )
    return 0


def _line(t: TokenInfo) -> str:
    state = "active" if t.active else f"revoked {_when(t.revoked_at)}"
    return f"{t.id}\t{t.name}\tcreated {_when(t.created_at)}\tused {_when(t.last_used_at)}\t{state}"


def _list(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    tokens = with_store(cfg, TokenStore, PgTokenStore, lambda st: st.list())
    for t in tokens:
        print(_line(t))
    if not tokens:
        print("no admin tokens", file=sys.stderr)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    info = with_store(
        cfg, TokenStore, PgTokenStore, lambda st: st.revoke(args.token, SystemClock().now())
    )
    print(f"revoked admin token {info.name} (id {info.id})")
    return 0
