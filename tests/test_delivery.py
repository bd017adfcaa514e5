"""DeliveryAgent against aiosmtpd sinks on 127.0.0.x and the test DNS server."""

from __future__ import annotations

import random
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import dkim
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mtaserver.delivery import DeliveryAgent
from mtaserver.model import DeliveryJob, DeliveryReport, Disposition, JobRecipient, RoutePolicy
from mtaserver.mx import DnsResolver
from mtaserver.verp import Verp
from tests.support.clock import FakeClock, TimerClock
from tests.support.dnsserver import DnsServer
from tests.support.mxsink import SinkGroup, wait_for

HOSTNAME = "mta.sender.test"
BODY = (
    b"From: a@sender.test\r\nTo: b@dest.test\r\nSubject: hello\r\n"
    b"Message-ID: <1@sender.test>\r\n\r\nHello.\r\n.leading dot line\r\n..two dots\r\n.\r\nend\r\n"
)


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return TimerClock()  # the idle reaper sleeps on it: it wakes only when a test advances


def job(
    domain: str = "dest.test",
    rcpts: tuple[str, ...] = ("b",),
    data: bytes = BODY,
    sender: str = "a@sender.test",
    queue_id: str = "q1",
) -> DeliveryJob:
    return DeliveryJob(
        queue_id=queue_id,
        sender=sender,
        domain=domain,
        recipients=tuple(
            JobRecipient(i, r if "@" in r else f"{r}@{domain}", 0) for i, r in enumerate(rcpts)
        ),
        data=data,
        received_at=0.0,
        lease_until=0.0,
    )


def policy(port: int, **kw: object) -> RoutePolicy:
    base: dict[str, object] = dict(
        port=port, tls="none", connect_timeout=2.0, command_timeout=2.0, data_timeout=5.0
    )
    base.update(kw)
    return RoutePolicy(**base)  # type: ignore[arg-type]


@pytest.fixture
async def make_agent(dns_server: DnsServer, clock: FakeClock) -> AsyncIterator[type[DeliveryAgent]]:
    agents: list[DeliveryAgent] = []

    def factory(**kw: object) -> DeliveryAgent:
        seed = kw.pop("seed", 1)
        resolver = DnsResolver(
            clock, nameservers=[dns_server.nameserver], timeout=2.0, rng=random.Random(seed)
        )
        agent = DeliveryAgent(resolver, clock, hostname=HOSTNAME, **kw)  # type: ignore[arg-type]
        agents.append(agent)
        return agent

    yield factory  # type: ignore[misc]
    for agent in agents:
        await agent.aclose()


def dispositions(report: DeliveryReport) -> dict[str, Disposition]:
    return {r.address: r.disposition for r in report.results}


# -- routing and fallback -----------------------------------------------------------------
async def test_mx_fallback_refused_421_timeout_then_delivers(dns_server, make_agent) -> None:
    for pref, ip in ((10, "2"), (20, "3"), (30, "4"), (40, "5")):
        dns_server.add("dest.test", "MX", f"{pref} mx{ip}.dest.test.")
        dns_server.add(f"mx{ip}.dest.test", "A", f"127.0.0.{ip}")
    async with SinkGroup(
        ["127.0.0.5"], raw={"127.0.0.3": "421", "127.0.0.4": "silent"}, refuse=["127.0.0.2"]
    ) as sinks:
        agent = make_agent()
        report = await agent.deliver(
            job(), policy(sinks.port, connect_timeout=0.5, command_timeout=0.5)
        )
        (res,) = report.results
        assert res.disposition is Disposition.DELIVERED
        assert (res.mx, res.ip) == ("mx5.dest.test", "127.0.0.5")
        assert res.reply.code == 250
        assert len(sinks["127.0.0.5"].messages) == 1


async def test_all_hosts_failing_defers_with_last_reply(dns_server, make_agent) -> None:
    dns_server.add("dest.test", "MX", "10 mx2.dest.test.")
    dns_server.add("dest.test", "MX", "20 mx3.dest.test.")
    dns_server.add("mx2.dest.test", "A", "127.0.0.2")
    dns_server.add("mx3.dest.test", "A", "127.0.0.3")
    async with SinkGroup([], raw={"127.0.0.3": "421"}, refuse=["127.0.0.2"]) as sinks:
        report = await make_agent().deliver(job(rcpts=("b", "c")), policy(sinks.port))
    assert [r.disposition for r in report.results] == [Disposition.DEFERRED] * 2
    res = report.results[0]
    assert res.reply.code == 421 and res.reply.enhanced == "4.3.2"
    assert res.mx == "mx3.dest.test"


