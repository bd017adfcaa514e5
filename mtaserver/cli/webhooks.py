"""``mtaserver webhooks status|retry-failed|keygen|public-key``: the webhook outbox and the
SendGrid-format signing key, for operators.

``mtaserver.webhooks`` (and aiohttp with it) is imported by these commands alone, not by
every command line the parser builds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtaserver.cli._common import add_config_arg, config_from, with_store
from mtaserver.clock import SystemClock


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "webhooks", help="webhook outbox: backlog per webhook, retry failed; SendGrid keys"
    )
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
    k = group.add_parser(
        "keygen",
        help='write an ECDSA P-256 signing key for format = "sendgrid"; print its public key',
    )
    k.add_argument("path", type=Path, help="where to write the private key (PEM, mode 0600)")
    k.add_argument("--force", action="store_true", help="replace an existing key file")
    k.set_defaults(func=run_keygen)
    pk = group.add_parser(
        "public-key", help="print the verification key of a signing key, as SendGrid shows it"
    )
    pk.add_argument("path", type=Path, help="the private key file (signing_key)")
    pk.set_defaults(func=run_public_key)


def run_status(args: argparse.Namespace) -> int:
    from mtaserver.storage.postgres.outbox import PgWebhookOutbox
    from mtaserver.storage.sqlite.outbox import WebhookOutbox

    rows = with_store(config_from(args), WebhookOutbox, PgWebhookOutbox, lambda o: o.backlog())
    print(f"{'webhook':40} {'pending':>8} {'waiting':>8} {'failed':>8}")
    for b in rows:
        print(f"{b.webhook:40} {b.pending:>8} {b.waiting:>8} {b.failed:>8}")
    return 0


def run_retry(args: argparse.Namespace) -> int:
    from mtaserver.storage.postgres.outbox import PgWebhookOutbox
    from mtaserver.storage.sqlite.outbox import WebhookOutbox

    n = with_store(
        config_from(args), WebhookOutbox, PgWebhookOutbox,
        lambda o: o.retry_failed(args.name, now=SystemClock().now()),
    )  # fmt: skip
    print(f"{n} event(s) queued again; the daemon sends them within a second")
    return 0


def run_keygen(args: argparse.Namespace) -> int:
    from mtaserver.webhooks import sendgrid

    key = sendgrid.generate_key()
    try:
        sendgrid.write_key(args.path, key, force=args.force)
    except FileExistsError:
        print(f"{args.path}: exists; receivers hold its public key. Use --force to replace it",
              file=sys.stderr)  # fmt: skip
        return 2
    except OSError as exc:
        print(f"{args.path}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"# private key written to {args.path}; in the config:", file=sys.stderr)
    print(f'#   format = "sendgrid"\n#   signing_key = "{args.path}"', file=sys.stderr)
    print("# verification key (the receiver's public key, SendGrid's form):", file=sys.stderr)
    print(sendgrid.public_key_b64(key))
    return 0


def run_public_key(args: argparse.Namespace) -> int:
    from mtaserver.webhooks import sendgrid

    print(sendgrid.public_key_b64(sendgrid.load_key(args.path)))
    return 0
