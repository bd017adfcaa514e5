"""``mtaserver template put|list|show|activate|delete``: stored templates for ``template_id``.

``put`` prints the template's id alone on stdout (``ID=$(mtaserver template put welcome
--html w.html)`` works). Each put adds a version and makes it active; ``activate`` goes
back to an older one. Safe while the daemon runs: the API reads the table per request.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from mtaserver.cli._common import add_config_arg, config_from, with_store
from mtaserver.storage.postgres.templates import PgTemplateStore
from mtaserver.storage.sqlite.templates import (
    TemplateInfo,
    TemplateStore,
    TemplateStoreError,
    TemplateVersion,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("template", help="stored templates for the send API's template_id")
    cmds = p.add_subparsers(dest="template_command", metavar="ACTION")
    cmds.required = True

    put = cmds.add_parser("put", help="add a version (creating the template) and print its id")
    put.add_argument("name", metavar="NAME", help="the template's name (or its d-... id)")
    put.add_argument("--html", metavar="FILE", help="HTML part (Handlebars)")
    put.add_argument("--text", metavar="FILE", help="plain-text part (Handlebars)")
    put.add_argument("--subject", metavar="S", help="subject (Handlebars)")
    put.set_defaults(func=_put)

    lst = cmds.add_parser("list", help="list templates")
    lst.set_defaults(func=_list)

    show = cmds.add_parser("show", help="print a version (the active one by default)")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--version", type=int, metavar="N")
    show.set_defaults(func=_show)

    act = cmds.add_parser("activate", help="make an older (or newer) version active")
    act.add_argument("name", metavar="NAME")
    act.add_argument("version", type=int, metavar="VERSION")
    act.set_defaults(func=_activate)

    delete = cmds.add_parser("delete", help="delete a template and all its versions")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(func=_delete)

    for parser in (put, lst, show, act, delete):
        add_config_arg(parser)


def _read(option: str, path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateStoreError(f"{option} {path}: cannot read: {exc}") from None


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _put(args: argparse.Namespace) -> int:
    html, text = _read("--html", args.html), _read("--text", args.text)
    cfg = config_from(args)
    info = with_store(
        cfg, TemplateStore, PgTemplateStore, lambda st: st.put(args.name, args.subject, html, text)
    )
    print(info.template_id)
    print(f"template {info.name}: version {info.active_version} is active", file=sys.stderr)
    return 0


def _line(t: TemplateInfo) -> str:
    return (
        f"{t.template_id}\t{t.name}\tactive v{t.active_version}\t{len(t.versions)} versions\t"
        f"updated {_when(t.updated_at)}"
    )


def _list(args: argparse.Namespace) -> int:
    found = with_store(config_from(args), TemplateStore, PgTemplateStore, lambda st: st.list())
    for t in found:
        print(_line(t))
    if not found:
        print("no templates", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    async def run(store: TemplateStore) -> tuple[TemplateInfo | None, TemplateVersion | None]:
        return await store.info(args.name), await store.version(args.name, args.version)

    info, v = with_store(config_from(args), TemplateStore, PgTemplateStore, run)
    if info is None:
        raise TemplateStoreError(f"no template {args.name!r} (see `mtaserver template list`)")
    if v is None:
        raise TemplateStoreError(
            f"template {info.name}: no version {args.version} (has {list(info.versions)})"
        )
    print(_line(info))
    active = " (active)" if v.version == info.active_version else ""
    print(f"version {v.version}{active}, created {_when(v.created_at)}")
    for part in ("subject", "html", "text"):
        value = getattr(v, part)
        print(f"--- {part}" + (" (none)" if value is None else ""))
        if value is not None:
            print(value.rstrip("\n"))
    return 0


def _activate(args: argparse.Namespace) -> int:
    info = with_store(
        config_from(args), TemplateStore, PgTemplateStore,
        lambda st: st.activate(args.name, args.version),
    )  # fmt: skip
    print(f"template {info.name}: version {info.active_version} is active")
    return 0


def _delete(args: argparse.Namespace) -> int:
    info = with_store(
        config_from(args), TemplateStore, PgTemplateStore, lambda st: st.delete(args.name)
    )
    print(f"deleted template {info.name} ({info.template_id}, {len(info.versions)} versions)")
    return 0