async def test_equal_preference_is_random_with_seeded_rng(dns_server, make_agent) -> None:
    for ip in ("2", "3"):
        dns_server.add("dest.test", "MX", f"10 mx{ip}.dest.test.")
        dns_server.add(f"mx{ip}.dest.test", "A", f"127.0.0.{ip}")
    async with SinkGroup(["127.0.0.2", "127.0.0.3"]) as sinks:
        agent = make_agent(seed=5)
        used = []
        for i in range(12):
            report = await agent.deliver(job(queue_id=f"q{i}"), policy(sinks.port))
            used.append(report.results[0].ip)
        assert set(used) == {"127.0.0.2", "127.0.0.3"}
        assert len(sinks["127.0.0.2"].messages) + len(sinks["127.0.0.3"].messages) == 12
        # the same seed picks the same hosts in the same order
        agent2 = make_agent(seed=5)
        again = [
            (await agent2.deliver(job(queue_id=f"r{i}"), policy(sinks.port))).results[0].ip
            for i in range(12)
        ]
        assert again == used


async def test_implicit_mx(dns_server, make_agent) -> None:
    dns_server.add("dest.test", "A", "127.0.0.6")
    async with SinkGroup(["127.0.0.6"]) as sinks:
        report = await make_agent().deliver(job(), policy(sinks.port))
        assert report.results[0].disposition is Disposition.DELIVERED
        assert report.results[0].mx == "dest.test"
        assert len(sinks["127.0.0.6"].messages) == 1


@pytest.mark.parametrize(
    ("setup", "disposition", "enhanced"),
    [
        ("nullmx", Disposition.BOUNCED, "5.1.10"),
        ("nxdomain", Disposition.BOUNCED, "5.1.2"),
        ("servfail", Disposition.DEFERRED, "4.4.3"),
    ],
)
async def test_routing_failures(dns_server, make_agent, setup, disposition, enhanced) -> None:
    if setup == "nullmx":
        dns_server.add("dest.test", "MX", "0 .")
    elif setup == "nxdomain":
        dns_server.nxdomain("dest.test")
    else:
        dns_server.servfail("dest.test")
    report = await make_agent().deliver(job(rcpts=("b", "c")), policy(2525))
    assert [r.disposition for r in report.results] == [disposition] * 2
    assert {r.reply.enhanced for r in report.results} == {enhanced}
    assert report.results[0].mx is None


# -- per-recipient replies ----------------------------------------------------------------
async def _one_mx(dns_server: DnsServer, ip: str = "127.0.0.2", name: str = "mx.dest.test") -> None:
    dns_server.add("dest.test", "MX", f"10 {name}.")
    dns_server.add(name, "A", ip)


async def test_rcpt_5xx_for_one_while_others_deliver(dns_server, make_agent) -> None:
    await _one_mx(dns_server)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sinks["127.0.0.2"].rcpt_replies["bad@dest.test"] = "550 5.1.1 <bad@dest.test>: no such user"
        report = await make_agent().deliver(job(rcpts=("b", "bad", "c")), policy(sinks.port))
        assert dispositions(report) == {
            "b@dest.test": Disposition.DELIVERED,
            "bad@dest.test": Disposition.BOUNCED,
            "c@dest.test": Disposition.DELIVERED,
        }
        bad = report.results[1]
        assert (bad.idx, bad.reply.code, bad.reply.enhanced) == (1, 550, "5.1.1")
        assert "no such user" in bad.reply.text
        (msg,) = sinks["127.0.0.2"].messages
        assert msg.rcpt_tos == ["b@dest.test", "c@dest.test"]


