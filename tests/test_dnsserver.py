"""The test DNS server answers dnspython over UDP and TCP, so other tests can rely on it."""

import dns.asyncresolver
import dns.resolver
import pytest

from tests.support.dnsserver import DnsServer


async def test_serves_records_nxdomain_and_servfail() -> None:
    with DnsServer() as server:
        server.add("example.com", "MX", "10 mx1.example.com.")
        server.add("mx1.example.com", "A", "127.0.0.2")
        server.add("sel._domainkey.example.com", "TXT", '"v=DKIM1; k=rsa; p=abc"')
        server.nxdomain("gone.example")
        server.servfail("broken.example")
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers = ["127.0.0.1"]
        res.port = server.port
        mx = await res.resolve("example.com", "MX")
        assert [(r.preference, r.exchange.to_text()) for r in mx] == [(10, "mx1.example.com.")]
        a = await res.resolve("mx1.example.com", "A", tcp=True)
        assert [r.address for r in a] == ["127.0.0.2"]
        txt = await res.resolve("sel._domainkey.example.com", "TXT")
        assert b"".join(next(iter(txt)).strings) == b"v=DKIM1; k=rsa; p=abc"
        with pytest.raises(dns.resolver.NXDOMAIN):
            await res.resolve("gone.example", "A")
        with pytest.raises(dns.resolver.NoAnswer):
            await res.resolve("example.com", "AAAA")
        with pytest.raises(dns.resolver.NoNameservers):
            await res.resolve("broken.example", "MX")
