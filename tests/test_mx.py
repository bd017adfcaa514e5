"""MX routing against the test DNS server: order, randomness, implicit/null MX, errors, cache."""

import random
import socket
from collections.abc import Iterator

import pytest

from mtaserver.model import Disposition, MxHost, Route, RouteError
from mtaserver.mx import DnsResolver, parse_nameserver
from tests.support.clock import FakeClock
from tests.support.dnsserver import DnsServer


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(ttl=300) as server:
        yield server


def make(dns_server: DnsServer, clock: FakeClock | None = None, seed: int = 1) -> DnsResolver:
    return DnsResolver(
        clock or FakeClock(),
        nameservers=[dns_server.nameserver],
        timeout=2.0,
        rng=random.Random(seed),
    )


async def test_preference_order_and_addresses(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.2")
    dns_server.add("mx2.example.test", "A", "127.0.0.3")
    dns_server.add("mx2.example.test", "AAAA", "::1")
    route = await make(dns_server).route("Example.TEST.")
    assert route == Route(
        "example.test",
        (
            MxHost("mx1.example.test", 10, ("127.0.0.2",)),
            MxHost("mx2.example.test", 20, ("127.0.0.3", "::1")),
        ),
    )


async def test_equal_preferences_are_shuffled_by_the_injected_rng(dns_server: DnsServer) -> None:
    names = [f"mx{i}.eq.test" for i in range(4)]
    for i, name in enumerate(names):
        dns_server.add("eq.test", "MX", f"10 {name}.")
        dns_server.add(name, "A", f"127.0.0.{i + 2}")
    dns_server.add("eq.test", "MX", "5 first.eq.test.")
    dns_server.add("first.eq.test", "A", "127.0.0.9")
    orders = set()
    for seed in range(12):
        route = await make(dns_server, seed=seed).route("eq.test")
        assert isinstance(route, Route)
        assert route.hosts[0].name == "first.eq.test"
        assert sorted(h.name for h in route.hosts[1:]) == names
        orders.add(tuple(h.name for h in route.hosts[1:]))
    assert len(orders) > 1  # equal preferences really vary
    # the same seed gives the same order (reproducible tests)
    a = await make(dns_server, seed=3).route("eq.test")
    b = await make(dns_server, seed=3).route("eq.test")
    assert a == b


async def test_implicit_mx(dns_server: DnsServer) -> None:
    dns_server.add("plain.test", "A", "127.0.0.5")
    route = await make(dns_server).route("plain.test")
    assert route == Route("plain.test", (MxHost("plain.test", 0, ("127.0.0.5",)),), True)


async def test_null_mx_bounces_with_5_1_10(dns_server: DnsServer) -> None:
    dns_server.add("nullmx.test", "MX", "0 .")
    dns_server.add("nullmx.test", "A", "127.0.0.5")  # must not be used as implicit MX
    route = await make(dns_server).route("nullmx.test")
    assert isinstance(route, RouteError)
    assert route.disposition is Disposition.BOUNCED
    assert route.reply.enhanced == "5.1.10" and route.reply.code == 550


async def test_nxdomain_bounces_with_5_1_2(dns_server: DnsServer) -> None:
    dns_server.nxdomain("gone.test")
    route = await make(dns_server).route("gone.test")
    assert isinstance(route, RouteError)
    assert route.disposition is Disposition.BOUNCED
    assert route.reply.enhanced == "5.1.2"


async def test_no_mx_and_no_address_bounces(dns_server: DnsServer) -> None:
    dns_server.add("txtonly.test", "TXT", '"hello"')
    route = await make(dns_server).route("txtonly.test")
    assert isinstance(route, RouteError)
    assert route.disposition is Disposition.BOUNCED


async def test_servfail_defers(dns_server: DnsServer) -> None:
    dns_server.servfail("broken.test")
    route = await make(dns_server).route("broken.test")
    assert isinstance(route, RouteError)
    assert route.disposition is Disposition.DEFERRED
    assert route.reply.code == 451 and route.reply.enhanced == "4.4.3"


async def test_servfail_on_mx_host_address_defers(dns_server: DnsServer) -> None:
    dns_server.add("half.test", "MX", "10 mx.broken.test.")
    dns_server.servfail("mx.broken.test")
    route = await make(dns_server).route("half.test")
    assert isinstance(route, RouteError)
    assert route.disposition is Disposition.DEFERRED


async def test_unresolvable_mx_host_is_skipped(dns_server: DnsServer) -> None:
    dns_server.add("skip.test", "MX", "10 missing.skip.test.")
    dns_server.add("skip.test", "MX", "20 mx.skip.test.")
    dns_server.nxdomain("missing.skip.test")
    dns_server.add("mx.skip.test", "A", "127.0.0.4")
    route = await make(dns_server).route("skip.test")
    assert isinstance(route, Route)
    assert [h.name for h in route.hosts] == ["mx.skip.test"]


async def test_timeout_defers() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        res = DnsResolver(FakeClock(), nameservers=[f"127.0.0.1:{port}"], timeout=0.5)
        route = await res.route("slow.test")
    finally:
        silent.close()
    assert isinstance(route, RouteError)
    assert route.disposition is Disposition.DEFERRED
    assert "timeout" in route.reply.text.lower()


async def test_answers_are_cached_by_ttl(dns_server: DnsServer) -> None:
    dns_server.add("cached.test", "MX", "10 mx.cached.test.")
    dns_server.add("mx.cached.test", "A", "127.0.0.2")
    clock = FakeClock()
    res = make(dns_server, clock)
    first = await res.route("cached.test")
    n = len(dns_server.queries)
    dns_server.set("mx.cached.test", "A", ["127.0.0.3"])
    clock.advance(50)
    assert await res.route("cached.test") == first
    assert len(dns_server.queries) == n  # nothing asked again
    clock.advance(249)  # 299 s: the negative AAAA answer expired, MX and A (TTL 300) not
    assert await res.route("cached.test") == first
    assert dns_server.queries[n:] == [("mx.cached.test.", "AAAA")]
    clock.advance(2)  # past the TTL: asked again, new data seen
    again = await res.route("cached.test")
    assert isinstance(again, Route)
    assert again.hosts[0].addresses == ("127.0.0.3",)
    assert ("cached.test.", "MX") in dns_server.queries[n + 1 :]


async def test_temporary_failures_are_not_cached(dns_server: DnsServer) -> None:
    dns_server.servfail("flaky.test")
    res = make(dns_server)
    assert isinstance(await res.route("flaky.test"), RouteError)
    with dns_server._lock:
        del dns_server._rcodes["flaky.test."]
    dns_server.add("flaky.test", "A", "127.0.0.6")
    assert isinstance(await res.route("flaky.test"), Route)


async def test_host_lookup_for_smarthost(dns_server: DnsServer) -> None:
    dns_server.add("relay.test", "A", "127.0.0.7")
    dns_server.add("relay.test", "MX", "10 elsewhere.test.")
    res = make(dns_server)
    assert await res.host("relay.test") == Route(
        "relay.test", (MxHost("relay.test", 0, ("127.0.0.7",)),)
    )
    assert await res.host("127.0.0.8") == Route(
        "127.0.0.8", (MxHost("127.0.0.8", 0, ("127.0.0.8",)),)
    )
    missing = await res.host("nothing.test")
    assert isinstance(missing, RouteError) and missing.disposition is Disposition.DEFERRED


async def test_address_literal_domain(dns_server: DnsServer) -> None:
    route = await make(dns_server).route("[127.0.0.2]")
    assert isinstance(route, Route) and route.hosts[0].addresses == ("127.0.0.2",)


def test_parse_nameserver() -> None:
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    for bad in ("dns.example:53", "127.0.0.1:0", "127.0.0.1:x"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


async def test_mx_hosts_for_destination_grouping(dns_server: DnsServer) -> None:
    dns_server.add("grouped.test", "MX", "20 alt1.gmail-smtp-in.l.google.com.")
    dns_server.add("grouped.test", "MX", "5 gmail-smtp-in.l.google.com.")
    dns_server.add("plain.test", "A", "127.0.0.5")
    dns_server.servfail("broken.test")
    res = DnsResolver(FakeClock(), nameservers=[("127.0.0.1", dns_server.port)], timeout=2.0)
    assert await res.mx_hosts("grouped.test") == (
        "gmail-smtp-in.l.google.com",
        "alt1.gmail-smtp-in.l.google.com",
    )
    assert await res.mx_hosts("plain.test") == ("plain.test",)
    assert await res.mx_hosts("broken.test") == ()
