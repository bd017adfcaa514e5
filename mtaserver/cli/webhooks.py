"""``mtaserver webhooks status|retry-failed``: the webhook outbox, for operators.

``mtaserver.webhooks`` (and aiohttp with it) is imported by these commands alone, not by
every command line the parser builds.
"""

from __future__ import annotations

import argparse

from mtaserver.cli._common import add_config_arg, config_from, with_db
from mtaserver.clock import SystemClock


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("webhooks", help="webhook outbox: backlog per webhook, retry failed")
    group = p.add_subparsers(dest="webhooks_command", metavar="SUBCOMMAND")
    group.required = True
    s = group.add_parser("status", help="pending, waiting and failed events per webhook")
    add_config_arg(s)
    s.set_defaults(func=run_status)
    r = group.add_parser(
        "retry-failed", help="send given-up events again (after fixing the receiver)"
    )
    r.add_argument("name", nargs="?", help="only this webhook (its name or url)")
    add_config_arg(r)
    r.set_defaults(func=run_retry)


def run_status(args: argparse.Namespace) -> int:
    from mtaserver.storage.sqlite.outbox import WebhookOutbox

    rows = with_db(config_from(args), lambda db: WebhookOutbox(db).backlog())
    print(f"{'webhook':40} {'pending':>8} {'waiting':>8} {'failed':>8}")
    for b in rows:
        print(f"{b.webhook:40} {b.pending:>8} {b.waiting:>8} {b.failed:>8}")
    return 0


def run_retry(args: argparse.Namespace) -> int:
    from mtaserver.storage.sqlite.outbox import WebhookOutbox

    n = with_db(
        config_from(args),
        lambda db: WebhookOutbox(db).retry_failed(args.name, now=SystemClock().now()),
    )
    print(f"{n} event(s) queued again; the daemon sends them within a second")
    return 0
