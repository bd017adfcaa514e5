"""The inbound bounce listener over real sockets: who may send, what a bounce does."""

from __future__ import annotations

import asyncio
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
from aiosmtpd.smtp import SMTP as AioSMTP
from aiosmtpd.smtp import Envelope, Session

from mtaserver.clock import SystemClock
from mtaserver.config.inbound import InboundConfig
from mtaserver.delivery import DeliveryAgent
from mtaserver.inbound import (
    BounceProcessor,
    InboundHandler,
    InboundServer,
    Outcome,
)
from mtaserver.model import (
    DeliveryJob,
    Disposition,
    JobRecipient,
    PreparedMessage,
    PreparedRecipient,
    RecipientState,
    RecipientUpdate,
    RoutePolicy,
)
from mtaserver.mx import DnsResolver
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.verp import Verp
from tests.support.bounce_corpus import CORPUS

BOUNCE_DOMAIN = "bounces.example.com"
COMPLAINTS = "fbl@bounces.example.com"


def inbound_cfg(**kw: Any) -> InboundConfig:
    base = InboundConfig(
        listen=("127.0.0.1", 0),
        bounce_domain=BOUNCE_DOMAIN,
        verp_prefix="b",
        complaints_address=COMPLAINTS,
        command_timeout=10.0,
        parse_timeout=20.0,
    )
    return replace(base, **kw)


@dataclass
class Env:
    db: Database
    spool: Spool
    store: SuppressionStore
    verp: Verp
    server: InboundServer
    port: int
    outcomes: list[Outcome]


async def make_env(
    db: Database, cfg: InboundConfig | None = None, tls: ssl.SSLContext | None = None
) -> Env:
    cfg = cfg or inbound_cfg()
    spool = Spool(db)
    store = SuppressionStore(db, SystemClock())
    verp = Verp(b"k" * 32, "b", BOUNCE_DOMAIN)
    processor = BounceProcessor(spool, store, verp, BOUNCE_DOMAIN, SystemClock(), 20.0)
    outcomes: list[Outcome] = []

    async def process(raw: bytes, rcpts: Sequence[str]) -> Outcome:
        out = await processor.process(raw, rcpts)
        outcomes.append(out)
        return out

    server = InboundServer(cfg, InboundHandler(cfg, verp, process), SystemClock(), "mx.test", tls)
    _, port = await server.start("127.0.0.1", 0)
    return Env(db, spool, store, verp, server, port, outcomes)


@pytest.fixture
async def env(db: Database) -> AsyncIterator[Env]:
    e = await make_env(db)
    try:
        yield e
    finally:
        await e.server.stop()


async def queued_message(spool: Spool, rcpts: Sequence[str], *, sender: str = "app@shop.example",
                         message_id: str = "") -> str:  # fmt: skip
    qid = new_queue_id(time.time())
    await spool.enqueue(
        PreparedMessage(
            queue_id=qid,
            sender=sender,
            recipients=tuple(PreparedRecipient(r) for r in rcpts),
            data=b"Subject: hi\r\n\r\nbody\r\n",
            user="app",
            client_ip="127.0.0.1",
            received_at=time.time(),
            message_id=message_id or f"{qid}@shop.example",
        )
    )
    await spool.record(
        [RecipientUpdate(qid, i, RecipientState.DELIVERED, "250 ok") for i in range(len(rcpts))]
    )
    return qid


def dsn(rcpt: str, status: str = "5.1.1", diag: str = "550 5.1.1 User unknown",
        message_id: str = "x@shop.example") -> bytes:  # fmt: skip
    return (
        "From: MAILER-DAEMON@mx.remote.example\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="BB"\r\n\r\n'
        "--BB\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n"
        "--BB\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.remote.example\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Remote-MTA: dns; mailstore.remote.example\r\nDiagnostic-Code: smtp; {diag}\r\n\r\n"
        "--BB\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: <{message_id}>\r\nFrom: app@shop.example\r\nTo: {rcpt}\r\n\r\n--BB--\r\n"
    ).encode()


