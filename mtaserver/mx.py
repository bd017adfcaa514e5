"""MX routing: which hosts to try, in which order, for a destination domain.

The ``Resolver`` protocol is what delivery depends on; ``DnsResolver`` implements it over
dnspython's async resolver. Rules (RFC 5321 §5.1, RFC 7505):

* MX records in preference order, random order among equal preferences (injected RNG);
* no MX but the domain exists → implicit MX: the domain itself (A/AAAA);
* null MX (a single ``0 .``) → permanent failure ``5.1.10``;
* NXDOMAIN → permanent failure ``5.1.2``;
* SERVFAIL, refused, timeouts → temporary failure (defer).

Answers are cached by their TTL against the injected clock (negative answers for a short
fixed time, temporary failures never). Outcomes are values: a ``Route`` or a ``RouteError``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from mtaserver.clock import Clock
from mtaserver.model import Disposition, MxHost, Route, RouteError, SmtpReply


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"ip:port"``, ``"ip"``, ``"[v6]:port"`` or a bare IPv6 address → (ip, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port = int(rest[1:]) if sep and rest.startswith(":") else 53
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, 53
    ipaddress.ip_address(host)  # raises ValueError for a name or garbage
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


# Negative answers (NXDOMAIN, no records) are kept this long at most; we do not get the
# SOA minimum through dnspython's resolve(), and a short time keeps fixes visible.
NEGATIVE_TTL = 60.0
MAX_TTL = 86400.0


@dataclass(frozen=True, slots=True)
class _Answer:
    kind: str  # "ok", "nodata", "nxdomain"
    records: tuple[tuple[int, str], ...]  # (preference, exchange) for MX; (0, ip) for A/AAAA


class _TempFail(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _defer(domain: str, enhanced: str, text: str) -> RouteError:
    return RouteError(domain, Disposition.DEFERRED, SmtpReply(451, text, enhanced))


def _bounce(domain: str, enhanced: str, text: str) -> RouteError:
    return RouteError(domain, Disposition.BOUNCED, SmtpReply(550, text, enhanced))


class DnsResolver:
    """``Resolver`` over dnspython's async resolver, with a TTL cache on the injected clock."""

    def __init__(
        self,
        clock: Clock,
        *,
        nameservers: Sequence[str | tuple[str, int]] = (),
        timeout: float = 10.0,
        rng: random.Random | None = None,
        max_hosts: int = 10,
        ipv6: bool = True,
        cache_size: int = 10_000,
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._rng = rng or random.Random()  # load spreading, not security
        self._max_hosts = max_hosts
        self._ipv6 = ipv6
        self._cache: OrderedDict[tuple[str, str], tuple[float, _Answer]] = OrderedDict()
        self._cache_size = cache_size
        self._nameservers = _servers(nameservers)
        self._res = _dns_resolver(self._nameservers, timeout)

    def reconfigure(
        self, *, nameservers: Sequence[str | tuple[str, int]], timeout: float, ipv6: bool
    ) -> None:
        """Settings from a reloaded config, for lookups that start from now on.

        Lookups in flight finish on the resolver they started with. Answers cached from
        the previous name servers are dropped when the servers change.
        """
        servers = _servers(nameservers)
        if servers != self._nameservers:
            self._cache.clear()
        self._nameservers = servers
        self._timeout = timeout
        self._ipv6 = ipv6
        self._res = _dns_resolver(servers, timeout)

    # -- lookups ------------------------------------------------------------------------
    async def _query(self, name: str, rdtype: str) -> _Answer:
        key = (name.lower().rstrip("."), rdtype)
        now = self._clock.monotonic()
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > now:
                self._cache.move_to_end(key)
                return hit[1]
            del self._cache[key]
        try:
            ans = await asyncio.wait_for(
                self._res.resolve(key[0] + ".", rdtype, raise_on_no_answer=False),
                self._timeout + 1.0,
            )
        except dns.resolver.NXDOMAIN:
            answer, ttl = _Answer("nxdomain", ()), NEGATIVE_TTL
        except (TimeoutError, dns.exception.Timeout) as exc:
            raise _TempFail(f"DNS timeout looking up {rdtype} for {key[0]}") from exc
        except dns.resolver.NoNameservers as exc:
            raise _TempFail(f"DNS server failure looking up {rdtype} for {key[0]}") from exc
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            raise _TempFail(f"DNS error looking up {rdtype} for {key[0]}") from exc
        else:
            if ans.rrset is None:
                answer, ttl = _Answer("nodata", ()), NEGATIVE_TTL
            else:
                recs: list[tuple[int, str]] = []
                for rr in ans.rrset:
                    if rdtype == "MX":
                        recs.append((int(rr.preference), rr.exchange.to_text().rstrip(".")))
                    else:
                        recs.append((0, str(rr.address)))
                answer = _Answer("ok", tuple(recs))
                ttl = min(float(ans.rrset.ttl), MAX_TTL)
        if ttl > 0:
            self._cache[key] = (now + ttl, answer)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return answer

    async def _addresses(self, name: str) -> tuple[tuple[str, ...], bool]:
        """(addresses, exists) for a host; raises _TempFail for temporary trouble."""
        literal = _ip_literal(name)
        if literal is not None:
            return (literal,), True
        types = ["A", "AAAA"] if self._ipv6 else ["A"]
        answers = await asyncio.gather(*(self._query(name, t) for t in types))
        addrs: list[str] = []
        for a in answers:
            addrs.extend(ip for _, ip in a.records)
        exists = any(a.kind != "nxdomain" for a in answers)
        return tuple(addrs), exists

    # -- Resolver -----------------------------------------------------------------------
    async def route(self, domain: str) -> Route | RouteError:
        domain = domain.lower().rstrip(".")
        if not domain:
            return _bounce(domain, "5.1.2", "empty destination domain")
        literal = _ip_literal(domain)
        if literal is not None:
            return Route(domain, (MxHost(domain, 0, (literal,)),), implicit=True)
        try:
            mx = await self._query(domain, "MX")
        except _TempFail as exc:
            return _defer(domain, "4.4.3", exc.text)
        if mx.kind == "nxdomain":
            return _bounce(domain, "5.1.2", f"domain {domain} does not exist (NXDOMAIN)")
        if mx.kind == "nodata":
            try:
                addrs, exists = await self._addresses(domain)
            except _TempFail as exc:
                return _defer(domain, "4.4.3", exc.text)
            if not addrs:
                if not exists:
                    return _bounce(domain, "5.1.2", f"domain {domain} does not exist")
                return _bounce(domain, "5.4.4", f"domain {domain} has no MX and no address")
            return Route(domain, (MxHost(domain, 0, addrs),), implicit=True)
        records = [(p, h) for p, h in mx.records if h not in ("", ".")]
        if not records:  # only "." exchanges: RFC 7505 null MX
            return _bounce(domain, "5.1.10", f"domain {domain} accepts no mail (null MX)")
        ordered = self._order(records)[: self._max_hosts]
        hosts: list[MxHost] = []
        temp: str | None = None
        for pref, name in ordered:
            try:
                addrs, _ = await self._addresses(name)
            except _TempFail as exc:
                temp = exc.text
                continue
            if addrs:
                hosts.append(MxHost(name, pref, addrs))
        if not hosts:
            text = temp or f"no MX host of {domain} has an address"
            return _defer(domain, "4.4.3" if temp else "4.4.4", text)
        return Route(domain, tuple(hosts))

    async def host(self, name: str) -> Route | RouteError:
        name = name.lower().rstrip(".")
        try:
            addrs, _ = await self._addresses(name)
        except _TempFail as exc:
            return _defer(name, "4.4.3", exc.text)
        if not addrs:
            return _defer(name, "4.4.4", f"relay host {name} has no address")
        return Route(name, (MxHost(name, 0, addrs),))

    async def mx_hosts(self, domain: str) -> Sequence[str]:
        """MX host names in preference order (the domain itself for an implicit MX; empty
        when unknown). Cheap: one cached MX query, no address lookups. The scheduler
        groups destinations by these names."""
        domain = domain.lower().rstrip(".")
        try:
            mx = await self._query(domain, "MX")
        except _TempFail:
            return ()
        if mx.kind == "nodata":
            return (domain,)
        return tuple(h for _, h in sorted(mx.records) if h not in ("", "."))

    def _order(self, records: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """Sort by preference; shuffle each group of equal preference."""
        groups: dict[int, list[tuple[int, str]]] = {}
        for rec in sorted(set(records)):
            groups.setdefault(rec[0], []).append(rec)
        out: list[tuple[int, str]] = []
        for pref in sorted(groups):
            group = groups[pref]
            self._rng.shuffle(group)
            out.extend(group)
        return out


def _servers(nameservers: Sequence[str | tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    return tuple(parse_nameserver(n) if isinstance(n, str) else n for n in nameservers)


def _dns_resolver(
    servers: tuple[tuple[str, int], ...], timeout: float
) -> dns.asyncresolver.Resolver:
    """dnspython's resolver on ``servers`` (none: the system's), without its own cache."""
    if servers:
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in servers]
    else:
        res = dns.asyncresolver.Resolver()
    res.cache = None  # ours is on the injected clock
    res.lifetime = timeout
    res.timeout = min(timeout, 5.0)
    return res


def _ip_literal(name: str) -> str | None:
    """``[1.2.3.4]``, ``[IPv6:…]`` or a bare IP → the address; else None."""
    text = name.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if text.lower().startswith("ipv6:"):
            text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
