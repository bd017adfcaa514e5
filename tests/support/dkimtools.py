"""DKIM test helpers: generated keys, and three verifiers that only ever ask our DnsServer.

- ``dkimpy_verify``: ``dkim.DKIM.verify`` with a dnsfunc serving the generated TXT records.
- ``perl_verify``: Perl's Mail::DKIM (no code shared with dkimpy), Net::DNS pointed at the
  test DnsServer on 127.0.0.1. Debian 12's Mail::DKIM 1.20230212 knows only rsa-sha1/sha256:
  it reports Ed25519 signatures as ``invalid (unsupported algorithm ed25519-sha256)``.
- ``opendkim_verify``: OpenDKIM's ``opendkim -t`` (libopendkim, libunbound) with an unbound
  configuration that forwards every query to the test DnsServer; verifies RSA and Ed25519.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dkim

from mtaserver.dkim import keys as K
from mtaserver.dkim.records import quote_txt
from tests.support.dnsserver import DnsServer

OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"
PERL_SCRIPT = Path(__file__).with_name("dkimverify.pl")


def make_key(
    tmp: Path,
    domain: str,
    selector: str,
    algorithm: K.Algorithm,
    *,
    active: bool = True,
    bits: int = 2048,
) -> K.DkimKey:
    path = tmp / f"{selector}.{domain}.{algorithm.value}.pem"
    K.write_private_key(path, K.generate_key(algorithm, bits))
    return K.load_key(path, domain=domain, selector=selector, algorithm=algorithm, active=active)


def dkim_entries(keys: list[K.DkimKey], active: set[str]) -> list[dict[str, object]]:
    """[[dkim]] config entries for keys; those whose selector is in ``active`` sign."""
    return [
        {
            "domain": k.domain,
            "selector": k.selector,
            "key": k.path,
            "algorithm": k.algorithm.value,
            "active": k.selector in active,
        }
        for k in keys
    ]


def publish(dns: DnsServer, keys: list[K.DkimKey] | tuple[K.DkimKey, ...]) -> None:
    for key in keys:
        dns.set(key.record_name, "TXT", [quote_txt(key.record_text)])


def dnsfunc_for(keys: list[K.DkimKey] | tuple[K.DkimKey, ...]):  # type: ignore[no-untyped-def]
    records = {(k.record_name + ".").encode(): k.record_text.encode() for k in keys}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return dnsfunc


def dkimpy_verify(message: bytes, keys: list[K.DkimKey] | tuple[K.DkimKey, ...]) -> list[bool]:
    """One result per DKIM-Signature header, top to bottom."""
    d = dkim.DKIM(message)
    count = sum(1 for k, _ in d.headers if k.lower() == b"dkim-signature")
    results = []
    for i in range(count):
        try:
            results.append(bool(d.verify(idx=i, dnsfunc=dnsfunc_for(keys))))
        except dkim.DKIMException:
            results.append(False)
    return results


@dataclass(frozen=True)
class Result:
    result: str  # "pass", "fail", "invalid", ...
    algorithm: str
    domain: str
    selector: str
    detail: str = ""


def perl_verify(message: bytes, dns: DnsServer, tmp: Path) -> list[Result]:
    path = tmp / "perl-msg.eml"
    path.write_bytes(message)
    proc = subprocess.run(
        ["perl", str(PERL_SCRIPT), str(dns.port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    results = []
    for line in proc.stdout.splitlines():
        parts = line.split(" ")
        if parts[0] == "OVERALL":
            continue
        results.append(Result(parts[0], parts[1], parts[2], parts[3], " ".join(parts[4:])))
    return results


def opendkim_verify(message: bytes, dns: DnsServer, tmp: Path) -> list[Result]:
    """Results parsed from the Authentication-Results header ``opendkim -t`` would add."""
    path = tmp / "opendkim-msg.eml"
    path.write_bytes(message)
    unbound = tmp / "unbound.conf"
    unbound.write_text(
        "server:\n"
        "  do-not-query-localhost: no\n"
        '  module-config: "iterator"\n'
        "forward-zone:\n"
        '  name: "."\n'
        f"  forward-addr: 127.0.0.1@{dns.port}\n"
    )
    conf = tmp / "opendkim.conf"
    conf.write_text(f"Mode v\nResolverConfiguration {unbound}\nSyslog no\n")
    proc = subprocess.run(
        [OPENDKIM, "-x", str(conf), "-vvv", "-t", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    results = []
    pattern = r"^\s*dkim=(\w+) .*?header\.d=(\S+) .*?header\.a=(\S+) header\.s=(\S+)"
    for m in re.finditer(pattern, out, re.M):
        results.append(Result(m.group(1), m.group(3), m.group(2), m.group(4)))
    assert results, out
    return results
