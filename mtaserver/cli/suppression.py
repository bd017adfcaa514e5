"""``mtaserver suppression list|add|remove|check|review``: the suppression list by hand.

``review`` finds entries a bounce made for a reason that does not mean the address is dead
(a spam verdict, a policy block, the soft-bounce threshold of older versions): judged by
their recorded reason, or, for entries made before the reason taxonomy, by reclassifying
the reply or bounce diagnostic with today's table; ``--lift`` removes them.

Every action works on the SQLite file, or with ``[storage] backend = "postgresql"`` on the
cluster's list (one list for every node: an address added here is refused by all of them).
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from mtaserver.classify import REASONS
from mtaserver.cli._common import add_config_arg, config_from, with_store
from mtaserver.clock import SystemClock
from mtaserver.config.units import parse_duration
from mtaserver.errors import ConfigError
from mtaserver.storage.postgres.events import PgEventLog
from mtaserver.storage.postgres.suppressions import PgSuppressionStore
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.suppression import Review, Suppression, review, valid_address


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

    rv = groups.add_parser(
        "review",
        help="list entries a bounce made for a reason that is not a dead address "
        "(exit 1 if any is left); --lift removes them",
    )
    add_config_arg(rv)
    rv.add_argument("--reason", help="only entries judged to have this reason, e.g. spamdetected")
    rv.add_argument("--lift", action="store_true", help="remove the entries listed")
    rv.add_argument("--dry-run", action="store_true", help="with --lift: print, change nothing")
    rv.set_defaults(func=run_review)


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
    rows = with_store(
        cfg, SuppressionStore, PgSuppressionStore,
        lambda store: store.list(args.address, limit=args.limit, include_expired=args.all),
    )  # fmt: skip
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
    s = with_store(
        cfg, SuppressionStore, PgSuppressionStore,
        lambda store: store.add(
            address, args.reason, scope=args.scope, source="manual", expires_at=expires
        ),
    )  # fmt: skip
    print(_line(s))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    address = valid_address(args.address)
    n = with_store(
        cfg, SuppressionStore, PgSuppressionStore,
        lambda store: store.remove(address, args.scope or None, all_scopes=args.scope is None),
    )  # fmt: skip
    print(f"removed {n} entr{'y' if n == 1 else 'ies'} for {address.lower()}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    address = valid_address(args.address)
    window = cfg.inbound.suppression.soft_bounce_window

    async def look(store: SuppressionStore) -> tuple[Suppression | None, list[tuple[float, str]]]:
        return await store.check(address, args.sender_domain), await store.soft_bounces(address)

    policy = cfg.inbound.suppression
    s, counted = with_store(
        cfg, lambda db: SuppressionStore(db, policy=policy),
        lambda db: PgSuppressionStore(db, policy=policy), look,
    )  # fmt: skip
    if s is None:
        note = ""
        if counted:
            reasons = ", ".join(dict.fromkeys(r for _, r in counted))
            note = (f" ({len(counted)} soft bounce{'s' if len(counted) != 1 else ''} counted "
                    f"in the last {window / 86400:g}d: {reasons})")  # fmt: skip
        print(f"{address.lower()}: not suppressed{note}")
        return 0
    print(_line(s))
    return 1


_SPACE_RE = re.compile(r"\s+")


def _event_text(data: dict[str, object]) -> str:
    """The reply a bounced event carries: a sync reply, or an async bounce's status and
    diagnostic (with its reply code, which says the class)."""
    if data.get("reply"):
        return str(data["reply"])
    parts = (data.get("reply_code"), data.get("status"), data.get("diagnostic"))
    return " ".join(str(p) for p in parts if p)


async def _bounce_text(events: EventLog, s: Suppression) -> str | None:
    """The text of the event that made an entry recorded before 0100 (no reply of its own):
    its own event when linked, else the newest bounce or complaint of the address in the
    message."""
    if s.reply or not s.queue_id or s.reason in REASONS:
        return None
    found = await events.page(types=("bounced", "complaint"), queue_id=s.queue_id, limit=1000)
    mine = [e for e in found if e.id == s.event_id] or [
        e for e in found if (e.recipient or "").lower() == s.address
    ]
    if not mine:
        return None
    return _event_text(mine[-1].data) or None


Stores = tuple[SuppressionStore, EventLog]


async def _review(stores: Stores, reason: str | None, lift: bool) -> tuple[list[Review], int]:
    store, events = stores
    entries = await store.made_by_policy()
    found: list[Review] = []
    for s in entries:
        r = review(s, await _bounce_text(events, s))
        if r is not None and not r.keep and reason in (None, r.reason):
            found.append(r)
    if lift and found:
        gone = {(s.address, s.scope) for s in await store.lift([r.entry for r in found])}
        found = [r for r in found if (r.entry.address, r.entry.scope) in gone]
    return found, len(entries)


def _review_line(verb: str, r: Review) -> str:
    s = r.entry
    reply = _SPACE_RE.sub(" ", s.reply or "").strip()[:200] or "-"
    return (
        f"{verb}\t{s.address}\tscope={s.scope or 'global'}\treason={r.reason}"
        f"\tstored={s.reason}\tjudged_by={r.basis}\tsource={s.source}"
        f"\tcreated={_fmt_time(s.created_at)}\tqueue_id={s.queue_id or '-'}\treply={reply}"
    )


def run_review(args: argparse.Namespace) -> int:
    """Exit 0: nothing to lift, or everything listed was lifted; 1: entries listed and
    left in place (no --lift, or --dry-run); 2: an operator mistake."""
    if args.reason is not None and args.reason not in REASONS:
        raise ConfigError(
            f"--reason: unknown reason {args.reason!r} (one of: {', '.join(REASONS)})"
        )
    cfg = config_from(args)
    lift = args.lift and not args.dry_run
    found, total = with_store(
        cfg, lambda db: (SuppressionStore(db), EventLog(db)),
        lambda db: (PgSuppressionStore(db), PgEventLog(db)),
        lambda stores: _review(stores, args.reason, lift),
    )  # fmt: skip
    verb = "lifted" if lift else "would-lift" if args.lift else "review"
    for r in found:
        print(_review_line(verb, r))
    what = f"{len(found)} of {total} entries made by bounces and complaints"
    if lift:
        print(f"lifted {what}", file=sys.stderr)
        return 0
    print(f"{what} suppress for a reason that is not a dead address"
          + ("; run with --lift to remove them" if found else ""), file=sys.stderr)  # fmt: skip
    return 1 if found else 0
