"""``mtaserver contacts import|export|show|delete``: a user's contacts from the shell.

``import`` streams the file (CSV with a header row naming an ``email`` column, or JSON
lines) in chunks, as the API's ``POST /v1/contacts/import`` does, and exits 1 when some
lines were refused (each is named on stderr). ``export`` writes every contact of the
user, by address, a page at a time; its CSV and JSON lines import back unchanged. Safe
while the daemon runs (WAL, the same group-committed writes). With ``[storage] backend =
"postgresql"`` every action works on the cluster's database.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from mtaserver.auth import normalize_name
from mtaserver.cli._common import add_config_arg, config_from, with_owner
from mtaserver.contacts import FORMATS, ContactError, Format, ImportParser, normalize_address
from mtaserver.storage.postgres.contacts import PgContactStore
from mtaserver.storage.sqlite.contacts import Contact, ContactStore, ImportResult

READ_SIZE = 64 * 1024
SHOWN_ERRORS = 20  # line errors printed; the rest are counted


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("contacts", help="a user's contacts (import, export, show, delete)")
    cmds = p.add_subparsers(dest="contacts_command", metavar="ACTION")
    cmds.required = True

    imp = cmds.add_parser("import", help="create or update contacts from a CSV or JSON-lines file")
    imp.add_argument("file", metavar="FILE", help="the file, or - for stdin")
    imp.add_argument("--list", metavar="L", help="also put every contact on this list "
                     "(created if missing)")  # fmt: skip
    imp.add_argument("--format", choices=FORMATS,
                     help="default: jsonl for *.jsonl / *.ndjson, else csv")  # fmt: skip
    imp.set_defaults(func=_import)

    exp = cmds.add_parser("export", help="write every contact of a user to stdout")
    exp.add_argument("--format", choices=FORMATS, default="csv")
    exp.set_defaults(func=_export)

    show = cmds.add_parser("show", help="print one contact as JSON")
    show.add_argument("address", metavar="ADDRESS")
    show.set_defaults(func=_show)

    delete = cmds.add_parser("delete", help="delete one contact and its list memberships")
    delete.add_argument("address", metavar="ADDRESS")
    delete.set_defaults(func=_delete)

    for parser in (imp, exp, show, delete):
        parser.add_argument("--user", required=True, help="the mtaserver user owning them")
        add_config_arg(parser)


def _format_of(args: argparse.Namespace) -> Format:
    fmt = args.format or ("jsonl" if Path(args.file).suffix in (".jsonl", ".ndjson") else "csv")
    return "jsonl" if fmt == "jsonl" else "csv"


def _import(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    path = None if args.file == "-" else Path(args.file)
    if path is not None and not path.is_file():
        raise ContactError(f"{args.file}: no such file")
    parser = ImportParser(_format_of(args))

    async def chunks() -> AsyncIterator[bytes]:
        f = sys.stdin.buffer if path is None else path.open("rb")
        try:
            while data := f.read(READ_SIZE):
                yield data
        finally:
            if path is not None:
                f.close()

    async def run(store: ContactStore, owner: str) -> ImportResult:
        if args.list is not None and await store.get_list(owner, args.list) is None:
            await store.create_list(owner, args.list)
        return await store.import_stream(owner, chunks(), parser, source="cli", list_name=args.list)

    try:
        result = with_owner(cfg, ContactStore, PgContactStore, args.user, run)
    except OSError as exc:
        raise ContactError(f"{args.file}: {exc.strerror or exc}") from None
    for e in result.errors[:SHOWN_ERRORS]:
        print(f"line {e.line}: {e.message}", file=sys.stderr)
    if result.failed > SHOWN_ERRORS:
        print(f"... {result.failed - SHOWN_ERRORS} more lines refused", file=sys.stderr)
    print(f"{result.rows} rows: {result.created} created, {result.updated} updated, "
          f"{result.failed} refused")  # fmt: skip
    return 1 if result.failed else 0


def _cell(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _export(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    out: IO[str] = sys.stdout

    async def run(store: ContactStore, owner: str) -> int:
        n = 0
        if args.format == "jsonl":
            async for c in store.export(owner):
                out.write(json.dumps(_jsonl(c), ensure_ascii=False) + "\n")
                n += 1
            return n
        names = await store.attribute_names(owner)
        w = csv.writer(out, lineterminator="\n")
        fixed = ["email", "consent_status", "consent_source", "consent_at", "consent_ip"]
        w.writerow(fixed + names)
        async for c in store.export(owner):
            attrs = c.attrs()
            view = c.as_json()["consent"]
            assert isinstance(view, dict)
            w.writerow([c.address, c.consent_status, c.consent_source, view["at"] or "",
                        c.consent_ip or ""] + [_cell(attrs[k]) if k in attrs else ""
                                               for k in names])  # fmt: skip
            n += 1
        return n

    n = with_owner(cfg, ContactStore, PgContactStore, args.user, run)
    print(f"exported {n} contacts", file=sys.stderr)
    return 0


def _jsonl(c: Contact) -> dict[str, object]:
    view = c.as_json()
    consent = view["consent"]
    assert isinstance(consent, dict)
    return {"email": c.address, "attributes": view["attributes"], "consent": c.consent_status,
            "consent_ip": c.consent_ip, "consent_source": c.consent_source,
            "consent_at": consent["at"]}  # fmt: skip


def _show(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    addr = normalize_address(args.address, "ADDRESS")

    async def run(store: ContactStore, owner: str) -> Contact | None:
        return await store.get(owner, addr)

    c = with_owner(cfg, ContactStore, PgContactStore, args.user, run)
    if c is None:
        raise ContactError(f"no contact {addr} for user {normalize_name(args.user)}")
    print(json.dumps(c.as_json(), indent=2, ensure_ascii=False))
    return 0


def _delete(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    addr = normalize_address(args.address, "ADDRESS")

    async def run(store: ContactStore, owner: str) -> bool:
        return await store.delete(owner, addr)

    if not with_owner(cfg, ContactStore, PgContactStore, args.user, run):
        raise ContactError(f"no contact {addr} for user {normalize_name(args.user)}")
    print(f"deleted contact {addr}")
    return 0
