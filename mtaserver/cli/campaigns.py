"""``mtaserver campaigns list|show|create|start|pause|resume|cancel``: a user's campaigns.

A campaign is created as a draft and sent once ``start``\\ ed: at ``--at`` (ISO 8601 with an
offset, or unix seconds), now, or on ``--cron`` in ``--tz``; or at each contact's own local
time (``--local-time 09:00 --date 2026-12-08``, or ``--cron … --local``; contacts without a
valid ``timezone`` attribute use ``--tz``). The running daemon's feeder
does the sending; these commands only change the stored status (safe while it runs: WAL,
the same group-committed writes). The rules of which action applies when live in
:mod:`mtaserver.campaigns`, shared with ``/v1/campaigns``. With ``[storage] backend =
"postgresql"`` every action works on the cluster's campaigns (any node's feeder sends).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from mtaserver.auth import normalize_name
from mtaserver.campaigns import definition
from mtaserver.cli._common import ArgError, add_config_arg, config_from, with_store
from mtaserver.clock import SystemClock
from mtaserver.contacts import ContactError
from mtaserver.segments import parse
from mtaserver.storage.postgres.campaigns import PgCampaignStore
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.segments import PgSegmentStore
from mtaserver.storage.postgres.templates import PgTemplateStore
from mtaserver.storage.postgres.users import PgUserStore
from mtaserver.storage.sqlite.campaigns import Campaign, CampaignStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.segments import SegmentStore
from mtaserver.storage.sqlite.templates import TemplateStore
from mtaserver.storage.sqlite.users import UserStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "campaigns", help="a user's campaigns (list, show, create, start, pause, resume, cancel)"
    )
    cmds = p.add_subparsers(dest="campaigns_command", metavar="ACTION")
    cmds.required = True
    parsers = []

    ls = cmds.add_parser("list", help="the user's campaigns with status and next run")
    ls.set_defaults(func=_list)
    parsers.append(ls)

    show = cmds.add_parser("show", help="one campaign and its runs as JSON")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(func=_show)
    parsers.append(show)

    create = cmds.add_parser("create", help="a draft campaign (start sends it)")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--template", required=True, help="a stored template's name")
    create.add_argument("--from", dest="from_email", required=True, help="the From: address")
    create.add_argument("--from-name", help="the From: display name")
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--list", dest="list_name", help="send to the list's subscribed members")
    who.add_argument("--segment", help="send to a saved segment (or a filter's JSON)")
    create.add_argument("--at", help="send once at this time (ISO 8601 with offset)")
    create.add_argument("--cron", help="send on this schedule ('0 9 * * MON')")
    create.add_argument(
        "--tz", help="the cron schedule's IANA zone, or the local-time fallback zone (default UTC)"
    )
    create.add_argument(
        "--local-time",
        help="send at this wall time in each contact's zone "
        "(HH:MM with --date, or YYYY-MM-DDTHH:MM)",
    )
    create.add_argument("--date", help="the day of --local-time HH:MM (YYYY-MM-DD)")
    create.add_argument(
        "--local",
        action="store_true",
        help="evaluate --cron in each contact's zone (attribute 'timezone')",
    )
    create.set_defaults(func=_create)
    parsers.append(create)

    helps = {
        "start": "schedule a draft (first run at --at, now, or the next cron fire)",
        "pause": "stop feeding a scheduled or running campaign",
        "resume": "continue a paused campaign where it stopped",
        "cancel": "end a campaign for good (what was queued stays queued)",
    }
    for action, text in helps.items():
        a = cmds.add_parser(action, help=text)
        a.add_argument("name", metavar="NAME")
        a.set_defaults(func=_action, action=action)
        parsers.append(a)

    for parser in parsers:
        parser.add_argument("--user", required=True, help="the mtaserver user owning them")
        add_config_arg(parser)


T = TypeVar("T")


def _when(t: float | None) -> str:
    return "-" if t is None else str(round(t))


def _view(c: Campaign) -> dict[str, object]:
    return {
        "name": c.name, "status": c.status, "template": c.template,
        "from_email": c.from_email, "from_name": c.from_name,
        c.audience_kind: c.audience, "schedule": c.schedule, "send_at": c.send_at,
        "local_at": c.local_at, "cron": c.cron, "tz": c.tz, "next_run_at": c.next_run_at,
        "created_at": c.created_at, "updated_at": c.updated_at, "failure": c.failure,
    }  # fmt: skip


@dataclass(frozen=True)
class _Stores:
    """The owners a command uses, on the configured backend (PostgreSQL's have the SQLite
    owners' methods)."""

    campaigns: CampaignStore
    segments: SegmentStore
    templates: TemplateStore
    users: UserStore


def _sqlite(db: Database) -> _Stores:
    clock = SystemClock()
    return _Stores(CampaignStore(db, clock), SegmentStore(db, clock), TemplateStore(db, clock),
                   UserStore(db))  # fmt: skip


def _pg(db: PgDatabase) -> _Stores:
    clock = SystemClock()
    return _Stores(cast(Any, PgCampaignStore(db, clock)), cast(Any, PgSegmentStore(db, clock)),
                   cast(Any, PgTemplateStore(db, clock)), cast(Any, PgUserStore(db)))  # fmt: skip


def _with(args: argparse.Namespace, fn: Callable[[_Stores], Awaitable[T]]) -> T:
    return with_store(config_from(args), _sqlite, _pg, fn)


async def known_user(s: _Stores, name: str) -> str:
    """The ``--user`` acted for, normalized; refused when unknown."""
    user = normalize_name(name)
    if await s.users.lookup(user) is None:
        raise ArgError(f"--user: no user {user!r} (see `mtaserver user list`)")
    return user


async def _campaign(s: _Stores, user: str, name: str) -> tuple[str, Campaign]:
    owner = await known_user(s, user)
    c = await s.campaigns.get(owner, name)
    if c is None:
        raise ContactError(f"no campaign {name!r} for user {owner} (see `campaigns list`)")
    return owner, c


def _list(args: argparse.Namespace) -> int:
    async def run(s: _Stores) -> int:
        found = await s.campaigns.list_all(await known_user(s, args.user))
        for c in found:
            print(f"{c.name}\t{c.status}\t{c.audience_kind}:{c.audience}\t{_when(c.next_run_at)}")
        return len(found)

    n = _with(args, run)
    print(f"{n} campaigns", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    async def run(s: _Stores) -> dict[str, object]:
        _, c = await _campaign(s, args.user, args.name)
        view = _view(c)
        view["runs"] = [
            {"fire_at": r.fire_at, "status": r.status, "audience": r.audience,
             "queued": r.queued, "skipped": r.skipped}
            for r in await s.campaigns.runs(c.id)
        ]  # fmt: skip
        return view

    print(json.dumps(_with(args, run), indent=2, ensure_ascii=False))
    return 0


def _create(args: argparse.Namespace) -> int:
    d = definition(
        args.name, args.template, args.from_email, list_name=args.list_name,
        segment=args.segment, send_at=args.at, cron=args.cron, tz=args.tz,
        from_name=args.from_name, local_time=args.local_time, date=args.date,
        local=args.local,
    )  # fmt: skip

    async def run(s: _Stores) -> None:
        owner = await known_user(s, args.user)
        if await s.templates.get(d.template) is None:
            raise ContactError(f"--template: no template {d.template!r} (see `template list`)")
        segments = s.segments
        if d.audience_kind == "list":
            await segments.check(owner, parse({"in_list": d.audience}))
        else:
            await segments.check(owner, await segments.resolve(owner, d.audience))
        await s.campaigns.create(
            owner, d.name, d.template, d.from_email, audience_kind=d.audience_kind,
            audience=d.audience, schedule=d.schedule, send_at=d.send_at, cron=d.cron,
            tz=d.tz, from_name=d.from_name, local_at=d.local_at,
        )  # fmt: skip

    _with(args, run)
    print(f"created campaign {d.name} (draft; `mtaserver campaigns start {d.name}` sends it)")
    return 0


def _action(args: argparse.Namespace) -> int:
    async def run(s: _Stores) -> tuple[str, float | None]:
        _, c = await _campaign(s, args.user, args.name)
        done = await s.campaigns.act(c, args.action)
        return done.status, done.next_run_at

    status, nxt = _with(args, run)
    print(f"campaign {args.name}: {status} (next run {_when(nxt)})")
    return 0
