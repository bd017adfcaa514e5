"""The DNS records an operator must publish for mtaserver, and a checker for them.

For each sending domain: the DKIM TXT record of every configured selector (active or kept
for rotation), an SPF suggestion authorizing this host, and a DMARC starting policy
(``p=none`` with aggregate reports, to be tightened once reports look clean). Shared by all
domains: the address of this host, the MX and SPF of the bounce domain (VERP return paths
land there, and SPF is checked against it), and the tracking host.

``check`` resolves each record through the configured resolver (``[delivery] nameservers``)
and reports ``ok``, ``missing``, ``different`` (with what was found) or ``error`` (the
lookup itself failed: timeout, SERVFAIL). Postal's DNS checks are the model.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from mtaserver.config import Config
from mtaserver.dkim.keys import DkimKey
from mtaserver.dkim.records import parse_tags, quote_txt, zone_line

LOOKUP_TIMEOUT = 5.0


class Status(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    DIFFERENT = "different"
    ERROR = "error"


class Kind(enum.StrEnum):
    DKIM = "dkim"
    SPF = "spf"
    DMARC = "dmarc"
    MX = "mx"
    ADDRESS = "address"  # the name must resolve (value is a placeholder)
    SAME_HOST = "same-host"  # CNAME to our hostname, or the same addresses


@dataclass(frozen=True, slots=True)
class Record:
    """One record to publish: zone-file fields plus what the checker compares."""

    name: str  # owner, no trailing dot
    rtype: str  # TXT, MX, A, CNAME
    value: str  # zone-file rdata as printed
    kind: Kind
    purpose: str  # one line for the operator
    expect: str = ""  # DKIM: p= value; SPF: the mechanism; MX / SAME_HOST: our hostname

    def zone(self) -> str:
        return zone_line(self.name, self.rtype, self.value)


@dataclass(frozen=True, slots=True)
class Inputs:
    """What the records depend on (taken from the config by the CLI)."""

    hostname: str
    keys: tuple[DkimKey, ...]
    bounce_domain: str | None = None
    tracking_base_url: str | None = None
    unsubscribe_mailto: str | None = None

    @classmethod
    def from_config(cls, cfg: Config, keys: tuple[DkimKey, ...]) -> Inputs:
        return cls(
            hostname=cfg.server.hostname.lower().rstrip("."),
            keys=keys,
            bounce_domain=cfg.inbound.bounce_domain,
            tracking_base_url=cfg.tracking.base_url,
            unsubscribe_mailto=cfg.tracking.unsubscribe_mailto,
        )


def _spf_mechanism(hostname: str) -> str:
    return f"a:{hostname}"


def domain_records(domain: str, inputs: Inputs) -> list[Record]:
    """DKIM, SPF and DMARC records for one sending domain."""
    out: list[Record] = []
    for key in inputs.keys:
        if key.domain != domain:
            continue
        state = "active" if key.active else "not signing, keep published until rotated out"
        out.append(
            Record(
                key.record_name,
                "TXT",
                quote_txt(key.record_text),
                Kind.DKIM,
                f"DKIM selector {key.selector} ({key.algorithm.value} {key.bits}, {state})",
                key.public_b64,
            )
        )
    mech = _spf_mechanism(inputs.hostname)
    out.append(
        Record(
            domain,
            "TXT",
            quote_txt(f"v=spf1 {mech} ~all"),
            Kind.SPF,
            f"SPF: authorizes {inputs.hostname}; merge {mech} into an existing v=spf1 record",
            mech,
        )
    )
    out.append(
        Record(
            f"_dmarc.{domain}",
            "TXT",
            quote_txt(f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}; adkim=r; aspf=r"),
            Kind.DMARC,
            "DMARC starting policy: p=none with reports; move to quarantine/reject later"
            + _alignment_note(domain, inputs.bounce_domain),
        )
    )
    return out


def _alignment_note(domain: str, bounce_domain: str | None) -> str:
    """DMARC passes on SPF only if the envelope (bounce) domain shares the From domain."""
    if not bounce_domain or bounce_domain == domain or bounce_domain.endswith("." + domain):
        return ""
    return f" (SPF cannot align: {bounce_domain} is not under {domain}; DKIM carries DMARC)"


def shared_records(inputs: Inputs) -> list[Record]:
    """This host, the bounce domain and the tracking host: the same for every domain."""
    host = inputs.hostname
    out = [
        Record(
            host,
            "A",
            "<public IPv4 address of this host>",
            Kind.ADDRESS,
            "this host: its address (and a PTR record naming it back)",
        )
    ]
    if inputs.bounce_domain:
        bd = inputs.bounce_domain
        out.append(
            Record(bd, "MX", f"10 {host}.", Kind.MX, "bounce domain: DSNs come back here", host)
        )
        mech = _spf_mechanism(host)
        out.append(
            Record(
                bd,
                "TXT",
                quote_txt(f"v=spf1 {mech} -all"),
                Kind.SPF,
                "bounce domain SPF: the envelope sender (VERP) domain receivers check",
                mech,
            )
        )
    mailto = (inputs.unsubscribe_mailto or "").rpartition("@")[2].lower().rstrip(".")
    if mailto and mailto != (inputs.bounce_domain or "").lower():
        out.append(
            Record(
                mailto,
                "MX",
                f"10 {host}.",
                Kind.MX,
                "unsubscribe_mailto domain: mail unsubscribes come here (inbound listener)",
                host,
            )
        )
    tracking = tracking_host(inputs.tracking_base_url)
    if tracking and tracking != host:
        out.append(
            Record(
                tracking,
                "CNAME",
                f"{host}.",
                Kind.SAME_HOST,
                "tracking host: opens, clicks and unsubscribes (or an A record to this host)",
                host,
            )
        )
    return out


def tracking_host(base_url: str | None) -> str | None:
    if not base_url:
        return None
    host = urlsplit(base_url).hostname
    if not host:
        return None
    try:
        ipaddress.ip_address(host)
        return None  # an address needs no record
    except ValueError:
        return host.lower().rstrip(".")


def sending_domains(inputs: Inputs) -> tuple[str, ...]:
    return tuple(sorted({k.domain for k in inputs.keys}))


def all_records(inputs: Inputs, domain: str | None = None) -> list[tuple[str, list[Record]]]:
    """Sections of records: one per sending domain (or just ``domain``), then the shared ones."""
    domains = (domain,) if domain else sending_domains(inputs)
    sections = [(d, domain_records(d, inputs)) for d in domains]
    sections.append(("this host, bounces and tracking", shared_records(inputs)))
    return sections


def render_zone(sections: list[tuple[str, list[Record]]]) -> str:
    lines: list[str] = []
    for title, records in sections:
        lines.append(f"; ---- {title}")
        for rec in records:
            lines.append(f"; {rec.purpose}")
            lines.append(rec.zone())
        lines.append("")
    return "\n".join(lines)


# -- checking -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    status: str  # "ok", "nxdomain", "nodata", "error"
    values: tuple[str, ...] = ()  # TXT joined, MX "pref host", A address, CNAME target
    error: str = ""


class Lookup(Protocol):
    async def query(self, name: str, rtype: str) -> Answer: ...


class DnsLookup:
    """``Lookup`` over dnspython's async resolver; ``nameservers`` as ``[(ip, port)]``."""

    def __init__(
        self, nameservers: Sequence[tuple[str, int]] = (), timeout: float = LOOKUP_TIMEOUT
    ) -> None:
        if nameservers:
            res = dns.asyncresolver.Resolver(configure=False)
            res.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers]
        else:
            res = dns.asyncresolver.Resolver()
        res.timeout = timeout
        res.lifetime = timeout
        self._resolver = res

    async def query(self, name: str, rtype: str) -> Answer:
        try:
            answer = await self._resolver.resolve(name.rstrip(".") + ".", rtype, search=False)
        except dns.resolver.NXDOMAIN:
            return Answer("nxdomain")
        except dns.resolver.NoAnswer:
            return Answer("nodata")
        except dns.resolver.NoNameservers:
            return Answer("error", error="no nameserver answered (SERVFAIL or refused)")
        except dns.exception.Timeout:
            return Answer("error", error="timed out")
        except dns.exception.DNSException as exc:
            return Answer("error", error=type(exc).__name__)
        values = []
        for rdata in answer:
            if rdata.rdtype == dns.rdatatype.TXT:
                values.append(b"".join(rdata.strings).decode("utf-8", "replace"))
            elif rdata.rdtype == dns.rdatatype.MX:
                values.append(f"{rdata.preference} {rdata.exchange.to_text().rstrip('.')}")
            elif rdata.rdtype == dns.rdatatype.CNAME:
                values.append(rdata.target.to_text().rstrip("."))
            else:
                values.append(rdata.to_text())
        return Answer("ok", tuple(values))


