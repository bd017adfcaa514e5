"""``mtaserver suppression list|add|remove|check``: the suppression list by hand."""

from __future__ import annotations

import argparse
import time

from mtaserver.cli._common import add_config_arg, config_from, with_db
from mtaserver.clock import SystemClock
from mtaserver.config.units import parse_duration
from mtaserver.errors import ConfigError
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.suppression import Suppression, valid_address


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("suppression", help="list, add, remove or check suppressed addresses")
    groups = p.add_subparsers(dest="suppression_command", metavar="ACTION")
    groups.required = True

    ls = groups.add_parser("list", help="list entries (newest first)")
    add_config_arg(ls)
    ls.add_argument("address", nargs="?", help="only this address")
    ls.add_argument("--all", action="store_true", help="include expired entries")
    ls.add_argument("--limit", type=int, default=1000)
    ls.set_defaults(func=run_list)

    add = groups.add_parser("add", help="suppress an address")
    add_config_arg(add)
    add.add_argument("address")
    add.add_argument("--reason", default="manual")
    add.add_argument("--scope", help="sending domain it applies to (default: global)")
    add.add_argument("--for", dest="duration", help="expire after this long, e.g. 30d")
    add.set_defaults(func=run_add)

    rm = groups.add_parser("remove", help="remove an address (every scope unless --scope)")
    add_config_arg(rm)
    rm.add_argument("address")
    rm.add_argument("--scope", help="only the entry for this sending domain ('' for global)")
    rm.set_defaults(func=run_remove)

    chk = groups.add_parser("check", help="is mail to ADDRESS suppressed? (exit 1 if so)")
    add_config_arg(chk)
    chk.add_argument("address")
    chk.add_argument("--sender-domain", help="the sending domain to check for")
    chk.set_defaults(func=run_check)


def _fmt_time(t: float | None) -> str:
    if t is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _line(s: Suppression) -> str:
    return (
        f"{s.address}\tscope={s.scope or 'global'}\treason={s.reason}\tsource={s.source}"
        f"\tcreated={_fmt_time(s.created_at)}\texpires={_fmt_time(s.expires_at)}"
        f"\tqueue_id={s.queue_id or '-'}\tevent={s.event_id or '-'}"
    )


def run_list(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    rows = with_db(
        cfg,
        lambda db: SuppressionStore(db).list(
            args.address, limit=args.limit, include_expired=args.all
        ),
    )
    for s in rows:
        print(_line(s))
    return 0


def run_add(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    address = valid_address(args.address)
    expires = None
    if args.duration:
        try:
            expires = SystemClock().now() + parse_duration(args.duration)
        except ValueError:
            raise ConfigError(
                f"--for: expected a duration like '30d', got {args.duration!r}"
            ) from None
    s = with_db(
        cfg,
        lambda db: SuppressionStore(db).add(
            address, args.reason, scope=args.scope, source="manual", expires_at=expires
        ),
    )
    print(_line(s))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    address = valid_address(args.address)
    n = with_db(
        cfg,
        lambda db: SuppressionStore(db).remove(
            address, args.scope or None, all_scopes=args.scope is None
        ),
    )
    print(f"removed {n} entr{'y' if n == 1 else 'ies'} for {address.lower()}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    address = valid_address(args.address)
    s = with_db(cfg, lambda db: SuppressionStore(db).check(address, args.sender_domain))
    if s is None:
        print(f"{address.lower()}: not suppressed")
        return 0
    print(_line(s))
    return 1