async def test_data_reply_applies_to_accepted_recipients(dns_server, make_agent) -> None:
    await _one_mx(dns_server)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        sink.rcpt_replies["bad@dest.test"] = "550 5.1.1 no such user"
        sink.rcpt_replies["later@dest.test"] = "450 4.2.1 mailbox busy, try again in 5 minutes"
        sink.data_reply = "451 4.7.0 Rate limited, retry in 120 seconds"
        agent = make_agent()
        report = await agent.deliver(job(rcpts=("b", "bad", "later", "c")), policy(sinks.port))
        by = {r.address: r for r in report.results}
        assert by["b@dest.test"].disposition is Disposition.DEFERRED
        assert by["c@dest.test"].reply == by["b@dest.test"].reply
        assert by["b@dest.test"].reply.enhanced == "4.7.0"
        assert by["b@dest.test"].retry_after == 120
        assert by["bad@dest.test"].disposition is Disposition.BOUNCED
        assert by["later@dest.test"].disposition is Disposition.DEFERRED
        assert by["later@dest.test"].retry_after == 300
        sink.data_reply = "554 5.7.1 message refused"
        report = await agent.deliver(job(rcpts=("b", "c")), policy(sinks.port))
        assert [r.disposition for r in report.results] == [Disposition.BOUNCED] * 2
        assert report.results[0].reply.enhanced == "5.7.1"


async def test_ehlo_uses_our_hostname(dns_server, make_agent) -> None:
    await _one_mx(dns_server)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        await make_agent().deliver(job(), policy(sinks.port))
        assert f"EHLO {HOSTNAME}" in sinks["127.0.0.2"].verbs()


# -- bytes on the wire --------------------------------------------------------------------
def _dkim_key() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return priv, pub


async def test_stored_bytes_arrive_identical_and_dkim_verifies(dns_server, make_agent) -> None:
    import base64

    priv, pub = _dkim_key()
    signature = dkim.sign(BODY, b"sel", b"sender.test", priv, canonicalize=(b"relaxed", b"relaxed"))
    signed = signature + BODY
    await _one_mx(dns_server)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        report = await make_agent().deliver(job(data=signed), policy(sinks.port))
        assert report.results[0].disposition is Disposition.DELIVERED
        (msg,) = sinks["127.0.0.2"].messages
    assert msg.data == signed  # byte-identical, dot-stuffing undone by the receiver
    assert b"\r\n.leading dot line\r\n..two dots\r\n.\r\nend\r\n" in msg.data
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(pub)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"sel._domainkey.sender.test."
        return record

    assert dkim.verify(msg.data, dnsfunc=dnsfunc)


# -- TLS ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_ctx(ca: trustme.CA, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(ctx)
    return ctx


def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def test_required_tls_without_starttls_defers_never_plaintext(dns_server, make_agent) -> None:
    await _one_mx(dns_server)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        report = await make_agent().deliver(job(), policy(sinks.port, tls="required"))
        res = report.results[0]
        assert res.disposition is Disposition.DEFERRED
        assert res.reply.enhanced == "4.7.4"
        assert sinks["127.0.0.2"].messages == []
        assert "MAIL" not in sinks["127.0.0.2"].verbs()


async def test_required_tls_with_mismatched_certificate_defers(
    dns_server, make_agent, ca, tmp_path
) -> None:
    await _one_mx(dns_server, name="mx.dest.test")
    tls = {"127.0.0.2": server_ctx(ca, "other.example")}
    async with SinkGroup(["127.0.0.2"], tls=tls) as sinks:
        agent = make_agent(ca_file=ca_file(ca, tmp_path))
        report = await agent.deliver(job(), policy(sinks.port, tls="required"))
        res = report.results[0]
        assert res.disposition is Disposition.DEFERRED
        assert res.reply.enhanced == "4.7.5"
        assert sinks["127.0.0.2"].messages == []
        assert "MAIL" not in sinks["127.0.0.2"].verbs()


async def test_required_tls_with_verified_certificate_delivers(
    dns_server, make_agent, ca, tmp_path
) -> None:
    await _one_mx(dns_server, name="mx.dest.test")
    tls = {"127.0.0.2": server_ctx(ca, "mx.dest.test")}
    async with SinkGroup(["127.0.0.2"], tls=tls) as sinks:
        agent = make_agent(ca_file=ca_file(ca, tmp_path))
        report = await agent.deliver(job(), policy(sinks.port, tls="required"))
        res = report.results[0]
        assert res.disposition is Disposition.DELIVERED
        assert res.tls in ("TLSv1.2", "TLSv1.3")
        (msg,) = sinks["127.0.0.2"].messages
        assert msg.tls


