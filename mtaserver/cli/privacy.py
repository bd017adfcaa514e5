"""``mtaserver privacy export|erase ADDRESS``: data subject requests (GDPR art. 15 and 17).

On either backend: with ``backend = "postgresql"`` they run on the cluster's database (the
address in every node's mail), safe while the nodes run."""

from __future__ import annotations

import argparse
import json
import sys

from mtaserver import privacy
from mtaserver.cli._common import add_config_arg, config_from, with_store
from mtaserver.crypto import codec_for
from mtaserver.storage.postgres.privacy import PgPrivacy
from mtaserver.storage.sqlite.privacy import SqlitePrivacy


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("privacy", help="export or erase everything held about an address")
    group = p.add_subparsers(dest="privacy_command", metavar="SUBCOMMAND")
    group.required = True
    e = group.add_parser("export", help="print everything held about ADDRESS as JSON")
    e.add_argument("address")
    e.add_argument("--no-bodies", action="store_true", help="leave queued message content out")
    add_config_arg(e)
    e.set_defaults(func=run_export)
    r = group.add_parser(
        "erase",
        help="remove or anonymize ADDRESS everywhere; its suppressions are kept as hashes",
    )
    r.add_argument("address")
    r.add_argument(
        "--suppress",
        action="store_true",
        help="also suppress the address (hashed) if it is not suppressed already",
    )
    add_config_arg(r)
    r.set_defaults(func=run_erase)


def run_export(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    codec = codec_for(cfg.storage.encryption_key_file)
    data = with_store(
        cfg,
        SqlitePrivacy,
        PgPrivacy,
        lambda store: privacy.export(store, args.address, codec=codec, bodies=not args.no_bodies),
    )
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def run_erase(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    codec = codec_for(cfg.storage.encryption_key_file)
    result = with_store(
        cfg,
        SqlitePrivacy,
        PgPrivacy,
        lambda store: privacy.erase(store, args.address, codec=codec, suppress=args.suppress),
    )
    json.dump(result.as_dict(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    if result.user_account:
        print(
            "note: a submission user of that name exists; `mtaserver user remove` deletes it",
            file=sys.stderr,
        )
    return 0