@dataclass(frozen=True, slots=True)
class CheckResult:
    record: Record
    status: Status
    detail: str = ""  # what was found, or why

    def line(self) -> str:
        rec = self.record
        text = f"{self.status.value:<9} {rec.rtype:<5} {rec.name:<40} {rec.purpose.split(':')[0]}"
        return f"{text}: {self.detail}" if self.detail else text


async def check_record(rec: Record, lookup: Lookup) -> CheckResult:
    if rec.kind is Kind.SAME_HOST:
        return await _check_same_host(rec, lookup)
    rtype = "A" if rec.kind is Kind.ADDRESS else rec.rtype
    answer = await lookup.query(rec.name, rtype)
    if answer.status == "error":
        return CheckResult(rec, Status.ERROR, answer.error)
    if answer.status != "ok" and rec.kind is Kind.ADDRESS:
        aaaa = await lookup.query(rec.name, "AAAA")
        if aaaa.status == "ok":
            return CheckResult(rec, Status.OK, "found " + ", ".join(aaaa.values))
    if answer.status != "ok":
        return CheckResult(rec, Status.MISSING, answer.status)
    values = answer.values
    if rec.kind is Kind.DKIM:
        return _check_dkim(rec, values)
    if rec.kind is Kind.SPF:
        return _check_spf(rec, values)
    if rec.kind is Kind.DMARC:
        found = [v for v in values if v.strip().lower().startswith("v=dmarc1")]
        if not found:
            return CheckResult(rec, Status.MISSING, _found(values))
        if len(found) > 1:
            return CheckResult(
                rec, Status.DIFFERENT, "more than one DMARC record: " + _found(found)
            )
        return CheckResult(rec, Status.OK, _found(found))
    if rec.kind is Kind.MX:
        hosts = [v.split(" ", 1)[-1].lower() for v in values]
        if rec.expect.lower() in hosts:
            return CheckResult(rec, Status.OK)
        return CheckResult(rec, Status.DIFFERENT, _found(values))
    return CheckResult(rec, Status.OK, "found " + ", ".join(values))  # ADDRESS


