"""Input hygiene: SMTP smuggling, bare CR/LF/NUL, command arguments, STARTTLS injection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.submission import RawClient, plain_auth, running

SMUGGLED = (
    b"MAIL FROM:<alice@example.com>\r\n"
    b"RCPT TO:<smuggled@dest.example>\r\n"
    b"DATA\r\n"
    b"From: alice@example.com\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"
)
VARIANTS = [
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r.\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\n\x00.\x00\n",
]


async def authed(env, *, ehlo: bool = True) -> RawClient:  # type: ignore[no-untyped-def]
    c = await RawClient.connect(env.port("submissions"), env.client_context())
    await c.reply()
    if ehlo:
        await c.cmd("EHLO client.test")
        assert (await c.cmd(f"AUTH PLAIN {plain_auth()}")).startswith("235")
    return c


@pytest.mark.parametrize("bare_newline", ["normalize", "reject"])
@pytest.mark.parametrize("variant", VARIANTS, ids=[repr(v) for v in VARIANTS])
async def test_smuggling_variants_produce_no_second_message(
    tmp_path: Path, variant: bytes, bare_newline: str
) -> None:
    async with running(tmp_path, bare_newline=bare_newline) as env:
        c = await authed(env)
        await c.cmd("MAIL FROM:<alice@example.com>")
        await c.cmd("RCPT TO:<first@dest.example>")
        assert (await c.cmd("DATA")).startswith("354")
        await c.send(
            b"From: alice@example.com\r\nSubject: first\r\n\r\nbody" + variant + SMUGGLED
            + b"\r\n.\r\n"
        )  # fmt: skip
        first = await c.reply()
        assert first[:3] in ("250", "550"), first
        # exactly one reply for the whole DATA: nothing inside ran as a command
        assert (await c.cmd("NOOP")).startswith("250 2.0.0")
        assert (await c.cmd("QUIT")).startswith("221")
        await c.close()
        rows = env.messages()
        assert len(rows) <= 1
        for row in rows:
            assert env.recipients(row["id"]) == ["first@dest.example"]
            body = bytes(row["body"])
            assert b"\r\n.\r\n" not in body.replace(b"\r\n.\r\nMAIL", b"")
            assert b"\x00" not in body
            assert body.count(b"\r") == body.count(b"\r\n") == body.count(b"\n")


async def test_bare_lf_normalized_by_default(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        c = await authed(env)
        await c.cmd("MAIL FROM:<alice@example.com>")
        await c.cmd("RCPT TO:<x@dest.example>")
        await c.cmd("DATA")
        reply = await c.cmd(b"From: alice@example.com\nSubject: lf\r\n\r\none\ntwo\r\n.")
        assert reply.startswith("250")
        await c.close()
        body = bytes(env.messages()[0]["body"])
        assert b"Subject: lf\r\n" in body and b"one\r\ntwo\r\n" in body
        assert body.count(b"\n") == body.count(b"\r\n")


@pytest.mark.parametrize(
    ("content", "mode"),
    [
        (b"From: alice@example.com\r\n\r\nbare\nlf\r\n", "reject"),
        (b"From: alice@example.com\r\n\r\nbare\rcr\r\n", "normalize"),
        (b"From: alice@example.com\r\n\r\nnul\x00byte\r\n", "normalize"),
    ],
)
async def test_bare_cr_nul_and_rejected_lf_answer_550_560(
    tmp_path: Path, content: bytes, mode: str
) -> None:
    async with running(tmp_path, bare_newline=mode) as env:
        c = await authed(env)
        await c.cmd("MAIL FROM:<alice@example.com>")
        await c.cmd("RCPT TO:<x@dest.example>")
        await c.cmd("DATA")
        assert (await c.cmd(content + b".")).startswith("550 5.6.0")
        # the session is still usable
        assert (await c.cmd("MAIL FROM:<alice@example.com>")).startswith("250")
        await c.close()
        assert env.messages() == []


@pytest.mark.parametrize(
    "line",
    [
        b"EHLO bad\x01host",
        b"HELO bad\x7fhost",
        b"EHLO bad\xffhost",
        b"MAIL FROM:<alice@example.com>\x0b SIZE=10",
        b"MAIL FROM:<al\x00ice@example.com>",
        b"MAIL FROM:<al\xc3\x28ice@example.com>",
        b"RCPT TO:<x\x1b@dest.example>",
        b"RCPT TO:<x\rRSET@dest.example>",
        b"RCPT TO:<\xed\xa0\x80@dest.example>",
    ],
)
async def test_control_chars_and_invalid_utf8_answer_501(tmp_path: Path, line: bytes) -> None:
    async with running(tmp_path) as env:
        c = await authed(env)
        if line.startswith(b"RCPT"):
            assert (await c.cmd("MAIL FROM:<alice@example.com>")).startswith("250")
        assert (await c.cmd(line)).startswith("501 5.5.4")
        await c.close()


async def test_utf8_addresses_accepted_with_smtputf8(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        c = await authed(env)
        assert (await c.cmd("MAIL FROM:<alice@example.com> SMTPUTF8")).startswith("250")
        assert (await c.cmd("RCPT TO:<jos\u00e9@d\u00e9st.example>".encode())).startswith("250")
        await c.close()


async def test_starttls_command_injection_not_executed(tmp_path: Path) -> None:
    async with running(tmp_path, trusted_networks=["127.0.0.0/8"], require_tls=False) as env:
        c = await RawClient.connect(env.port("submission"))
        await c.reply()
        await c.cmd("EHLO client.test")
        # one packet: STARTTLS plus commands that must die with the plaintext buffer
        await c.send(b"STARTTLS\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<inj@dest.example>\r\n")
        assert (await c.reply()).startswith("220 2.0.0")
        await c.starttls(env.client_context())
        # the first reply after the handshake answers our command, not an injected one
        assert (await c.cmd("NOOP")).startswith("250 2.0.0")
        assert (await c.cmd("RCPT TO:<x@dest.example>")).startswith("503")
        await c.close()


async def test_commands_pipelined_before_starttls_discarded_on_required_listener(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as env:
        c = await RawClient.connect(env.port("submission"))
        await c.reply()
        await c.send(
            b"EHLO client.test\r\nSTARTTLS\r\nAUTH PLAIN " + plain_auth().encode() + b"\r\n"
        )
        assert (await c.reply()).startswith("250")
        assert (await c.reply()).startswith("220 2.0.0")
        await c.starttls(env.client_context())
        # AUTH was discarded: the session has to EHLO first, and is not authenticated
        assert (await c.cmd("MAIL FROM:<alice@example.com>")).startswith("503")
        await c.cmd("EHLO client.test")
        assert (await c.cmd("MAIL FROM:<alice@example.com>")).startswith("250")
        assert (await c.cmd("RCPT TO:<x@dest.example>")).startswith("554 5.7.1")
        await c.close()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
            + b"".join(
                b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
                for i in range(200)
            )
            + b"x\r\n",
            "554 5.6.0",
        ),
        (b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--\r\n", "250"),
        (b"Content-Type: multipart/\r\nContent-Type: text/plain; charset=\xff\r\n\r\nx\r\n", "250"),
        (b'Content-Type: multipart/mixed; boundary="unterminated\r\n\r\n--x\r\n', "250"),
        (b"Content-Transfer-Encoding: base64\r\n\r\n!!!!not base64!!!!\r\n", "250"),
        (b"Subject: =?UTF-8?Q?=0D=0ABcc:_x@evil.example?=\r\n\r\nx\r\n", "250"),
    ],
)
async def test_malformed_mime_never_crashes(tmp_path: Path, body: bytes, expected: str) -> None:
    async with running(tmp_path) as env:
        c = await authed(env)
        await c.cmd("MAIL FROM:<alice@example.com>")
        await c.cmd("RCPT TO:<x@dest.example>")
        await c.cmd("DATA")
        reply = await c.cmd(b"From: alice@example.com\r\n" + body + b".")
        assert reply.startswith(expected), reply
        assert (await c.cmd("NOOP")).startswith("250")
        await c.close()
        if expected == "250":
            stored = bytes(env.messages()[0]["body"])
            head, _, rest = body.partition(b"\r\n\r\n")
            assert head + b"\r\n" in stored  # header fields kept byte for byte
            assert stored.endswith(b"\r\n\r\n" + rest)


def test_clean_data() -> None:
    from mtaserver.submission.protocol import clean_data

    assert clean_data(b"..a\r\nb\r\n..\r\n", normalize=True) == (b".a\r\nb\r\n.\r\n", None)
    assert clean_data(b"a\nb\r\n", normalize=True) == (b"a\r\nb\r\n", None)
    assert clean_data(b"a\nb\r\n", normalize=False)[1] == (
        "550 5.6.0 Bare LF in message content; use CRLF line ends"
    )
    assert clean_data(b"a\rb\r\n", normalize=True)[1].startswith("550 5.6.0 Bare CR")
    assert clean_data(b"a\x00b\r\n", normalize=True)[1].startswith("550 5.6.0 NUL")
    assert clean_data(b"x" * 998 + b"\r\n", normalize=True)[1] is None
    assert clean_data(b"x" * 999 + b"\r\n", normalize=True)[1].startswith("550 5.6.0 Line")
    assert clean_data(b"", normalize=True) == (b"", None)


async def test_large_message_read_in_chunks_arrives_intact(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        c = await authed(env)
        await c.cmd("MAIL FROM:<alice@example.com>")
        await c.cmd("RCPT TO:<x@dest.example>")
        await c.cmd("DATA")
        body = b"".join(b"%07d ...........................................\r\n" % i
                        for i in range(20000))  # fmt: skip
        wire = b"From: alice@example.com\r\n\r\n.starts with a dot\r\n" + body
        stuffed = wire.replace(b"\r\n.", b"\r\n..")
        assert (await c.cmd(stuffed + b".")).startswith("250")
        await c.close()
        stored = bytes(env.messages()[0]["body"])
        assert stored.endswith(b"\r\n\r\n.starts with a dot\r\n" + body)


@pytest.mark.parametrize(
    "pieces",
    [
        [b".\r\n"],  # empty message
        [b".", b"\r", b"\n"],  # empty message, byte by byte
        [b"Subject: one line\r\n.\r\n"],
        [b"Subject: one line\r\n", b".\r\n"],
        [b"Subject: s\r\n\r\nends with a dot.\r\n", b"next.\r\n", b".", b"\r\n"],
        [b"Subject: s\r\n\r\nx\r\n.", b".\r\n", b"\r\n.\r\n"],  # a stuffed dot line first
    ],
)
async def test_end_of_data_found_however_it_is_split(tmp_path: Path, pieces: list[bytes]) -> None:
    async with running(tmp_path, trusted_networks=["127.0.0.0/8"]) as env:
        c = await RawClient.connect(env.port("plain"))
        await c.reply()
        await c.cmd("EHLO client.test")
        await c.cmd("MAIL FROM:<app@example.com>")
        await c.cmd("RCPT TO:<x@dest.example>")
        assert (await c.cmd("DATA")).startswith("354")
        for piece in pieces:
            await c.send(piece)
            await asyncio.sleep(0.05)  # a slow client: each piece in its own packet
        assert (await c.reply()).startswith("250 2.0.0"), pieces
        assert (await c.cmd("NOOP")).startswith("250")
        await c.close()
        stored = bytes(env.messages()[0]["body"])
        wire = b"".join(pieces)[: -len(b".\r\n")]
        expected = wire.replace(b"\r\n..", b"\r\n.")
        head, sep, body = expected.partition(b"\r\n\r\n")
        assert head in stored
        assert stored.endswith(sep + body)