async def test_opportunistic_tls_with_self_signed_cert_delivers_over_tls(
    dns_server, make_agent
) -> None:
    await _one_mx(dns_server)
    self_signed = trustme.CA()  # nobody trusts this CA
    tls = {"127.0.0.2": server_ctx(self_signed, "whatever.invalid")}
    async with SinkGroup(["127.0.0.2"], tls=tls) as sinks:
        report = await make_agent().deliver(job(), policy(sinks.port, tls="opportunistic"))
        res = report.results[0]
        assert res.disposition is Disposition.DELIVERED
        assert res.tls is not None and res.tls.startswith("TLSv1.")
        assert res.cipher
        (msg,) = sinks["127.0.0.2"].messages
        assert msg.tls and msg.tls_version == res.tls
        assert sinks["127.0.0.2"].verbs().count("STARTTLS") == 1


async def test_tls_none_never_starts_tls(dns_server, make_agent, ca) -> None:
    await _one_mx(dns_server)
    async with SinkGroup(["127.0.0.2"], tls={"127.0.0.2": server_ctx(ca, "x")}) as sinks:
        report = await make_agent().deliver(job(), policy(sinks.port, tls="none"))
        assert report.results[0].tls is None
        assert "STARTTLS" not in sinks["127.0.0.2"].verbs()
        assert not sinks["127.0.0.2"].messages[0].tls


async def test_opportunistic_without_starttls_delivers_plaintext(dns_server, make_agent) -> None:
    await _one_mx(dns_server)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        report = await make_agent().deliver(job(), policy(sinks.port, tls="opportunistic"))
        assert report.results[0].disposition is Disposition.DELIVERED
        assert report.results[0].tls is None


# -- connections --------------------------------------------------------------------------
async def test_connection_reuse_with_rset_between(dns_server, make_agent) -> None:
    await _one_mx(dns_server)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        agent = make_agent()
        for i in range(4):
            report = await agent.deliver(job(queue_id=f"q{i}"), policy(sinks.port))
            assert report.results[0].disposition is Disposition.DELIVERED
        assert sink.connections == 1
        assert len(sink.messages) == 4
        assert {m.conn for m in sink.messages} == {sink.messages[0].conn}
        verbs = [v for v in sink.verbs() if v in ("MAIL", "RSET")]
        assert verbs == ["MAIL", "RSET", "MAIL", "RSET", "MAIL", "RSET", "MAIL"]


async def test_max_messages_per_connection(dns_server, make_agent) -> None:
    await _one_mx(dns_server)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        agent = make_agent()
        for i in range(5):
            await agent.deliver(
                job(queue_id=f"q{i}"), policy(sinks.port, max_messages_per_connection=2)
            )
        assert sink.connections == 3
        assert len(sink.messages) == 5
        await wait_for(lambda: sink.open_connections == 1)  # the two full ones said QUIT


async def test_idle_connections_are_dropped_after_idle_timeout(
    dns_server, make_agent, clock
) -> None:
    await _one_mx(dns_server)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        agent = make_agent(reap_interval=0.02)
        pol = policy(sinks.port, idle_timeout=10.0)
        await agent.deliver(job(), pol)
        assert agent.idle_sessions == 1
        clock.advance(5)
        await agent.deliver(job(queue_id="q2"), pol)
        assert sink.connections == 1  # still fresh: reused
        clock.advance(11)
        await wait_for(lambda: sink.open_connections == 0)  # the reaper said QUIT
        assert agent.idle_sessions == 0
        assert "QUIT" in sink.verbs()
        await agent.deliver(job(queue_id="q3"), pol)
        assert sink.connections == 2


async def test_aclose_quits_idle_connections(dns_server, make_agent) -> None:
    await _one_mx(dns_server)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        agent = make_agent()
        await agent.deliver(job(), policy(sinks.port))
        assert sink.open_connections == 1
        await agent.aclose()
        await wait_for(lambda: sink.open_connections == 0)
        assert sink.verbs()[-1] == "QUIT"


async def test_stale_pooled_connection_is_replaced(dns_server, make_agent) -> None:
    await _one_mx(dns_server)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        agent = make_agent()
        await agent.deliver(job(), policy(sinks.port))
        # the server drops the idle connection behind our back
        for lst in agent._pool._idle.values():
            for s in lst:
                s.smtp.transport.close()  # type: ignore[union-attr]
        report = await agent.deliver(job(queue_id="q2"), policy(sinks.port))
        assert report.results[0].disposition is Disposition.DELIVERED
        assert sink.connections == 2


