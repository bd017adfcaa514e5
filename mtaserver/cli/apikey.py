"""``mtaserver apikey create|list|revoke``: keys for the HTTP send API.

``create`` prints the key once, alone on stdout (``KEY=$(mtaserver apikey create --user
app)`` works); only its SHA-256 is stored. A key sends as its user, so that user's domains
and rate limit apply. Safe while the daemon runs: the API checks the table on every
request, so a revoked key stops working at once.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from mtaserver.auth import UserError, normalize_name
from mtaserver.cli._common import add_config_arg, config_from, with_store
from mtaserver.clock import SystemClock
from mtaserver.storage.postgres.apikeys import PgApiKeyStore
from mtaserver.storage.postgres.users import PgUserStore
from mtaserver.storage.sqlite.apikeys import ApiKeyInfo, ApiKeyStore, parse_scopes
from mtaserver.storage.sqlite.users import UserStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("apikey", help="HTTP send API keys (SendGrid v3 compatible)")
    cmds = p.add_subparsers(dest="apikey_command", metavar="ACTION")
    cmds.required = True

    create = cmds.add_parser("create", help="create a key for a user and print it (once)")
    create.add_argument("--user", required=True, help="the user the key sends as")
    create.add_argument(
        "--scopes",
        default="mail.send",
        help="comma-separated: mail.send, mail.batch.create, mail.batch.read, "
        "user.scheduled_sends.{create,read,update,delete}, contacts.read (GET /v1/contacts, "
        "/v1/lists, activity), contacts.write (create, import, delete, list members); "
        "shorthands mail.batch, user.scheduled_sends, all (default: mail.send)",
    )
    create.add_argument("--name", default="", help="a label for the key")
    create.set_defaults(func=_create)

    lst = cmds.add_parser("list", help="list keys (never their text)")
    lst.add_argument("--user", help="only this user's keys")
    lst.set_defaults(func=_list)

    revoke = cmds.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", metavar="ID")
    revoke.set_defaults(func=_revoke)

    for parser in (create, lst, revoke):
        add_config_arg(parser)


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _create(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    user = normalize_name(args.user)
    scopes = parse_scopes([args.scopes])

    async def run(stores: tuple[UserStore, ApiKeyStore]) -> tuple[ApiKeyInfo, str]:
        users, keys = stores
        if await users.lookup(user) is None:
            raise UserError(f"--user: no user {user!r} (create it with `mtaserver user add`)")
        return await keys.create(user, scopes, args.name, SystemClock().now())

    info, key = with_store(
        cfg, lambda db: (UserStore(db), ApiKeyStore(db)),
        lambda db: (PgUserStore(db), PgApiKeyStore(db)), run,
    )  # fmt: skip
    print(key)
    print(
        f"created API key {info.key_id} for user {info.user} (scopes: "
        f"{','.join(sorted(info.scopes))}); it is shown only now. Use it as "
        "'Authorization: Bearer <key>'.",
        file=sys.stderr,
    )
    return 0


def _line(k: ApiKeyInfo) -> str:
    state = "active" if k.active else f"revoked {_when(k.revoked_at)}"
    return (
        f"{k.key_id}\t{k.user}\t{k.name or '-'}\t{','.join(sorted(k.scopes))}\t"
        f"created {_when(k.created_at)}\tused {_when(k.last_used_at)}\t{state}"
    )


def _list(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    user = normalize_name(args.user) if args.user else None
    keys = with_store(cfg, ApiKeyStore, PgApiKeyStore, lambda st: st.list(user))
    for k in keys:
        print(_line(k))
    if not keys:
        print("no API keys", file=sys.stderr)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    info = with_store(
        cfg, ApiKeyStore, PgApiKeyStore, lambda st: st.revoke(args.key_id, SystemClock().now())
    )
    print(f"revoked API key {info.key_id} of user {info.user}")
    return 0
