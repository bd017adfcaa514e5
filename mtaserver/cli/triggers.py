"""``mtaserver triggers list|show|put|delete`` and ``mtaserver events send``: triggers and
events from the shell, for an operator setting up or trying a sequence without an API key.

A trigger is given as JSON text, ``@FILE`` or ``@-`` (stdin) and checked by the same
:func:`~mtaserver.journeys.trigger_from_json` as ``PUT /v1/triggers/{name}``, so errors
name the field (``steps[0].wait: ...``); a step naming a template that is not stored is
refused, as by the API. ``events send`` stores one event through
:meth:`JourneyStore.record_events` like ``POST /v1/events``: the sequences it starts and
the pending steps it cancels are committed with it. Safe while the daemon runs (WAL).
With ``backend = "postgresql"`` they act on the cluster's database.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Final

from mtaserver.auth import normalize_name
from mtaserver.cli._common import add_config_arg, config_from, text_arg, with_owner
from mtaserver.clock import SystemClock
from mtaserver.journeys import TriggerError, check_name, events_input, trigger_from_json
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.journeys import PgJourneyStore
from mtaserver.storage.postgres.templates import PgTemplateStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.journeys import JourneyStore
from mtaserver.storage.sqlite.templates import TemplateStore

MAX_JSON: Final = 256 << 10  # as the API's trigger body


@dataclass(frozen=True)
class _Stores:
    """The journeys and templates of the configured backend (same methods on both)."""

    journeys: JourneyStore
    templates: TemplateStore


def _lite(db: Database) -> _Stores:
    return _Stores(JourneyStore(db), TemplateStore(db))


def _pg(db: PgDatabase) -> Any:
    return _Stores(PgJourneyStore(db), PgTemplateStore(db))  # type: ignore[arg-type]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("triggers", help="a user's event triggers (list, show, put, delete)")
    cmds = p.add_subparsers(dest="triggers_command", metavar="ACTION")
    cmds.required = True

    ls = cmds.add_parser("list", help="the user's triggers, one a line")
    ls.set_defaults(func=_list)

    show = cmds.add_parser("show", help="one trigger as JSON, with its step counts")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(func=_show)

    put = cmds.add_parser("put", help="create or replace a trigger")
    put.add_argument("name", metavar="NAME", help="wins over a name in the JSON")
    put.add_argument("definition", metavar="JSON", help="the trigger as JSON, or @FILE, or @-")
    put.set_defaults(func=_put)

    delete = cmds.add_parser("delete", help="delete a trigger (its pending steps never fire)")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(func=_delete)

    ev = sub.add_parser("events", help="contact events (send)")
    ev_cmds = ev.add_subparsers(dest="events_command", metavar="ACTION")
    ev_cmds.required = True
    send = ev_cmds.add_parser("send", help="record one event; matching triggers start")
    send.add_argument("--contact", required=True, metavar="ADDR", help="one of the user's")
    send.add_argument("--event", required=True, metavar="NAME")
    send.add_argument("--properties", metavar="JSON", help="a JSON object, or @FILE, or @-")
    send.set_defaults(func=_send)

    for parser in (ls, show, put, delete, send):
        parser.add_argument("--user", required=True, help="the mtaserver user owning them")
        add_config_arg(parser)


def _json_arg(raw: str, option: str) -> object:
    """The JSON document in ``raw`` (text, ``@FILE`` or ``@-``); errors name ``option``."""
    text = text_arg(raw, option, MAX_JSON)
    if len(text) > MAX_JSON:
        raise TriggerError(f"{option}: larger than {MAX_JSON} bytes", option)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise TriggerError(f"{option}: not JSON: {exc}", option) from None


def _list(args: argparse.Namespace) -> int:
    cfg = config_from(args)

    async def run(st: _Stores, owner: str) -> int:
        found = await st.journeys.triggers(owner)
        for info in found:
            t = info.trigger
            state = "enabled" if t.enabled else "disabled"
            updated = info.as_json()["updated_at"]
            print(f"{t.name}\t{t.event}\t{state}\t{len(t.steps)} steps\t{updated}")
        return len(found)

    n = with_owner(cfg, _lite, _pg, args.user, run)
    print(f"{n} triggers", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    name = check_name(args.name, "NAME")

    async def run(st: _Stores, owner: str) -> dict[str, object]:
        store = st.journeys
        info = await store.get_trigger(owner, name)
        if info is None:
            raise TriggerError(f"no trigger {name!r} for user {owner}", "NAME")
        counts = await store.step_counts(owner, name)
        return info.as_json() | {"step_counts": {str(i): c for i, c in sorted(counts.items())}}

    print(json.dumps(with_owner(cfg, _lite, _pg, args.user, run), indent=2, ensure_ascii=False))
    return 0


def _put(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    t = trigger_from_json(_json_arg(args.definition, "JSON"), check_name(args.name, "NAME"))

    async def run(st: _Stores, owner: str) -> bool:
        for i, s in enumerate(t.steps):
            if await st.templates.get(s.template) is None:
                raise TriggerError(
                    f"steps[{i}].template: no stored template {s.template!r} (create it with "
                    "`mtaserver template put` first)",
                    f"steps[{i}].template",
                )
        _, created = await st.journeys.put_trigger(owner, t)
        return created

    created = with_owner(cfg, _lite, _pg, args.user, run)
    print(f"{'created' if created else 'replaced'} trigger {t.name}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    name = check_name(args.name, "NAME")

    async def run(st: _Stores, owner: str) -> bool:
        return await st.journeys.delete_trigger(owner, name)

    if not with_owner(cfg, _lite, _pg, args.user, run):
        raise TriggerError(f"no trigger {name!r} for user {normalize_name(args.user)}", "NAME")
    print(f"deleted trigger {name}")
    return 0


def _send(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    props = None if args.properties is None else _json_arg(args.properties, "--properties")
    body = {"contact": args.contact, "event": args.event, "properties": props}

    async def run(st: _Stores, owner: str) -> dict[str, object]:
        store = st.journeys
        try:
            events = events_input(body, SystemClock().now())
        except TriggerError as exc:  # "contact: ..." is the --contact option here
            raise TriggerError(f"--{exc}", exc.field) from None
        got = await store.record_events(owner, events)
        if got.unknown:
            raise TriggerError(
                f"--contact: {got.unknown[0]} is not a contact of {owner}; nothing was stored "
                "(add it with `mtaserver contacts import` or PUT /v1/contacts)",
                "contact",
            )
        return got.as_json()

    print(json.dumps(with_owner(cfg, _lite, _pg, args.user, run), ensure_ascii=False))
    return 0