async def test_relay_host(dns_server, make_agent) -> None:
    await _one_mx(dns_server, ip="127.0.0.2")
    dns_server.add("smarthost.test", "A", "127.0.0.7")
    async with SinkGroup(["127.0.0.2", "127.0.0.7"]) as sinks:
        agent = make_agent()
        r1 = await agent.deliver(job(), policy(sinks.port, relay_host="smarthost.test"))
        r2 = await agent.deliver(
            job(domain="nowhere.test"), policy(0, relay_host=f"127.0.0.7:{sinks.port}")
        )
        assert r1.results[0].disposition is Disposition.DELIVERED
        assert r1.results[0].mx == "smarthost.test"
        assert r2.results[0].disposition is Disposition.DELIVERED
        assert sinks["127.0.0.2"].messages == []
        assert len(sinks["127.0.0.7"].messages) == 2


# -- VERP ---------------------------------------------------------------------------------
async def test_verp_sends_each_recipient_in_its_own_transaction(dns_server, make_agent) -> None:
    verp = Verp(b"s" * 32, "bounces", "bounce.sender.test")
    await _one_mx(dns_server)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        sink.rcpt_replies["bad@dest.test"] = "550 5.1.1 no such user"
        agent = make_agent(return_path=verp)
        report = await agent.deliver(
            job(rcpts=("b", "bad", "c"), queue_id="Q7"), policy(sinks.port)
        )
        assert [r.disposition for r in report.results] == [
            Disposition.DELIVERED,
            Disposition.BOUNCED,
            Disposition.DELIVERED,
        ]
        assert len(sink.messages) == 2
        assert sink.connections == 1
        seen = {}
        for msg in sink.messages:
            (rcpt,) = msg.rcpt_tos
            seen[rcpt] = verp.parse(msg.mail_from)
            assert msg.data == BODY
        assert seen == {"b@dest.test": ("Q7", 0), "c@dest.test": ("Q7", 2)}
        # the null sender stays null (a DSN is never VERPed)
        await agent.deliver(job(sender="", queue_id="Q8", rcpts=("b", "c")), policy(sinks.port))
        assert sink.messages[-1].mail_from == "<>" or sink.messages[-1].mail_from == ""
        assert sink.messages[-1].rcpt_tos == ["b@dest.test", "c@dest.test"]


async def test_421_at_mail_moves_to_the_next_host(dns_server, make_agent) -> None:
    dns_server.add("dest.test", "MX", "10 mx2.dest.test.")
    dns_server.add("dest.test", "MX", "20 mx3.dest.test.")
    dns_server.add("mx2.dest.test", "A", "127.0.0.2")
    dns_server.add("mx3.dest.test", "A", "127.0.0.3")
    async with SinkGroup(["127.0.0.2", "127.0.0.3"]) as sinks:
        sinks["127.0.0.2"].mail_reply = "421 4.7.0 too many connections, closing"
        report = await make_agent().deliver(job(rcpts=("b", "c")), policy(sinks.port))
        assert [r.disposition for r in report.results] == [Disposition.DELIVERED] * 2
        assert {r.mx for r in report.results} == {"mx3.dest.test"}
        assert sinks["127.0.0.2"].messages == []
        assert len(sinks["127.0.0.3"].messages) == 1


async def test_opportunistic_handshake_failure_falls_back_to_plaintext(
    dns_server, make_agent, ca
) -> None:
    await _one_mx(dns_server)
    broken = server_ctx(ca, "mx.dest.test")
    broken.set_ciphers("aNULL")  # nothing a client will agree to: the handshake fails
    broken.maximum_version = ssl.TLSVersion.TLSv1_2
    async with SinkGroup(["127.0.0.2"], tls={"127.0.0.2": broken}) as sinks:
        report = await make_agent().deliver(job(), policy(sinks.port, tls="opportunistic"))
        res = report.results[0]
        assert res.disposition is Disposition.DELIVERED
        assert res.tls is None
        assert sinks["127.0.0.2"].connections == 2
        assert not sinks["127.0.0.2"].messages[0].tls
        # required TLS against the same server never falls back
        sinks["127.0.0.2"].messages.clear()
        report = await make_agent().deliver(job(), policy(sinks.port, tls="required"))
        assert report.results[0].disposition is Disposition.DEFERRED
        assert sinks["127.0.0.2"].messages == []