async def rows(db: Database, sql: str, *args: object) -> list[tuple[Any, ...]]:
    def fn(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
        return list(conn.execute(sql, args).fetchall())

    return await db.read(fn)


async def send_raw(
    raw: bytes,
    *,
    sender: str,
    recipients: Sequence[str],
    hostname: str,
    port: int,
    start_tls: bool,
    timeout: float,
) -> None:
    """Like aiosmtplib.send, but allows the null sender that bounces use."""
    c = aiosmtplib.SMTP(hostname=hostname, port=port, timeout=timeout, start_tls=start_tls)
    await c.connect()
    try:
        await c.ehlo()
        await c.mail(sender)
        refused = []
        for r in recipients:
            try:
                await c.rcpt(r)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused.append(exc)
        if len(refused) == len(recipients):
            raise aiosmtplib.SMTPRecipientsRefused(refused)
        await c.data(raw)
    finally:
        c.close()


async def client(port: int) -> aiosmtplib.SMTP:
    c = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        timeout=10,
        start_tls=False,
        local_hostname="remote.example",
    )
    await c.connect()
    await c.ehlo()
    return c


async def test_refuses_everything_but_verp_and_complaints(env: Env) -> None:
    qid = await queued_message(env.spool, ["a@remote.example"])
    good = env.verp.address(qid, 0)
    c = await client(env.port)
    try:
        assert "auth" not in c.esmtp_extensions
        assert (await c.mail(""))[0] == 250  # MAIL FROM:<> is what bounces use
        forged = good[:-len(BOUNCE_DOMAIN) - 3] + "xyz@" + BOUNCE_DOMAIN  # fmt: skip
        for bad in (forged, "someone@example.net", f"b+rqq-0-aaaa@{BOUNCE_DOMAIN}",
                    f"postmaster@{BOUNCE_DOMAIN}"):  # fmt: skip
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as exc:
                await c.rcpt(bad)
            assert exc.value.code == 550 and "5.7.1" in exc.value.message
        assert (await c.rcpt(good))[0] == 250
        assert (await c.rcpt(COMPLAINTS.upper()))[0] == 250
        code, _ = await c.execute_command(b"AUTH", b"PLAIN", b"AGEAYg==")
        assert code >= 500
    finally:
        await c.quit()
    # Control characters in envelope arguments (aiosmtpd passes them to the handler).
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    replies = []
    await reader.readline()
    for cmd in (b"EHLO a\x01b", b"HELO ok.example", b"MAIL FROM:<a\x02@x.example>",
                b"MAIL FROM:<>", b"RCPT TO:<" + good.encode() + b"\x01>"):  # fmt: skip
        writer.write(cmd + b"\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        while line[3:4] == b"-":
            line = await asyncio.wait_for(reader.readline(), 5)
        replies.append(int(line[:3]))
    writer.close()
    assert replies == [501, 250, 501, 250, 501]


async def test_async_bounce_marks_bounced_records_event_and_suppresses(env: Env) -> None:
    qid = await queued_message(env.spool, ["gone@remote.example", "fine@remote.example"])
    await send_raw(dsn("gone@remote.example"), sender="",
                          recipients=[env.verp.address(qid, 0)], hostname="127.0.0.1",
                          port=env.port, start_tls=False, timeout=10)  # fmt: skip
    assert env.outcomes[-1].bounced == ((qid, 0),)
    info = await env.spool.show(qid)
    assert info is not None
    states = {r.idx: r.state for r in info.recipients}
    assert states == {0: "bounced", 1: "delivered"}
    ev = await rows(env.db, "SELECT id, queue_id, recipient, data FROM events WHERE type='bounced'")
    assert len(ev) == 1 and ev[0][1] == qid and ev[0][2] == "gone@remote.example"
    assert '"source": "async"' in ev[0][3] and '"status": "5.1.1"' in ev[0][3]
    assert '"kind": "hard"' in ev[0][3] and '"category": "unknown-recipient"' in ev[0][3]
    s = await env.store.check("gone@remote.example", "other.example")
    assert s is not None and s.scope is None and s.event_id == ev[0][0] and s.queue_id == qid
    assert await env.store.check("fine@remote.example", "shop.example") is None


async def test_soft_and_reputation_bounces_do_not_suppress(env: Env) -> None:
    qid = await queued_message(env.spool, ["full@remote.example", "blocked@remote.example"])
    await send_raw(dsn("full@remote.example", "5.2.2", "552 5.2.2 Mailbox full"),
                          sender="", recipients=[env.verp.address(qid, 0)], hostname="127.0.0.1",
                          port=env.port, start_tls=False, timeout=10)  # fmt: skip
    await send_raw(
        dsn("blocked@remote.example", "5.7.1", "554 5.7.1 blocked using zen.spamhaus.org"),
        sender="", recipients=[env.verp.address(qid, 1)], hostname="127.0.0.1",
        port=env.port, start_tls=False, timeout=10,
    )  # fmt: skip
    assert await env.store.check("full@remote.example", None) is None
    assert await env.store.check("blocked@remote.example", None) is None
    n = await rows(env.db, "SELECT count(*) FROM soft_bounces WHERE address='full@remote.example'")
    assert n == [(1,)]


async def test_fallback_to_message_id_when_no_verp(env: Env) -> None:
    qid = await queued_message(env.spool, ["x@remote.example"], message_id="abc.1@shop.example")
    # Delivered to the complaints address (no VERP token); the returned headers still carry
    # the Message-ID we generated.
    await send_raw(dsn("x@remote.example", message_id="abc.1@shop.example"), sender="",
                          recipients=[COMPLAINTS], hostname="127.0.0.1", port=env.port,
                          start_tls=False, timeout=10)  # fmt: skip
    assert env.outcomes[-1].bounced == ((qid, 0),)


async def test_complaint_suppresses_for_the_sending_domain(env: Env) -> None:
    qid = await queued_message(env.spool, ["reader@remote.example"], sender="news@shop.example")
    arf = (CORPUS / "sisimai/arf-03.eml").read_bytes()
    # The feedback loop returns our message; its Return-Path is the VERP address we used.
    arf = arf.replace(b"Return-Path: <fake.sender@example.net>",
                      f"Return-Path: <{env.verp.address(qid, 0)}>".encode())  # fmt: skip
    await send_raw(arf, sender="", recipients=[COMPLAINTS], hostname="127.0.0.1",
                          port=env.port, start_tls=False, timeout=10)  # fmt: skip
    assert env.outcomes[-1].complaints == ((qid, 0),)
    ev = await rows(env.db, "SELECT queue_id, recipient FROM events WHERE type='complaint'")
    assert ev == [(qid, "reader@remote.example")]
    assert (await env.store.check("reader@remote.example", "shop.example")) is not None
    assert await env.store.check("reader@remote.example", "other-brand.example") is None
    info = await env.spool.show(qid)
    assert info is not None and info.recipients[0].state == "delivered"


async def test_unattributed_bounce_changes_nothing(env: Env) -> None:
    await send_raw(dsn("victim@remote.example"), sender="", recipients=[COMPLAINTS],
                          hostname="127.0.0.1", port=env.port, start_tls=False,
                          timeout=10)  # fmt: skip
    assert env.outcomes[-1].unattributed == ("victim@remote.example",)
    assert await env.store.check("victim@remote.example", None) is None


async def test_autoreply_is_accepted_and_ignored(env: Env) -> None:
    qid = await queued_message(env.spool, ["away@remote.example"])
    await send_raw((CORPUS / "sisimai/rfc3834-04.eml").read_bytes(), sender="",
                          recipients=[env.verp.address(qid, 0)], hostname="127.0.0.1",
                          port=env.port, start_tls=False, timeout=10)  # fmt: skip
    assert env.outcomes[-1].kind == "not-a-bounce"
    info = await env.spool.show(qid)
    assert info is not None and info.recipients[0].state == "delivered"


async def test_handler_failure_is_451_without_details(db: Database) -> None:
    cfg = inbound_cfg()
    verp = Verp(b"k" * 32, "b", BOUNCE_DOMAIN)

    async def broken(raw: bytes, rcpts: Sequence[str]) -> Outcome:
        raise RuntimeError("secret internals /var/lib/x")

    server = InboundServer(cfg, InboundHandler(cfg, verp, broken), SystemClock(), "mx.test")
    _, port = await server.start("127.0.0.1", 0)
    try:
        with pytest.raises(aiosmtplib.SMTPDataError) as exc:
            await send_raw(b"Subject: x\r\n\r\nx\r\n", sender="",
                                  recipients=[verp.address("q", 0)], hostname="127.0.0.1",
                                  port=port, start_tls=False, timeout=10)  # fmt: skip
        assert exc.value.code == 451 and "4.3.0" in exc.value.message
        assert "secret" not in exc.value.message and "RuntimeError" not in exc.value.message
    finally:
        await server.stop()


async def test_size_cap_and_per_ip_connection_cap(db: Database) -> None:
    env = await make_env(db, inbound_cfg(max_message_size=2000, max_connections_per_ip=2))
    try:
        with pytest.raises(aiosmtplib.SMTPResponseException) as exc:
            await send_raw(b"Subject: x\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100, sender="",
                                  recipients=[env.verp.address("q", 0)], hostname="127.0.0.1",
                                  port=env.port, start_tls=False, timeout=10)  # fmt: skip
        assert exc.value.code == 552
        held = [await client(env.port), await client(env.port)]
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.startswith(b"421 4.7.0")
        writer.close()
        for c in held:
            await c.quit()
        # Slots are given back when sessions end.
        deadline = time.monotonic() + 5
        while env.server.limiter.total and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        c = await client(env.port)
        await c.quit()
    finally:
        await env.server.stop()


async def test_starttls_offered_with_a_certificate(db: Database, tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    env = await make_env(db, tls=server_ctx)
    try:
        c = aiosmtplib.SMTP(hostname="127.0.0.1", port=env.port, timeout=10, start_tls=False,
                            tls_context=client_ctx)  # fmt: skip
        await c.connect()
        await c.ehlo()
        assert "starttls" in c.esmtp_extensions
        await c.starttls()
        await c.ehlo()
        assert "auth" not in c.esmtp_extensions
        await c.quit()
    finally:
        await env.server.stop()


def _deep(depth: int) -> bytes:
    head = b"From: MAILER-DAEMON@x.example\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
    head += b"X-Big: " + (b"A" * 78 + b"\r\n ") * 13_000 + b"end\r\n"  # a 1 MB header
    parts = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    body = b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\n\xff\xfe<a@b.example>\r\n"
    return head + parts + body


async def test_hostile_bounce_does_not_stall_other_sessions(db: Database) -> None:
    cfg = inbound_cfg(
        max_message_size=4 * 1024 * 1024, connection_rate_per_ip=1000.0, max_connections_per_ip=50
    )
    env = await make_env(db, cfg)
    try:
        hostile = [_deep(1000) for _ in range(3)]

        async def send_hostile(raw: bytes) -> None:
            await send_raw(raw, sender="", recipients=[env.verp.address("q", 0)],
                                  hostname="127.0.0.1", port=env.port, start_tls=False,
                                  timeout=60)  # fmt: skip

        tasks = [asyncio.create_task(send_hostile(h)) for h in hostile]
        worst = 0.0
        measured = 0
        while measured < 5 or not all(t.done() for t in tasks):
            measured += 1
            start = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
            greeting = await asyncio.wait_for(reader.readline(), 5)
            worst = max(worst, time.monotonic() - start)
            assert greeting.startswith(b"220")
            writer.write(b"QUIT\r\n")
            await writer.drain()
            writer.close()
            await asyncio.sleep(0.02)
        for t in tasks:
            await t  # every hostile message was answered (250), none crashed the server
        assert worst < 1.0, worst
        assert len(env.outcomes) == 3  # each was parsed (within limits) and answered
    finally:
        await env.server.stop()


class _Sink:
    """A remote MX that accepts and remembers the envelope sender (our VERP address)."""

    def __init__(self) -> None:
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 2.0.0 queued"


async def test_delivered_then_async_dsn_end_to_end(db: Database) -> None:
    """Deliver to a sink with the real agent, then the sink bounces to the VERP path."""
    env = await make_env(db)
    sink = _Sink()
    loop = asyncio.get_running_loop()
    sink_server = await loop.create_server(lambda: AioSMTP(sink, hostname="sink.test"),
                                           "127.0.0.1", 0)  # fmt: skip
    sink_port = sink_server.sockets[0].getsockname()[1]
    agent = DeliveryAgent(DnsResolver(SystemClock(), nameservers=["127.0.0.1:9"], timeout=1.0),
                          SystemClock(), hostname="mta.test", return_path=env.verp)  # fmt: skip
    try:
        qid = new_queue_id(time.time())
        rcpts = ["keep@remote.example", "gone@remote.example"]
        await env.spool.enqueue(
            PreparedMessage(qid, "app@shop.example", tuple(PreparedRecipient(r) for r in rcpts),
                            b"Message-ID: <e2e@shop.example>\r\nSubject: hi\r\n\r\nhello\r\n",
                            "app", "127.0.0.1", time.time(), message_id="e2e@shop.example")
        )  # fmt: skip
        job = DeliveryJob(qid, "app@shop.example", "remote.example",
                          tuple(JobRecipient(i, r, 0) for i, r in enumerate(rcpts)),
                          b"Message-ID: <e2e@shop.example>\r\nSubject: hi\r\n\r\nhello\r\n",
                          time.time(), time.time() + 60)  # fmt: skip
        policy = RoutePolicy(tls="none", relay_host=f"127.0.0.1:{sink_port}", connect_timeout=5,
                             command_timeout=5, data_timeout=5)  # fmt: skip
        report = await agent.deliver(job, policy)
        assert all(r.disposition is Disposition.DELIVERED for r in report.results)
        await env.spool.record([RecipientUpdate(qid, r.idx, RecipientState.DELIVERED, "250 ok")
                                for r in report.results])  # fmt: skip
        # The return path the remote saw for "gone" is its VERP address.
        paths = {rcpt[0]: frm for frm, rcpt in sink.envelopes}
        verp_gone = paths["gone@remote.example"]
        assert env.verp.parse(verp_gone) == (qid, 1)
        # Later, the remote's MTA sends a DSN back over SMTP.
        await send_raw(dsn("gone@remote.example", message_id="e2e@shop.example"),
                              sender="", recipients=[verp_gone], hostname="127.0.0.1",
                              port=env.port, start_tls=False, timeout=10)  # fmt: skip
        info = await env.spool.show(qid)
        assert info is not None
        assert {r.address: r.state for r in info.recipients} == {
            "keep@remote.example": "delivered", "gone@remote.example": "bounced"}  # fmt: skip
        ev = await rows(env.db, "SELECT queue_id, recipient FROM events WHERE type='bounced'")
        assert ev == [(qid, "gone@remote.example")]
        assert await env.store.check("gone@remote.example", "shop.example") is not None
        # A forged bounce (bad signature) for "keep" is refused at RCPT.
        genuine = paths["keep@remote.example"]
        last = genuine[-len(BOUNCE_DOMAIN) - 2]
        flipped = "y" if last.lower() == "x" else "x"  # always a different token
        forged = genuine[: -len(BOUNCE_DOMAIN) - 2] + flipped + "@" + BOUNCE_DOMAIN
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await send_raw(dsn("keep@remote.example"), sender="", recipients=[forged],
                                  hostname="127.0.0.1", port=env.port, start_tls=False,
                                  timeout=10)  # fmt: skip
        assert await env.store.check("keep@remote.example", None) is None
    finally:
        await agent.aclose()
        sink_server.close()
        await env.server.stop()
