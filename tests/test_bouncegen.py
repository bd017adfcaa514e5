"""The DSN builder: parsed back with Python's email package and checked field by field."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime

from mtaserver.bouncegen import DsnRecipient, DsnRequest, build_dsn, looks_like_dsn

ORIGINAL = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: bob@dest.test, carol@dest.test\r\n"
    b"Subject: Quarterly report\r\n"
    b"Message-ID: <orig-1@sender.test>\r\n"
    b"\r\n"
    b"SECRET BODY TEXT\r\n"
)
ARRIVAL = 1_800_000_000.0
NOW = ARRIVAL + 3600


def request(**kw: object) -> DsnRequest:
    base: dict[str, object] = dict(
        queue_id="Q1abc",
        sender="alice@sender.test",
        original=ORIGINAL,
        arrival=ARRIVAL,
        recipients=(
            DsnRecipient(
                "bob@dest.test",
                "5.1.1",
                "550 5.1.1 <bob@dest.test>: Recipient address rejected: User unknown in "
                "virtual mailbox table, and this diagnostic is long enough to need folding",
                remote_mta="mx1.dest.test",
                last_attempt=NOW - 10,
            ),
            DsnRecipient(
                "carol@dest.test",
                "4.4.7",
                "delivery time expired",
                diagnostic_type="X-Mtaserver",
                last_attempt=NOW - 20,
            ),
        ),
    )
    base.update(kw)
    return DsnRequest(**base)  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_failed_dsn_fields() -> None:
    dsn = build_dsn(request(), hostname="mta.sender.test", now=NOW)
    assert dsn is not None
    assert dsn.recipient == "alice@sender.test"
    assert dsn.data.count(b"\n") == dsn.data.count(b"\r\n")  # CRLF only
    assert max(len(line) for line in dsn.data.split(b"\r\n")) <= 998
    msg = parse(dsn.data)
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mta.sender.test>"
    assert msg["To"].addresses[0].addr_spec == "alice@sender.test"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"] == f"<{dsn.message_id}>"
    assert msg["In-Reply-To"] == "<orig-1@sender.test>"
    assert parsedate_to_datetime(msg["Date"]).timestamp() == NOW
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"

    human, report, headers = msg.get_payload()  # type: ignore[misc]
    assert human.get_content_type() == "text/plain"
    text = human.get_content()
    assert "could not" in text and "<bob@dest.test>: host mx1.dest.test said: 550 5.1.1" in text

    assert report.get_content_type() == "message/delivery-status"
    per_message, bob, carol = report.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mta.sender.test"
    assert per_message["X-Mtaserver-Queue-ID"] == "Q1abc"
    assert parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == ARRIVAL

    assert bob["Final-Recipient"] == "rfc822; bob@dest.test"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx1.dest.test"
    diag = " ".join(str(bob["Diagnostic-Code"]).split())
    assert diag.startswith("smtp; 550 5.1.1 <bob@dest.test>: Recipient address rejected")
    assert diag.endswith("need folding")
    assert parsedate_to_datetime(bob["Last-Attempt-Date"]).timestamp() == NOW - 10

    assert carol["Final-Recipient"] == "rfc822; carol@dest.test"
    assert carol["Action"] == "failed"
    assert carol["Status"] == "4.4.7"
    assert carol["Remote-MTA"] is None
    assert carol["Diagnostic-Code"] == "X-Mtaserver; delivery time expired"

    assert headers.get_content_type() == "text/rfc822-headers"
    orig = headers.get_payload(decode=True)
    assert orig == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert b"SECRET BODY TEXT" not in dsn.data  # headers only, never the body


def test_delayed_warning_variant() -> None:
    until = ARRIVAL + 5 * 86400
    req = request(
        recipients=(
            DsnRecipient(
                "bob@dest.test",
                "4.2.1",
                "451 4.2.1 mailbox busy",
                remote_mta="mx1.dest.test",
                last_attempt=NOW,
                will_retry_until=until,
            ),
        )
    )
    dsn = build_dsn(req, hostname="mta.sender.test", now=NOW, delayed=True)
    assert dsn is not None
    msg = parse(dsn.data)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    human, report, _ = msg.get_payload()  # type: ignore[misc]
    assert "WARNING ONLY" in human.get_content()
    _, bob = report.get_payload()
    assert bob["Action"] == "delayed"
    assert bob["Status"] == "4.2.1"
    assert parsedate_to_datetime(bob["Will-Retry-Until"]).timestamp() == until
    failed = build_dsn(req, hostname="mta.sender.test", now=NOW)
    assert failed is not None and failed.message_id != dsn.message_id


def test_never_to_the_null_sender() -> None:
    assert build_dsn(request(sender=""), hostname="h", now=NOW) is None
    assert build_dsn(request(sender="<>"), hostname="h", now=NOW) is None


def test_never_about_a_dsn() -> None:
    assert build_dsn(request(is_dsn=True), hostname="h", now=NOW) is None
    first = build_dsn(request(), hostname="mta.sender.test", now=NOW)
    assert first is not None
    assert looks_like_dsn(first.data)
    # a DSN that bounced back to us is recognised from its content alone
    assert build_dsn(request(original=first.data), hostname="h", now=NOW) is None
    assert not looks_like_dsn(ORIGINAL)
    mdn = ORIGINAL.replace(
        b"Subject:",
        b"Content-Type: multipart/report;\r\n report-type=disposition-notification\r\nSubject:",
    )
    assert not looks_like_dsn(mdn)


def test_injection_and_odd_inputs_are_contained() -> None:
    evil = DsnRecipient(
        "bob@dest.test\r\nBcc: victim@x.test",
        "5.0.0",
        "550 bad\r\nX-Injected: yes",
        remote_mta="mx\r\nX-Also: no",
    )
    lf_original = b"Subject: lf only\nFrom: a@b\n\nbody\n"
    dsn = build_dsn(
        request(recipients=(evil,), original=lf_original), hostname="mta.sender.test", now=NOW
    )
    assert dsn is not None
    msg = parse(dsn.data)
    _, report, headers = msg.get_payload()  # type: ignore[misc]
    for part in report.get_payload():
        assert part["X-Injected"] is None and part["Bcc"] is None and part["X-Also"] is None
    assert msg["Bcc"] is None
    assert headers.get_payload(decode=True) == b"Subject: lf only\r\nFrom: a@b\r\n"


def test_non_ascii_headers_and_addresses() -> None:
    original = "Subject: Grüße\r\nFrom: jörg@sender.test\r\n\r\nx\r\n".encode()
    req = request(
        original=original, recipients=(DsnRecipient("jürgen@dest.test", "5.1.1", "550 no"),)
    )
    dsn = build_dsn(req, hostname="mta.sender.test", now=NOW)
    assert dsn is not None
    msg: Message = email.message_from_bytes(dsn.data)
    assert msg["Content-Transfer-Encoding"] == "8bit"
    report = msg.get_payload()[1]  # type: ignore[index]
    rcpt = report.get_payload()[1]
    assert b"Final-Recipient: utf-8; j\xc3\xbcrgen@dest.test" in dsn.data
    assert str(rcpt["Status"]) == "5.1.1"


def test_adapter_for_the_scheduler_protocol() -> None:
    from dataclasses import dataclass

    from mtaserver.bouncegen import DsnBuilder
    from mtaserver.model import SmtpReply

    @dataclass(frozen=True, slots=True)
    class Rcpt:  # the scheduler's DsnRecipient shape
        address: str
        action: str
        status: str
        reply: SmtpReply
        remote_mta: str | None

    @dataclass(frozen=True, slots=True)
    class Req:  # the scheduler's DsnRequest shape
        queue_id: str
        sender: str
        original: bytes
        received_at: float
        recipients: tuple[Rcpt, ...]
        now: float

    builder = DsnBuilder("mta.sender.test")
    req = Req(
        "Q9",
        "alice@sender.test",
        ORIGINAL,
        ARRIVAL,
        (
            Rcpt(
                "bob@dest.test", "failed", "5.1.1", SmtpReply(550, "no such user", "5.1.1"), "mx1"
            ),
            Rcpt("carol@dest.test", "failed", "4.4.7", SmtpReply(451, "expired", "4.4.7"), None),
            Rcpt("dan@dest.test", "delayed", "4.2.2", SmtpReply(452, "full", "4.2.2"), "mx1"),
        ),
        NOW,
    )
    msg = parse(builder.build(req))
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    _, bob, carol, dan = msg.get_payload()[1].get_payload()  # type: ignore[index]
    assert (bob["Action"], bob["Status"], bob["Diagnostic-Code"]) == (
        "failed",
        "5.1.1",
        "smtp; 550 5.1.1 no such user",
    )
    assert carol["Diagnostic-Code"] == "X-Mtaserver; 451 4.4.7 expired"
    assert dan["Action"] == "delayed"
    assert builder.build(Req("Q9", "", ORIGINAL, ARRIVAL, req.recipients, NOW)) == b""