def _found(values: Sequence[str]) -> str:
    return "found " + "; ".join(f'"{v}"' for v in values)


def _check_dkim(rec: Record, values: tuple[str, ...]) -> CheckResult:
    keys = [v for v in values if "p=" in v]
    for v in keys:
        if parse_tags(v).get("p") == rec.expect:
            return CheckResult(rec, Status.OK)
    if not keys:
        return CheckResult(rec, Status.MISSING, _found(values) if values else "")
    return CheckResult(rec, Status.DIFFERENT, "p= does not match the key; " + _found(keys))


def _check_spf(rec: Record, values: tuple[str, ...]) -> CheckResult:
    spf = [v for v in values if v.strip().lower().startswith("v=spf1")]
    if not spf:
        return CheckResult(rec, Status.MISSING, "no v=spf1 record")
    if len(spf) > 1:
        return CheckResult(rec, Status.DIFFERENT, "more than one SPF record: " + _found(spf))
    terms = [t.lower().lstrip("+") for t in spf[0].split()]
    if rec.expect.lower() in terms:
        return CheckResult(rec, Status.OK)
    return CheckResult(rec, Status.DIFFERENT, f"{rec.expect} not in it; " + _found(spf))


async def _check_same_host(rec: Record, lookup: Lookup) -> CheckResult:
    cname = await lookup.query(rec.name, "CNAME")
    if cname.status == "ok" and rec.expect.lower() in (v.lower() for v in cname.values):
        return CheckResult(rec, Status.OK)
    ours, theirs = await asyncio.gather(lookup.query(rec.expect, "A"), lookup.query(rec.name, "A"))
    for a in (theirs, ours):
        if a.status == "error":
            return CheckResult(rec, Status.ERROR, a.error)
    if theirs.status != "ok":
        return CheckResult(rec, Status.MISSING, theirs.status)
    if ours.status == "ok" and set(theirs.values) & set(ours.values):
        return CheckResult(rec, Status.OK, "same address as " + rec.expect)
    found = (f"CNAME {', '.join(cname.values)}; " if cname.status == "ok" else "") + (
        "A " + ", ".join(theirs.values)
    )
    return CheckResult(rec, Status.DIFFERENT, f"found {found}")


async def check_all(records: Sequence[Record], lookup: Lookup) -> list[CheckResult]:
    """Check every record concurrently; results in the given order."""
    return list(await asyncio.gather(*(check_record(r, lookup) for r in records)))
