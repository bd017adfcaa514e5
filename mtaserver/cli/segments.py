"""``mtaserver segments list|show|count|save|delete``: a user's saved segments from the shell.

A filter is given as JSON text (``--filter '{"attr": "plan", "eq": "pro"}'``) or read from a
file (``--filter @file.json``, ``--filter @-`` for stdin); errors name the JSON path of the
bad node, as the API's do. ``count`` takes a saved segment's name or a ``--filter``.
``show`` prints the segment and how many contacts it matches now. Safe while the daemon
runs (WAL, the same group-committed writes). With ``[storage] backend = "postgresql"``
every action works on the cluster's database.
"""

from __future__ import annotations

import argparse
import json
import sys

from mtaserver.auth import normalize_name
from mtaserver.cli._common import add_config_arg, config_from, text_arg, with_owner
from mtaserver.segments import MAX_JSON, SegmentError, parse_text
from mtaserver.storage.postgres.segments import PgSegmentStore
from mtaserver.storage.sqlite.segments import SegmentStore, check_segment_name


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("segments", help="a user's saved segments (list, show, count, save, delete)")
    cmds = p.add_subparsers(dest="segments_command", metavar="ACTION")
    cmds.required = True

    ls = cmds.add_parser("list", help="the user's segments and their filters")
    ls.set_defaults(func=_list)

    show = cmds.add_parser("show", help="one segment as JSON, with its current count")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(func=_show)

    count = cmds.add_parser("count", help="how many contacts a segment or a filter matches")
    count.add_argument("name", metavar="NAME", nargs="?", help="a saved segment")
    count.add_argument("--filter", metavar="JSON", help="a filter instead (JSON, or @FILE)")
    count.set_defaults(func=_count)

    save = cmds.add_parser("save", help="create or replace a segment")
    save.add_argument("name", metavar="NAME")
    save.add_argument("--filter", metavar="JSON", required=True, help="JSON, or @FILE, or @-")
    save.set_defaults(func=_save)

    delete = cmds.add_parser("delete", help="delete a segment (the contacts stay)")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(func=_delete)

    for parser in (ls, show, count, save, delete):
        parser.add_argument("--user", required=True, help="the mtaserver user owning them")
        add_config_arg(parser)


def _document(raw: str) -> object:
    """The filter document, checked (SegmentError naming the bad node's path)."""
    text = text_arg(raw, "--filter", MAX_JSON)
    parse_text(text)
    return json.loads(text)


def _list(args: argparse.Namespace) -> int:
    cfg = config_from(args)

    async def run(store: SegmentStore, owner: str) -> int:
        found = await store.list_all(owner)
        for s in found:
            print(f"{s.name}\t{s.as_json()['updated_at']}\t{s.filter}")
        return len(found)

    n = with_owner(cfg, SegmentStore, PgSegmentStore, args.user, run)
    print(f"{n} segments", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    name = check_segment_name(args.name, "NAME")

    async def run(store: SegmentStore, owner: str) -> dict[str, object]:
        seg = await store.get(owner, name)
        if seg is None:
            raise SegmentError(f"no segment {name!r} for user {owner}")
        view = seg.as_json()
        view["count"] = await store.count(owner, seg.parsed())
        return view

    view = with_owner(cfg, SegmentStore, PgSegmentStore, args.user, run)
    print(json.dumps(view, indent=2, ensure_ascii=False))
    return 0


def _count(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    if (args.name is None) == (args.filter is None):
        raise SegmentError("give a segment NAME or --filter JSON")
    text = None if args.filter is None else text_arg(args.filter, "--filter", MAX_JSON)
    name = None if args.name is None else check_segment_name(args.name, "NAME")

    async def run(store: SegmentStore, owner: str) -> int:
        flt = parse_text(text) if text is not None else await store.resolve(owner, str(name))
        await store.check(owner, flt)
        return await store.count(owner, flt)

    print(with_owner(cfg, SegmentStore, PgSegmentStore, args.user, run))
    return 0


def _save(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    name = check_segment_name(args.name, "NAME")
    doc = _document(args.filter)

    async def run(store: SegmentStore, owner: str) -> bool:
        _, created = await store.save(owner, name, doc)
        return created

    created = with_owner(cfg, SegmentStore, PgSegmentStore, args.user, run)
    print(f"{'created' if created else 'replaced'} segment {name}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    name = check_segment_name(args.name, "NAME")

    async def run(store: SegmentStore, owner: str) -> bool:
        return await store.delete(owner, name)

    if not with_owner(cfg, SegmentStore, PgSegmentStore, args.user, run):
        raise SegmentError(f"no segment {name!r} for user {normalize_name(args.user)}")
    print(f"deleted segment {name}")
    return 0
