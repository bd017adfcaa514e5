"""``mtaserver stats``: delivery and engagement numbers for a cohort of messages."""

from __future__ import annotations

import argparse
import json

from mtaserver.cli._common import add_config_arg, config_from, with_db
from mtaserver.clock import SystemClock
from mtaserver.model import Stats
from mtaserver.storage.sqlite.reports import Reports
from mtaserver.tracking.stats import compute, parse_since


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "stats",
        help="accepted/delivered/bounced, opens, clicks, unsubscribes and rates",
        description="Numbers for the messages accepted since --since (default: all), "
        "counted per recipient; machine opens/clicks (image proxies, link scanners) apart.",
    )
    add_config_arg(p)
    p.add_argument(
        "--since",
        help="a duration back from now ('24h', '7d') or a date/time ('2026-11-01', "
        "'2026-11-01T12:00:00+00:00'); default: everything",
    )
    p.add_argument("--campaign", metavar="TAG", help="only messages with this X-Mtaserver-Campaign")
    p.add_argument("--user", metavar="U", help="only messages submitted by this user")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def render(stats: Stats) -> str:
    r = stats.rates()
    rows = [
        ("messages", str(stats.messages)),
        ("accepted", str(stats.accepted)),
        ("delivered", f"{stats.delivered}  ({_pct(r['delivery_rate'])})"),
        ("deferred", str(stats.deferred)),
        (
            "bounced",
            f"{stats.bounced}  (hard {stats.bounced_hard}, soft {stats.bounced_soft}; "
            f"{_pct(r['bounce_rate'])})",
        ),
        ("complaints", f"{stats.complaints}  ({_pct(r['complaint_rate'])})"),
        ("unsubscribes", f"{stats.unsubscribes}  ({_pct(r['unsubscribe_rate'])})"),
        (
            "opens",
            f"{stats.unique_human_opens} unique human ({_pct(r['open_rate'])}), "
            f"{stats.human_opens} total, {stats.machine_opens} machine",
        ),
        (
            "clicks",
            f"{stats.unique_human_clicks} unique human ({_pct(r['click_rate'])}), "
            f"{stats.human_clicks} total, {stats.machine_clicks} machine",
        ),
        ("click-to-open", _pct(r["click_to_open_rate"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    since = parse_since(args.since, SystemClock().now())
    stats = with_db(cfg, lambda db: compute(Reports(db), since, args.campaign, args.user))
    if args.json:
        out = stats.as_dict()
        out["filter"] = {"since": since, "campaign": args.campaign, "user": args.user}
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(render(stats))
    return 0
