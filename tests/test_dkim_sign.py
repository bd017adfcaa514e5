"""Signatures made by DkimSigner verify with dkimpy, Perl's Mail::DKIM and OpenDKIM.

Every verifier resolves keys only through the test DnsServer (or a dnsfunc): no real DNS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtaserver.dkim import DkimError, DkimMessageError, DkimSigner, KeySet
from mtaserver.dkim import keys as K
from mtaserver.dkim.signer import OVERSIGN, normalize_crlf, sign_message
from tests.support.clock import FakeClock
from tests.support.dkimtools import (
    dkimpy_verify,
    make_key,
    opendkim_verify,
    perl_verify,
    publish,
)
from tests.support.dnsserver import DnsServer

NOW = int(time.time())  # verifiers reject t= in the future


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[K.DkimKey, K.DkimKey]:
    tmp = tmp_path_factory.mktemp("keys")
    return (
        make_key(tmp, "example.com", "rsa1", K.Algorithm.RSA),
        make_key(tmp, "example.com", "ed1", K.Algorithm.ED25519),
    )


@pytest.fixture(scope="module")
def dns(keys: tuple[K.DkimKey, K.DkimKey]):  # type: ignore[no-untyped-def]
    with DnsServer() as server:
        publish(server, keys)
        yield server


def _lines(*lines: str | bytes) -> bytes:
    return b"".join((x.encode() if isinstance(x, str) else x) + b"\r\n" for x in lines)


PLAIN = _lines(
    "From: Alice <alice@example.com>",
    "To: bob@example.org",
    "Subject: Hello",
    "Date: Fri, 27 Nov 2026 14:00:00 +0000",
    "Message-ID: <1@example.com>",
    "",
    "Hello Bob.",
)
EIGHT_BIT = _lines(
    "From: =?utf-8?q?J=C3=BCrgen?= <j@example.com>",
    "To: bob@example.org",
    "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: 8bit",
    "",
    "Grüße aus Köln — ½ € ✓".encode(),
    b"latin-1 bytes: \xe9\xe8\xff",
)
LONG_LINES = _lines(
    "From: alice@example.com",
    "To: bob@example.org",
    "Subject: " + "long subject " * 30,
    "",
    "x" * 990,
    "word " * 190,
    "trailing spaces   \t ",
    "",
    "",
)
FOLDED = _lines(
    "From: Alice Example",
    "  <alice@example.com>",
    "To: bob@example.org,",
    "\tcarol@example.org,",
    "    dave@example.org",
    "Subject: a subject that is",
    " folded   across\t lines",
    "List-Unsubscribe: <https://t.example.com/u/abc>,",
    " <mailto:unsub@example.com>",
    "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
    "",
    "body",
)
MULTIPART = _lines(
    "From: alice@example.com",
    "To: bob@example.org",
    "Subject: multipart",
    "MIME-Version: 1.0",
    'Content-Type: multipart/alternative; boundary="b1"',
    "",
    "--b1",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: quoted-printable",
    "",
    "Hello =C3=A9",
    "--b1",
    "Content-Type: text/html; charset=utf-8",
    "Content-Transfer-Encoding: base64",
    "",
    "PGI+SGVsbG88L2I+",
    "--b1--",
)
MESSAGES = {
    "plain": PLAIN,
    "8bit": EIGHT_BIT,
    "long-lines": LONG_LINES,
    "folded": FOLDED,
    "multipart": MULTIPART,
}


def _signer(keys: tuple[K.DkimKey, ...]) -> DkimSigner:
    return DkimSigner(KeySet.build(keys), FakeClock(NOW))


def _sig_headers(message: bytes) -> list[str]:
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    unfolded = re.sub(r"\r\n[ \t]", " ", head)
    return [h for h in unfolded.split("\r\n") if h.lower().startswith("dkim-signature:")]


def _tags(header: str) -> dict[str, str]:
    value = header.split(":", 1)[1]
    return {
        k.strip(): "".join(v.split())
        for k, _, v in (t.partition("=") for t in value.split(";"))
        if k.strip()
    }


@pytest.mark.parametrize("name", sorted(MESSAGES))
async def test_signed_message_verifies_everywhere(
    name: str, keys: tuple[K.DkimKey, K.DkimKey], dns: DnsServer, tmp_path: Path
) -> None:
    signed = await _signer(keys).sign(MESSAGES[name])
    assert signed.endswith(MESSAGES[name])
    assert dkimpy_verify(signed, keys) == [True, True]

    before = len(dns.queries)
    perl = perl_verify(signed, dns, tmp_path)
    assert [(r.result, r.algorithm, r.selector) for r in perl] == [
        ("pass", "rsa-sha256", "rsa1"),
        ("invalid", "ed25519-sha256", "ed1"),  # Debian's Mail::DKIM predates RFC 8463
    ]
    assert "unsupported algorithm ed25519-sha256" in perl[1].detail.replace("_", " ")
    assert ("rsa1._domainkey.example.com.", "TXT") in dns.queries[before:]

    before = len(dns.queries)
    od = opendkim_verify(signed, dns, tmp_path)
    assert sorted((r.result, r.algorithm, r.selector) for r in od) == [
        ("pass", "ed25519-sha256", "ed1"),
        ("pass", "rsa-sha256", "rsa1"),
    ]
    assert ("ed1._domainkey.example.com.", "TXT") in dns.queries[before:]


def _prepend_subject(m: bytes) -> bytes:
    head, _, rest = m.partition(b"\r\nFrom:")
    return head + b"\r\nSubject: prepended in transit\r\nFrom:" + rest


def _append_body_line(m: bytes) -> bytes:
    return m + b"appended line\r\n"


def _change_from(m: bytes) -> bytes:
    return m.replace(b"From: Alice <alice@example.com>", b"From: Alice <alice@example.net>")


@pytest.mark.parametrize("tamper", [_prepend_subject, _append_body_line, _change_from])
async def test_tampering_fails_verification(
    tamper, keys: tuple[K.DkimKey, K.DkimKey], dns: DnsServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    signed = await _signer(keys).sign(PLAIN)
    bad = tamper(signed)
    assert bad != signed
    assert dkimpy_verify(bad, keys) == [False, False]
    perl = perl_verify(bad, dns, tmp_path)
    assert perl[0].result == "fail" and perl[0].algorithm == "rsa-sha256"
    od = opendkim_verify(bad, dns, tmp_path)
    assert len(od) == 2 and all(r.result == "fail" for r in od), od


async def test_signature_policy(keys: tuple[K.DkimKey, K.DkimKey]) -> None:
    signed = await _signer(keys).sign(FOLDED)
    sigs = [_tags(h) for h in _sig_headers(signed)]
    assert [s["a"] for s in sigs] == ["rsa-sha256", "ed25519-sha256"]  # RSA topmost
    for s in sigs:
        assert s["c"] == "relaxed/relaxed"
        assert s["d"] == "example.com"
        assert s["t"] == str(NOW)
        assert "l" not in s
        assert "sha1" not in s["a"]
        signed_names = s["h"].split(":")
        present = [b"from", b"to", b"subject", b"list-unsubscribe", b"list-unsubscribe-post"]
        for name in OVERSIGN:
            count = signed_names.count(name.decode())
            assert count == (2 if name in present else 1), name


async def test_clock_sets_t(keys: tuple[K.DkimKey, K.DkimKey]) -> None:
    clock = FakeClock(NOW)
    signer = DkimSigner(KeySet.build(keys), clock)
    clock.advance(3600)
    sig = _tags(_sig_headers(await signer.sign(PLAIN))[0])
    assert sig["t"] == str(NOW + 3600)


async def test_subdomain_signs_with_parent_key(keys: tuple[K.DkimKey, K.DkimKey]) -> None:
    msg = PLAIN.replace(b"alice@example.com", b"alice@news.mail.example.com")
    signed = await _signer(keys).sign(msg)
    assert [_tags(h)["d"] for h in _sig_headers(signed)] == ["example.com", "example.com"]
    assert dkimpy_verify(signed, keys) == [True, True]


async def test_own_key_wins_over_parent(keys: tuple[K.DkimKey, K.DkimKey], tmp_path: Path) -> None:
    sub = make_key(tmp_path, "news.example.com", "n1", K.Algorithm.ED25519)
    msg = PLAIN.replace(b"alice@example.com", b"alice@News.Example.COM")
    signed = await _signer((*keys, sub)).sign(msg)
    sigs = [_tags(h) for h in _sig_headers(signed)]
    assert [(s["d"], s["s"]) for s in sigs] == [("news.example.com", "n1")]
    assert dkimpy_verify(signed, (sub,)) == [True]


async def test_no_key_or_no_from_leaves_message_unchanged(
    keys: tuple[K.DkimKey, K.DkimKey],
) -> None:
    signer = _signer(keys)
    other = PLAIN.replace(b"alice@example.com", b"alice@example.net")
    assert await signer.sign(other) == other
    no_from = PLAIN.replace(b"From: Alice <alice@example.com>\r\n", b"")
    assert await signer.sign(no_from) == no_from
    # a look-alike suffix is not a parent domain
    evil = PLAIN.replace(b"alice@example.com", b"alice@badexample.com")
    assert await signer.sign(evil) == evil


async def test_lf_only_input_is_signed_as_crlf(keys: tuple[K.DkimKey, K.DkimKey]) -> None:
    lf = PLAIN.replace(b"\r\n", b"\n")
    signed = await _signer(keys).sign(lf)
    assert signed.endswith(PLAIN)
    assert b"\n" not in signed.replace(b"\r\n", b"")
    assert dkimpy_verify(signed, keys) == [True, True]


async def test_first_line_whitespace_is_refused_cleanly(
    keys: tuple[K.DkimKey, K.DkimKey],
) -> None:
    with pytest.raises(DkimMessageError) as info:
        await _signer(keys).sign(b" leading: space\r\n" + PLAIN)
    assert info.value.reply[0] == 554
    with pytest.raises(DkimMessageError):
        await _signer(keys).sign(b"no colon in this header line\r\n" + PLAIN)
    with pytest.raises(DkimMessageError):
        await _signer(keys).sign(PLAIN.replace(b"To:", b"From: x@example.com\r\nTo:"))


async def test_message_without_body_is_signed(
    keys: tuple[K.DkimKey, K.DkimKey], dns: DnsServer, tmp_path: Path
) -> None:
    headers_only = PLAIN.split(b"\r\n\r\n")[0] + b"\r\n"
    signed = await _signer(keys).sign(headers_only)
    assert signed.endswith(headers_only)
    assert dkimpy_verify(signed, keys) == [True, True]
    assert perl_verify(signed, dns, tmp_path)[0].result == "pass"
    # an empty body after the separator, too
    empty_body = PLAIN.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert dkimpy_verify(await _signer(keys).sign(empty_body), keys) == [True, True]


async def test_no_keys_passes_through() -> None:
    signer = DkimSigner(KeySet.build(()), FakeClock(NOW))
    assert await signer.sign(PLAIN) == PLAIN


async def test_reload_swaps_selector_atomically(
    keys: tuple[K.DkimKey, K.DkimKey], tmp_path: Path
) -> None:
    """Messages signed during key-set swaps carry the old or the new selector, never none."""
    rsa_old, ed = keys
    rsa_new = make_key(tmp_path, "example.com", "rsa2", K.Algorithm.RSA)
    old = KeySet.build(
        (rsa_old, ed, K.load_key(rsa_new.path, domain="example.com", selector="rsa2", active=False))
    )
    new = KeySet.build(
        (K.load_key(rsa_old.path, domain="example.com", selector="rsa1", active=False), ed, rsa_new)
    )
    assert [k.selector for k in old.signing["example.com"]] == ["rsa1", "ed1"]
    assert [k.selector for k in new.signing["example.com"]] == ["rsa2", "ed1"]
    signer = DkimSigner(old, FakeClock(NOW))

    async def swapper() -> None:
        for i in range(40):
            signer.reload(new if i % 2 == 0 else old)
            await asyncio.sleep(0)

    results = await asyncio.gather(swapper(), *(signer.sign(PLAIN) for _ in range(80)))
    selectors = set()
    for signed in results[1:]:
        assert isinstance(signed, bytes)
        sigs = [_tags(h) for h in _sig_headers(signed)]
        assert len(sigs) == 2
        selectors.add(sigs[0]["s"])
        assert sigs[1]["s"] == "ed1"
        assert dkimpy_verify(signed, (rsa_old, ed, rsa_new)) == [True, True]
    assert selectors <= {"rsa1", "rsa2"}
    signer.reload(new)
    last = [_tags(h)["s"] for h in _sig_headers(await signer.sign(PLAIN))]
    assert last == ["rsa2", "ed1"]


def test_sync_sign_message_matches_async(keys: tuple[K.DkimKey, K.DkimKey]) -> None:
    signed = sign_message(MULTIPART, KeySet.build(keys), NOW)
    assert dkimpy_verify(signed, keys) == [True, True]


class _BrokenKey:
    def sign(self, digest: bytes) -> bytes:
        raise RuntimeError("hardware token unplugged")


async def test_unexpected_signing_failure_is_a_temporary_dkim_error(
    keys: tuple[K.DkimKey, K.DkimKey],
) -> None:
    broken = dataclasses.replace(keys[1], private_key=_BrokenKey())  # type: ignore[arg-type]
    with pytest.raises(DkimError) as info:
        await _signer((broken,)).sign(PLAIN)
    assert not isinstance(info.value, DkimMessageError)
    assert info.value.reply[:2] == (451, "4.3.0")


LINES = st.sampled_from(
    [
        b"From: a@example.com",
        b"From: <a@sub.example.com>, b@example.org",
        b"From: =?utf-8?q?x?= <\xc3\xa9@example.com>",
        b"From: broken <@>",
        b"Subject: x",
        b" continued",
        b"\tcontinued",
        b"",
        b"no colon",
        b"To:",
        b"body line \xff",
        b"From x@y Mon Jan 1",
        b":",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINES, max_size=12), st.sampled_from([b"\r\n", b"\n", b"\r"]))
def test_any_input_is_signed_or_refused_cleanly(lines: list[bytes], eol: bytes) -> None:
    keyset = KeySet.build(_FUZZ_KEYS)
    data = eol.join(lines)
    try:
        out = sign_message(data, keyset, NOW)
    except DkimMessageError:
        return
    assert out.endswith(normalize_crlf(data))


_FUZZ_KEYS: list[K.DkimKey] = []


@pytest.fixture(autouse=True, scope="module")
def _fuzz_keys(keys: tuple[K.DkimKey, K.DkimKey]) -> None:
    _FUZZ_KEYS[:] = keys
