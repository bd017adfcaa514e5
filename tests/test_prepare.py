"""Cleanup: added/removed fields, every other byte kept, caps; and strict addresses."""

from __future__ import annotations

import pytest

from mtaserver.model import Submission
from mtaserver.prepare import PrepareError, cleanup, mime_depth, sanitize_helo, split_header
from mtaserver.submission.address import AddressError, bad_argument, parse_mailbox

NOW = 1_800_000_000.0


def sub(data: bytes, **kw: object) -> Submission:
    base: dict[str, object] = dict(
        sender="alice@example.com", recipients=("x@dest.example",), data=data,
        client_ip="192.0.2.10", helo="client.test", user="alice", tls_version="TLSv1.3",
        listener="submission", received_at=NOW,
    )  # fmt: skip
    base.update(kw)
    return Submission(**base)  # type: ignore[arg-type]


def test_adds_message_id_date_received_and_keeps_the_rest() -> None:
    original = (
        b"From: Alice <alice@example.com>\r\n"
        b"Subject: =?UTF-8?Q?=0D=0ABcc:_x@evil.example?=\r\n"
        b"X-Weird:   spaced   \r\n\tfolded\r\n"
        b"\r\n"
        b"body line\r\n.leading dot kept\r\n"
    )
    out = cleanup(sub(original), queue_id="Q1", hostname="mta.test")
    data = out.data
    assert data.startswith(
        b"Received: from client.test ([192.0.2.10])\r\n\tby mta.test (mtaserver)"
    )
    assert b"with ESMTPSA (TLSv1.3) id Q1\r\n\tfor <x@dest.example>;" in data
    assert out.message_id == "Q1@mta.test"
    assert b"\r\nMessage-ID: <Q1@mta.test>\r\n" in data
    assert b"\r\nDate: Fri, 15 Jan 2027 08:00:00 +0000\r\n" in data
    # every original byte that we did not change is still there, in order
    kept = original.split(b"\r\n\r\n", 1)
    assert kept[0] + b"\r\n" in data
    assert data.endswith(b"\r\n\r\n" + kept[1])
    assert data.count(b"\r\nBcc:") == 0


def test_existing_message_id_and_date_kept_bcc_and_controls_removed() -> None:
    original = (
        b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"Message-ID: <abc@app.example>\r\n"
        b"Bcc: hidden@dest.example,\r\n other@dest.example\r\n"
        b"X-Mtaserver-Track: opens, clicks\r\n"
        b"x-mtaserver-campaign: spring-sale\r\n"
        b"Resent-Bcc: hidden2@dest.example\r\n"
        b"\r\nbody\r\n"
    )
    out = cleanup(sub(original, recipients=("a@d.example", "b@d.example")), queue_id="Q2",
                  hostname="mta.test")  # fmt: skip
    assert out.message_id == "abc@app.example"
    assert out.track == "opens, clicks"
    assert out.campaign == "spring-sale"
    assert b"hidden" not in out.data and b"other@" not in out.data
    assert b"X-Mtaserver" not in out.data and b"x-mtaserver" not in out.data
    assert out.data.count(b"Message-ID:") == 1 and out.data.count(b"Date:") == 1
    assert b"for <" not in out.data  # several recipients: never list them


def test_header_only_and_body_only_messages() -> None:
    out = cleanup(sub(b"Subject: only header\r\n"), queue_id="Q", hostname="h.test")
    assert out.data.endswith(
        b"Subject: only header\r\nMessage-ID: <Q@h.test>\r\n"
        b"Date: Fri, 15 Jan 2027 08:00:00 +0000\r\n"
    )
    out = cleanup(sub(b"no header here\r\n"), queue_id="Q", hostname="h.test")
    assert out.data.endswith(b"\r\n\r\nno header here\r\n")


def test_helo_sanitized() -> None:
    assert sanitize_helo("evil (by x)\r\nBcc: y") == "evilbyxBcc:y"
    assert sanitize_helo("") == "unknown"
    assert sanitize_helo("[192.0.2.1]") == "[192.0.2.1]"


def test_header_cap_and_mime_depth() -> None:
    with pytest.raises(PrepareError) as exc:
        split_header(b"X: " + b"y" * 2000 + b"\r\n\r\n", 1024)
    assert exc.value.reply.startswith("552 5.3.4")
    deep = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + b"".join(
        b'--b%d\r\nContent-Type: multipart/alternative; boundary="b%d"\r\n\r\n' % (i, i + 1)
        for i in range(1000)
    )
    assert mime_depth(split_header(deep), 50) == 51
    with pytest.raises(PrepareError) as exc:
        cleanup(sub(deep), queue_id="Q", hostname="h.test")
    assert exc.value.reply.startswith("554 5.6.0")
    flat = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n" + b"--x\r\n\r\npart\r\n" * 200
    assert mime_depth(split_header(flat + b"--x--\r\n"), 50) == 1


@pytest.mark.parametrize(
    ("addr", "routing"),
    [
        ("x%evil.example@dest.example", True),
        ("evil.example!x@dest.example", True),
        ('"x@evil.example"@dest.example', True),
        ("@relay.example:x@dest.example", True),
        ("x@[192.0.2.1]", True),
        ("x@dest.example@evil.example", True),
        ("evil.example!x", True),
        ("plain", False),
        ("x@localhost", False),
        ("x..y@dest.example", False),
        ("x@-bad.example", False),
        ("x@dest.123", False),
        ("", False),
    ],
)
def test_parse_mailbox_refuses(addr: str, routing: bool) -> None:
    with pytest.raises(AddressError) as exc:
        parse_mailbox(addr)
    assert exc.value.routing is routing


def test_parse_mailbox_accepts() -> None:
    assert str(parse_mailbox("First.Last+tag@Dest.Example")) == "First.Last+tag@dest.example"
    assert parse_mailbox('"john doe"@dest.example').local == '"john doe"'
    assert parse_mailbox("jos\u00e9@d\u00e9st.example").domain == "d\u00e9st.example"
    assert bad_argument("ok arg") is None
    assert bad_argument("a\tb") is not None
    assert bad_argument("a\udcffb") is not None
