"""``mtaserver dsn parse [FILE]``: what the daemon's parser makes of one message.

Prints one JSON object per reported recipient, one per line; nothing (exit 0) for a message
that is not a bounce or complaint. Exit 2 only when the input cannot be read. ``reason`` is
the sisimai-style reason (``userunknown``, ``mailboxfull``, ``spamdetected``...) and
``kind`` the kind of that reason: ``hard`` (the address or domain is dead), ``soft`` or
``feedback`` (a complaint).
"""

from __future__ import annotations

import argparse
import json
import sys

from mtaserver.dsn import parse_bounce
from mtaserver.dsn.recipient import reason_kind_of, reason_of
from mtaserver.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dsn", help="bounce (DSN/ARF) tools")
    groups = p.add_subparsers(dest="dsn_command", metavar="ACTION")
    groups.required = True
    parse = groups.add_parser(
        "parse", help="parse a bounce or complaint; one JSON line per reported recipient"
    )
    parse.add_argument("file", nargs="?", help="message file (default: standard input)")
    parse.set_defaults(func=run_parse)


def run_parse(args: argparse.Namespace) -> int:
    try:
        if args.file and args.file != "-":
            with open(args.file, "rb") as fh:
                raw = fh.read()
        else:
            raw = sys.stdin.buffer.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file or 'standard input'}: {exc.strerror}") from None
    report = parse_bounce(raw)
    if report is None:
        return 0
    for r in report.recipients:
        print(
            json.dumps(
                {
                    "recipient": r.recipient,
                    "status": r.status,
                    "action": r.action,
                    "kind": reason_kind_of(r),
                    "reason": reason_of(r),
                    "category": r.category,
                    "reply_code": r.reply_code,
                    "diagnostic": r.diagnostic,
                    "remote_mta": r.remote_mta,
                    "reporting_mta": report.reporting_mta,
                    "complaint": report.is_complaint,
                    "original_message_id": report.original_message_id,
                },
                ensure_ascii=False,
            )
        )
    return 0
