"""``mtaserver stats``: delivery and engagement numbers for a cohort of messages.

With ``--campaign NAME --user U`` naming a stored campaign, or ``--trigger NAME --user U``,
the numbers are the campaign's run by run or the trigger's step by step
(:mod:`mtaserver.storage.sqlite.outreach_stats`), the same as the admin API's
``/api/v1/campaigns/{name}/stats`` and ``/api/v1/triggers/{name}/stats``. A ``--campaign``
that is no stored campaign of the user is the ``X-Mtaserver-Campaign`` tag, as before.
"""

from __future__ import annotations

import argparse
import json

from mtaserver.cli._common import add_config_arg, config_from, with_store
from mtaserver.clock import SystemClock
from mtaserver.errors import MtaError
from mtaserver.model import Stats
from mtaserver.storage.postgres.outreach_stats import PgOutreachStats
from mtaserver.storage.postgres.reports import PgReports
from mtaserver.storage.sqlite.outreach_stats import (
    CampaignReport,
    OutreachStats,
    SendStats,
    TriggerReport,
)
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
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--campaign",
        metavar="NAME",
        help="with --user: that user's stored campaign, run by run (else: only messages "
        "with this X-Mtaserver-Campaign tag)",
    )
    which.add_argument(
        "--trigger", metavar="NAME", help="the --user's trigger, step by step (needs --user)"
    )
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


def render_sends(s: SendStats, indent: str = "") -> str:
    """The numbers of one run, step, or total, one per line."""
    r = s.rates()
    j = s.as_json()
    b = j["bounced"]
    classes = ", ".join(f"{k} {n}" for k, n in s.bounce_categories)
    rows = [
        ("queued", f"{s.queued}  (suppressed {s.suppressed})"),
        ("sent", str(s.sent)),
        ("delivered", f"{s.delivered}  ({_pct(r['delivery_rate'])})"),
        ("bounced", f"{s.bounced}  (hard {b['hard']}, soft {b['soft']}; "
                    f"{_pct(r['bounce_rate'])})" + (f"  [{classes}]" if classes else "")),
        ("opened", f"{s.opens.unique_human} unique human ({_pct(r['open_rate'])}), "
                   f"{s.opens.human} total, {s.opens.unique_machine} machine"),
        ("clicked", f"{s.clicks.unique_human} unique human ({_pct(r['click_rate'])}), "
                    f"{s.clicks.human} total, {s.clicks.unique_machine} machine"),
        ("unsubscribed", f"{s.unsubscribed}  ({_pct(r['unsubscribe_rate'])})"),
        ("complained", f"{s.complained}  ({_pct(r['complaint_rate'])})"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{indent}{k:<{width}}  {v}" for k, v in rows)


def _skipped(skipped: dict[str, int]) -> str:
    return ", ".join(f"{k or '-'} {n}" for k, n in sorted(skipped.items())) or "0"


def render_report(rep: CampaignReport | TriggerReport) -> str:
    if isinstance(rep, CampaignReport):
        lines = [f"campaign {rep.name} (user {rep.owner}, {rep.status}): {len(rep.runs)} run(s)"]
        for run in rep.runs:
            lines.append(f"run {run.run} at {run.fire_at:.0f} ({run.status}): audience "
                         f"{run.audience}, pending {run.pending}, cancelled {run.cancelled}, "
                         f"skipped {_skipped(dict(run.skipped))}")  # fmt: skip
            lines.append(render_sends(run.stats, "  "))
    else:
        state = "enabled" if rep.enabled else "disabled"
        lines = [f"trigger {rep.name} on {rep.event} (user {rep.owner}, {state})"]
        for st in rep.steps:
            skipped = _skipped(dict(st.skipped))
            lines.append(f"step {st.step} ({st.template or 'removed'}): pending {st.pending}, "
                         f"cancelled {st.cancelled}, skipped {skipped}")  # fmt: skip
            lines.append(render_sends(st.stats, "  "))
    lines += ["total", render_sends(rep.total, "  ")]
    return "\n".join(lines)


async def _report(
    store: OutreachStats, args: argparse.Namespace, since: float
) -> CampaignReport | TriggerReport | None:
    if args.trigger:
        return await store.trigger(args.user, args.trigger, since)
    return await store.campaign(args.user, args.campaign, since)


def run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    since = parse_since(args.since, SystemClock().now())
    if args.trigger and not args.user:
        raise MtaError("stats --trigger: name the trigger's owner with --user")
    if args.user and (args.trigger or args.campaign):
        # the SQLite file's, or with backend = "postgresql" the cluster's (same reports)
        rep = with_store(cfg, OutreachStats, PgOutreachStats, lambda s: _report(s, args, since))
        if rep is None and args.trigger:
            raise MtaError(f"stats --trigger: user {args.user!r} has no trigger {args.trigger!r}")
        if rep is not None:
            if args.json:
                out = rep.as_json() | {"filter": {"since": since, "user": args.user}}
                print(json.dumps(out, indent=2, sort_keys=True))
            else:
                print(render_report(rep))
            return 0
    stats = with_store(
        cfg, Reports, PgReports, lambda r: compute(r, since, args.campaign, args.user)
    )
    if args.json:
        out = stats.as_dict()
        out["filter"] = {"since": since, "campaign": args.campaign, "user": args.user}
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(render(stats))
    return 0
