"""``mtaserver dns records|check``: what to publish in DNS, and whether it is published."""

from __future__ import annotations

import argparse
import asyncio

from mtaserver import dnsrecords as R
from mtaserver.cli._common import add_config_arg, config_from
from mtaserver.config import Config
from mtaserver.dkim.keys import load_keyset, normalize_domain
from mtaserver.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dns", help="DNS records to publish (DKIM, SPF, DMARC, MX) and checks")
    groups = p.add_subparsers(dest="dns_command", metavar="ACTION")
    groups.required = True
    rec = groups.add_parser("records", help="print the records to publish, in zone-file syntax")
    add_config_arg(rec)
    rec.add_argument("--domain", help="one sending domain (default: every [[dkim]] domain)")
    rec.set_defaults(func=run_records)
    chk = groups.add_parser(
        "check", help="resolve each record via [delivery] nameservers: ok/missing/different"
    )
    add_config_arg(chk)
    chk.add_argument("--domain", help="one sending domain (default: every [[dkim]] domain)")
    chk.set_defaults(func=run_check)


def inputs_from(cfg: Config) -> R.Inputs:
    return R.Inputs.from_config(cfg, load_keyset(cfg.dkim).keys)


def _domain(args: argparse.Namespace) -> str | None:
    if not args.domain:
        return None
    try:
        return normalize_domain(args.domain)
    except UnicodeError:
        raise ConfigError(f"--domain: not a domain name: {args.domain!r}") from None


def run_records(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    print(R.render_zone(R.all_records(inputs_from(cfg), _domain(args))), end="")
    return 0


def print_results(results: list[R.CheckResult]) -> int:
    """One line per record; exit status 1 unless every record is ok."""
    for result in results:
        print(result.line())
    bad = [r for r in results if r.status is not R.Status.OK]
    print(f"{len(results) - len(bad)} of {len(results)} records ok")
    return 1 if bad else 0


def run_check(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    records = [r for _t, recs in R.all_records(inputs_from(cfg), _domain(args)) for r in recs]
    lookup = R.DnsLookup(cfg.delivery.nameservers)
    return print_results(asyncio.run(R.check_all(records, lookup)))
