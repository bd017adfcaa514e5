"""The mailto: List-Unsubscribe URI works: mail to it, with the token, unsubscribes."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import smtplib
import sqlite3
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from mtaserver.tracking.mailto import find_token
from tests.support.daemon import Daemon, TestConfig, free_port
from tests.support.mxsink import SinkGroup, wait_for
from tests.tracking.helpers import codec

TOKEN = codec().unsubscribe_token("QUEUEID000000001", 3)


@pytest.mark.parametrize(
    "raw",
    [
        f"Subject: unsubscribe-{TOKEN}\r\n\r\n".encode(),
        f"Subject: Re: unsubscribe-{TOKEN}\r\nFrom: a@x\r\n\r\nbody\r\n".encode(),
        f"From: a@x\nSubject: Fwd: unsubscribe-{TOKEN}\n\n".encode(),  # bare LF
        # RFC 2047, as some clients encode a long subject
        b"Subject: =?utf-8?q?unsubscribe-" + TOKEN.replace("_", "=5F").encode() + b"?=\r\n\r\n",
        f"Subject: Unsubscribe\r\n\r\nPlease unsubscribe-{TOKEN} me\r\n".encode(),  # body
    ],
)
def test_the_token_is_found_in_subject_or_body(raw: bytes) -> None:
    assert find_token(raw) == TOKEN


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: unsubscribe\r\n\r\nplease stop\r\n",
        b"Subject: unsubscribe-short\r\n\r\n",
        b"Subject: =?bogus?x?zz?=\r\n\r\n",
        b"",
        # beyond the part of the body that is read
        b"Subject: x\r\n\r\n" + b"a" * 9000 + f" unsubscribe-{TOKEN}".encode(),
    ],
)
def test_no_token(raw: bytes) -> None:
    assert find_token(raw) is None


def _mailto(msg: EmailMessage) -> tuple[str, str]:
    uris = re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))
    (mailto,) = [u for u in uris if u.startswith("mailto:")]
    parts = urlsplit(mailto)
    return unquote(parts.path), parse_qs(parts.query)["subject"][0]


async def test_mail_to_the_unsubscribe_address_suppresses_the_recipient(tmp_path: Path) -> None:
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        inbound_port, web_port = free_port(), free_port()
        cfg = TestConfig(tmp_path, tls=False)
        cfg.set("delivery", relay_host=f"127.0.0.2:{sinks.port}", tls="none")
        cfg.set("shaping", poll_interval="20ms")
        cfg.set("inbound", listen=f"127.0.0.1:{inbound_port}", bounce_domain="bounces.test")
        cfg.set("tracking", listen=f"127.0.0.1:{web_port}", base_url="https://t.example.com",
                unsubscribe_mailto="unsubscribe@bounces.test", unsubscribe=True)  # fmt: skip
        host, smtp_port = cfg.address("submission", "listen_plain")
        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        try:
            body = (
                b"From: news@example.com\r\nTo: list\r\nSubject: News\r\n"
                b"Message-ID: <n1@example.com>\r\n\r\nHello\r\n"
            )

            def submit() -> None:
                with smtplib.SMTP(host, smtp_port, timeout=30) as client:
                    client.sendmail("news@example.com", ["a@dest.test", "b@dest.test"], body)

            await asyncio.to_thread(submit)
            await wait_for(lambda: len(sink.messages) == 2, 30)
            copies = {}
            for m in sink.messages:
                msg = email.message_from_bytes(m.data, policy=email.policy.default)
                assert isinstance(msg, EmailMessage)
                copies[m.rcpt_tos[0]] = _mailto(msg)
            to, subject = copies["b@dest.test"]
            assert to == "unsubscribe@bounces.test" and subject.startswith("unsubscribe-")

            def mail(subject: str) -> tuple[int, bytes]:
                with smtplib.SMTP("127.0.0.1", inbound_port, timeout=30) as client:
                    client.ehlo("mail.dest.test")
                    client.mail("b@dest.test")
                    code, _ = client.rcpt(to)
                    assert code == 250
                    return client.data(
                        f"From: b@dest.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n".encode()
                    )

            # A forged token or none at all: refused with the reason, nothing changes.
            code, reply = await asyncio.to_thread(mail, subject[:-3] + "AAA")
            assert (code, reply) == (550, b"5.7.1 Unsubscribe token not valid here")
            code, reply = await asyncio.to_thread(mail, "please unsubscribe me")
            assert code == 550 and b"No unsubscribe-<token>" in reply
            code, reply = await asyncio.to_thread(mail, subject)
            assert (code, reply) == (250, b"2.0.0 Unsubscribed")

            with sqlite3.connect(cfg.database) as conn:
                rows = conn.execute("SELECT address, scope, reason, source FROM suppressions")
                assert rows.fetchall() == [("b@dest.test", "example.com", "unsubscribe",
                                            "tracking")]  # fmt: skip
                events = conn.execute(
                    "SELECT recipient, data ->> 'via', data ->> 'client_ip' FROM events "
                    "WHERE type = 'unsubscribe'"
                ).fetchall()
            assert events == [("b@dest.test", "mail", "127.0.0.0")]
            out = await asyncio.to_thread(daemon.cli, "stats", "--json")
            assert '"unsubscribes": 1' in out.stdout
        finally:
            await asyncio.to_thread(daemon.stop)
        assert "event=unsubscribed" in daemon.log() and "via=mail" in daemon.log()
