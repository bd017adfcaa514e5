"""``mtaserver dkim keygen|show|check``: create keys, list them with their TXT records, and
check that DNS publishes them."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from mtaserver import dnsrecords as R
from mtaserver.cli._common import add_config_arg, config_from
from mtaserver.cli.dns import print_results
from mtaserver.dkim import keys as K
from mtaserver.dkim.records import quote_txt, zone_line
from mtaserver.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dkim", help="DKIM keys: generate, list, check DNS")
    groups = p.add_subparsers(dest="dkim_command", metavar="ACTION")
    groups.required = True

    gen = groups.add_parser(
        "keygen", help="write a new private key (mode 0600) and print its DNS TXT record"
    )
    gen.add_argument("--domain", required=True)
    gen.add_argument("--selector", required=True)
    gen.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    gen.add_argument("--bits", type=int, default=K.MIN_RSA_BITS, help="RSA key size (>= 2048)")
    gen.add_argument("--out", help="key file to create (default: ./SELECTOR.DOMAIN.pem)")
    gen.set_defaults(func=run_keygen)

    show = groups.add_parser("show", help="list configured keys and their TXT records")
    add_config_arg(show)
    show.set_defaults(func=run_show)

    chk = groups.add_parser(
        "check", help="look up the TXT record of each selector of a domain and compare"
    )
    add_config_arg(chk)
    chk.add_argument("--domain", required=True)
    chk.set_defaults(func=run_check)


def run_keygen(args: argparse.Namespace) -> int:
    try:
        domain = K.normalize_domain(args.domain)
    except UnicodeError:
        raise ConfigError(f"--domain: not a domain name: {args.domain!r}") from None
    algorithm = K.Algorithm(args.algorithm)
    if algorithm is K.Algorithm.RSA and args.bits < K.MIN_RSA_BITS:
        raise ConfigError(f"--bits: RSA keys need at least {K.MIN_RSA_BITS} bits, got {args.bits}")
    out = Path(args.out or f"{args.selector}.{domain}.pem")
    key = K.generate_key(algorithm, args.bits)
    try:
        K.write_private_key(out, key)
    except FileExistsError:
        raise ConfigError(f"--out: {out} already exists; not overwriting a key") from None
    except OSError as exc:
        raise ConfigError(f"--out: cannot write {out}: {exc.strerror}") from None
    text = K.txt_record_text(algorithm, K.public_b64(key))
    print(zone_line(f"{args.selector}._domainkey.{domain}", "TXT", quote_txt(text)))
    alg = "ed25519-sha256" if algorithm is K.Algorithm.ED25519 else "rsa-sha256"
    print(
        f"wrote {out} (mode 0600). Publish the TXT record above, then add to the config:\n\n"
        f'[[dkim]]\ndomain = "{domain}"\nselector = "{args.selector}"\n'
        f'key = "{out.resolve()}"\nalgorithm = "{alg}"\n'
        "active = true    # rotating? false until DNS has the record, then swap + SIGHUP",
        file=sys.stderr,
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    keyset = K.load_keyset(cfg.dkim)
    if not keyset.keys:
        print("no [[dkim]] keys configured: mail leaves unsigned")
        return 0
    for key in keyset.keys:
        state = "active" if key.active else "inactive"
        print(
            f"; {key.domain} selector={key.selector} {key.algorithm.value}-{key.bits} "
            f"{state} key={key.path}"
        )
        print(zone_line(key.record_name, "TXT", quote_txt(key.record_text)))
    return 0


def run_check(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    domain = K.normalize_domain(args.domain)
    keys = tuple(k for k in K.load_keyset(cfg.dkim).keys if k.domain == domain)
    if not keys:
        raise ConfigError(f"--domain: no [[dkim]] key is configured for {domain}")
    inputs = R.Inputs(hostname=cfg.server.hostname, keys=keys)
    records = [r for r in R.domain_records(domain, inputs) if r.kind is R.Kind.DKIM]
    lookup = R.DnsLookup(cfg.delivery.nameservers)
    return print_results(asyncio.run(R.check_all(records, lookup)))
