"""``mtaserver campaigns list|show|create|start|pause|resume|cancel``: a user's campaigns.

A campaign is created as a draft and sent once ``start``\\ ed: at ``--at`` (ISO 8601 with an
offset, or unix seconds), now, or on ``--cron`` in ``--tz``; or at each contact's own local
time (``--local-time 09:00 --date 2026-12-08``, or ``--cron … --local``; contacts without a
valid ``timezone`` attribute use ``--tz``). The running daemon's feeder
does the sending; these commands only change the stored status (safe while it runs: WAL,
the same group-committed writes). The rules of which action applies when live in
:mod:`mtaserver.campaigns`, shared with ``/v1/campaigns``.
"""

from __future__ import annotations

import argparse
import json
import sys

from mtaserver.campaigns import definition
from mtaserver.cli._common import add_config_arg, config_from, known_user, with_db
from mtaserver.clock import SystemClock
from mtaserver.contacts import ContactError
from mtaserver.segments import parse
from mtaserver.storage.sqlite.campaigns import Campaign, CampaignStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.segments import SegmentStore
from mtaserver.storage.sqlite.templates import TemplateStore


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


async def _campaign(db: Database, user: str, name: str) -> tuple[str, Campaign]:
    owner = await known_user(db, user)
    c = await CampaignStore(db).get(owner, name)
    if c is None:
        raise ContactError(f"no campaign {name!r} for user {owner} (see `campaigns list`)")
    return owner, c


def _list(args: argparse.Namespace) -> int:
    cfg = config_from(args)

    async def run(db: Database) -> int:
        found = await CampaignStore(db).list_all(await known_user(db, args.user))
        for c in found:
            print(f"{c.name}\t{c.status}\t{c.audience_kind}:{c.audience}\t{_when(c.next_run_at)}")
        return len(found)

    n = with_db(cfg, run)
    print(f"{n} campaigns", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    cfg = config_from(args)

    async def run(db: Database) -> dict[str, object]:
        _, c = await _campaign(db, args.user, args.name)
        view = _view(c)
        view["runs"] = [
            {"fire_at": r.fire_at, "status": r.status, "audience": r.audience,
             "queued": r.queued, "skipped": r.skipped}
            for r in await CampaignStore(db).runs(c.id)
        ]  # fmt: skip
        return view

    print(json.dumps(with_db(cfg, run), indent=2, ensure_ascii=False))
    return 0


def _create(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    d = definition(
        args.name, args.template, args.from_email, list_name=args.list_name,
        segment=args.segment, send_at=args.at, cron=args.cron, tz=args.tz,
        from_name=args.from_name, local_time=args.local_time, date=args.date,
        local=args.local,
    )  # fmt: skip

    async def run(db: Database) -> None:
        owner = await known_user(db, args.user)
        if await TemplateStore(db).get(d.template) is None:
            raise ContactError(f"--template: no template {d.template!r} (see `template list`)")
        segments = SegmentStore(db)
        if d.audience_kind == "list":
            await segments.check(owner, parse({"in_list": d.audience}))
        else:
            await segments.check(owner, await segments.resolve(owner, d.audience))
        await CampaignStore(db).create(
            owner, d.name, d.template, d.from_email, audience_kind=d.audience_kind,
            audience=d.audience, schedule=d.schedule, send_at=d.send_at, cron=d.cron,
            tz=d.tz, from_name=d.from_name, local_at=d.local_at,
        )  # fmt: skip

    with_db(cfg, run)
    print(f"created campaign {d.name} (draft; `mtaserver campaigns start {d.name}` sends it)")
    return 0


def _action(args: argparse.Namespace) -> int:
    cfg = config_from(args)

    async def run(db: Database) -> tuple[str, float | None]:
        _, c = await _campaign(db, args.user, args.name)
        done = await CampaignStore(db, SystemClock()).act(c, args.action)
        return done.status, done.next_run_at

    status, nxt = with_db(cfg, run)
    print(f"campaign {args.name}: {status} (next run {_when(nxt)})")
    return 0
