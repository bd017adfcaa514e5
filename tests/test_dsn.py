"""parse_bounce on constructed and hostile input: RFC 3464 details, limits, no crashes."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtaserver.dsn import ParseLimits, ParseTimeout, parse_bounce, parse_bounce_async

DSN = b"""From: MAILER-DAEMON@mx.example.net
To: bounces+r123-0-abc@bounce.example.com
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

<a@example.org>: host mx.example.org[192.0.2.1] said: 550 5.1.1 no such user

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; a@example.org
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.org
Diagnostic-Code: smtp; 550 5.1.1 <a@example.org>: Recipient address rejected: User unknown

Final-Recipient: rfc822; b@example.org
Action: delayed
Status: 4.2.2
Diagnostic-Code: smtp; 452 4.2.2 Mailbox full

Final-Recipient: rfc822; c@example.org
Action: delivered
Status: 2.0.0

--B
Content-Type: text/rfc822-headers

Message-ID: <orig-1@example.com>
From: app@example.com

--B--
"""


def test_rfc3464_report() -> None:
    rep = parse_bounce(DSN)
    assert rep is not None and not rep.is_complaint
    assert rep.reporting_mta == "mx.example.net"
    assert rep.original_message_id == "orig-1@example.com"
    a, b, c = rep.recipients
    assert (a.recipient, a.action, a.status, a.reply_code, a.kind.value, a.category) == (
        "a@example.org",
        "failed",
        "5.1.1",
        550,
        "hard",
        "unknown-recipient",
    )
    assert a.remote_mta == "mx.example.org"
    assert "User unknown" in a.diagnostic
    assert (b.action, b.status, b.kind.value, b.category) == (
        "delayed",
        "4.2.2",
        "soft",
        "mailbox-full",
    )
    assert c.action == "delivered"


def test_not_a_bounce() -> None:
    assert parse_bounce(b"From: alice@example.org\nSubject: hello\n\nhi there\n") is None
    assert parse_bounce(b"") is None
    assert parse_bounce(b"\x00\xff\xfe garbage") is None


def test_autoreply_is_not_a_bounce() -> None:
    msg = (
        b"From: bob@example.org\nSubject: Automatic reply: your mail\n"
        b"Auto-Submitted: auto-replied\n\nI am out of the office until Monday.\n"
    )
    assert parse_bounce(msg) is None


def _nested(depth: int) -> bytes:
    head = b"From: MAILER-DAEMON@x.example\nSubject: Undelivered Mail\nMIME-Version: 1.0\n"
    parts = []
    for i in range(depth):
        parts.append(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i))
    body = b"Content-Type: text/plain\n\n<deep@example.org>: user unknown\n"
    tail = b"".join(b"\n--b%d--\n" % i for i in reversed(range(depth)))
    return head + b"".join(parts) + body + tail


@pytest.mark.parametrize(
    "raw",
    [
        _nested(1000),
        b"From: MAILER-DAEMON@x.example\nSubject: "
        + b"=?utf-8?q?"
        + b"a" * 1_000_000
        + b"?=\n\nx\n",
        b"From: MAILER-DAEMON@x.example\nX-Big: " + b"A" * 1_048_576 + b"\n\n<a@b.example>: no\n",
        b"From: MAILER-DAEMON@x.example\n" + b"X-H: v\n" * 100_000 + b"\nbody\n",
        b"From: MAILER-DAEMON@x.example\nContent-Type: text/plain; charset=no-such-charset\n"
        b"Content-Transfer-Encoding: base64\n\n!!!not base64!!!\n",
        b"From: MAILER-DAEMON@x.example\nContent-Type: message/delivery-status; charset=x-bad\n\n"
        b"Final-Recipient: rfc822; \xff\xfe@\x00\nAction: failed\nStatus: 9.9.9.9\n",
        b"From: MAILER-DAEMON@x.example\nSubject: Undeliverable\n\n" + b"(" * 200_000 + b"\n",
        b"Content-Type: multipart/report; boundary=x\n\n" + b"--x\n" * 50_000,
    ],
    ids=[
        "depth-1000",
        "encoded-1MB-subject",
        "1MB-header",
        "100k-headers",
        "bad-charset",
        "bad-dsn-bytes",
        "parens",
        "many-boundaries",
    ],
)
def test_hostile_input_is_bounded(raw: bytes) -> None:
    # CPU time of this thread, not wall time: a busy machine must not fail the test.
    start = time.thread_time()
    parse_bounce(raw)  # must not raise
    assert time.thread_time() - start < 5.0


def test_deep_nesting_still_finds_the_recipient_within_limits() -> None:
    rep = parse_bounce(_nested(5))
    assert rep is not None and [r.recipient for r in rep.recipients] == ["deep@example.org"]
    # Past the depth limit the parser stops walking instead of recursing: nothing found.
    assert parse_bounce(_nested(50), ParseLimits(max_depth=3)) is None


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000))
def test_never_raises_on_random_bytes(data: bytes) -> None:
    parse_bounce(b"From: MAILER-DAEMON@x.example\nSubject: failure notice\n\n" + data)
    parse_bounce(data)


async def test_async_wrapper_keeps_the_loop_responsive() -> None:
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        heavy = b"From: MAILER-DAEMON@x.example\n" + b"X-H: v\n" * 100_000 + b"\n" + _nested(1000)
        for raw in (heavy, _nested(1000), heavy):
            await parse_bounce_async(raw, timeout=30)
        got = await parse_bounce_async(DSN)
        assert got is not None and len(got.recipients) == 3
    finally:
        task.cancel()
    total = time.monotonic() - started
    assert len(gaps) > 3
    # Parsed on the loop, one gap would span a whole heavy parse (~40% of the total); off
    # the loop the ticker keeps ticking. Scaled by the total so a loaded machine still passes.
    assert max(gaps) < max(0.5, total / 5), (max(gaps), total)


async def test_async_wrapper_times_out() -> None:
    with pytest.raises(ParseTimeout):
        await parse_bounce_async(
            b"From: MAILER-DAEMON@x\n\n" + b"<a@b.example>: x\n" * 200_000, timeout=0.0001
        )
