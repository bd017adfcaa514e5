"""Rewriting real-world HTML: links, pixel, encodings, untouched bytes, DKIM."""

from __future__ import annotations

import binascii
import re

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mtaserver.tracking import rewrite
from mtaserver.tracking.tokens import CLICK, OPEN, UNSUBSCRIBE
from mtaserver.tracking.tracker import Tracker
from tests.tracking import samples
from tests.tracking.helpers import codec, header_block, html_bodies, html_view, parse

BASE = "https://t.example.com"
RCPTS = ("one@example.org", "two@example.org", "three@example.net")


def tracker(mailto: str | None = "unsubscribe@bounce.example.com") -> Tracker:
    return Tracker(codec(), BASE, mailto)


def _token(url: str, kind: str) -> str:
    m = re.fullmatch(
        re.escape(BASE) + f"/{kind}/([A-Za-z0-9_-]+)" + (r"\.gif" if kind == "o" else ""), url
    )
    assert m, url
    return m.group(1)


def test_finds_every_trackable_link_once_in_order() -> None:
    t = rewrite.parse(samples.alternative())
    assert t.links == samples.NEWSLETTER_LINKS


@pytest.mark.parametrize("encoding", ["quoted-printable", "base64", "8bit"])
def test_rewrites_links_and_adds_pixel_per_recipient(encoding: str) -> None:
    original = samples.alternative(encoding)
    out = tracker().personalize_sync(
        "Q1", original, RCPTS, opens=True, clicks=True, unsubscribe=False
    )
    assert [r.address for r in out] == list(RCPTS)
    bodies = [r.data for r in out]
    assert all(b is not None for b in bodies)
    assert len(set(bodies)) == len(RCPTS)  # per-recipient tokens

    (orig_html,) = html_bodies(original)
    orig_text, orig_hrefs, _ = html_view(orig_html)
    c = codec()
    for idx, data in enumerate(bodies):
        assert data is not None
        (new_html,) = html_bodies(data)
        text, hrefs, imgs = html_view(new_html)
        assert text == orig_text  # still renders the same text
        assert len(hrefs) == len(orig_hrefs)
        followed = []
        for old, new in zip(orig_hrefs, hrefs, strict=True):
            if new.startswith(BASE + "/c/"):
                tok = c.verify(_token(new, "c"))
                assert (tok.kind, tok.queue_id, tok.idx) == (CLICK, "Q1", idx)
                assert tok.links == len(samples.NEWSLETTER_LINKS)
                followed.append(tok.url)
                assert tok.url == old.strip()
            else:
                assert new == old
        assert set(followed) == set(samples.NEWSLETTER_LINKS)
        # The Outlook conditional comment's link is tracked too, with the same token.
        assert new_html.count(BASE + "/c/") == len(followed) + 1
        assert len(imgs) == 1
        tok = c.verify(_token(imgs[0], "o"))
        assert (tok.kind, tok.queue_id, tok.idx) == (OPEN, "Q1", idx)
        # The pixel sits right before </BODY>, after everything visible.
        assert re.search(r'<img src="[^"]+/o/[^"]+\.gif"[^>]*></BODY>', new_html)
        for untouched in samples.UNTOUCHED:
            assert untouched in new_html


@pytest.mark.parametrize("encoding", ["quoted-printable", "base64", "8bit"])
def test_everything_but_the_html_body_is_byte_identical(encoding: str) -> None:
    original = samples.alternative(encoding)
    (r,) = tracker().personalize_sync("Q1", original, RCPTS[:1], True, True, False)
    assert r.data is not None
    # Headers are not re-serialized: the encoded CRLF in Subject stays encoded.
    assert header_block(r.data) == header_block(original)
    assert b"\r\nBcc:" not in r.data
    # The text/plain part and the MIME skeleton are untouched.
    html_start = original.index(b'Content-Type: text/html; charset="utf-8"')
    assert r.data[:html_start] == original[:html_start]
    assert r.data.endswith(b"\r\n--=_b1_alt--\r\n")
    part = parse(r.data).get_payload()[1]
    assert part["Content-Transfer-Encoding"] == encoding
    raw = r.data[html_start:].split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--=_b1_alt--", 1)[0]
    lines = raw.split(b"\r\n")
    if encoding == "base64":
        assert all(len(line) <= 76 for line in lines)
        binascii.a2b_base64(raw)
    elif encoding == "quoted-printable":
        assert all(len(line) <= 76 for line in lines)
        assert all(b < 0x80 for b in raw)
    else:
        assert all(len(line) <= 998 for line in lines)
        assert "café crème".encode() in r.data  # 8bit UTF-8 stays 8bit UTF-8


def test_dkim_signature_over_rewritten_message_verifies() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    txt = b"v=DKIM1; k=rsa; p=" + binascii.b2a_base64(pub, newline=False)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"sel._domainkey.example.com."
        return txt

    for encoding in ("quoted-printable", "base64", "8bit"):
        out = tracker().personalize_sync(
            "Q9", samples.alternative(encoding), RCPTS[:2], True, True, True
        )
        for r in out:
            assert r.data is not None
            sig = dkim.sign(
                r.data,
                b"sel",
                b"example.com",
                pem,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=[
                    b"from",
                    b"to",
                    b"subject",
                    b"date",
                    b"message-id",
                    b"mime-version",
                    b"content-type",
                    b"list-unsubscribe",
                    b"list-unsubscribe-post",
                ],
            )
            signed = sig + r.data
            assert dkim.verify(signed, dnsfunc=dns)
            # Tampering with the tracked link breaks it: the signature covers the body.
            at = signed.index(b'charset="utf-8"') + 80
            tampered = signed[:at] + bytes([signed[at] ^ 1]) + signed[at + 1 :]
            assert not dkim.verify(tampered, dnsfunc=dns)
            # The unsubscribe headers are signed.
            h = re.search(rb"h=([^;]+)", re.sub(rb"\s", b"", sig.lower()))
            assert h and {b"list-unsubscribe", b"list-unsubscribe-post"} <= set(
                h.group(1).split(b":")
            )


def test_unsubscribe_headers_rfc8058() -> None:
    original = samples.alternative()
    out = tracker().personalize_sync(
        "Q2", original, RCPTS, opens=False, clicks=False, unsubscribe=True
    )
    c = codec()
    for idx, r in enumerate(out):
        assert r.data is not None
        msg = parse(r.data)
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        value = str(msg["List-Unsubscribe"])
        uris = re.findall(r"<([^>]+)>", value)
        assert len(uris) == 2
        assert uris[0].startswith(BASE + "/u/")
        tok = c.verify(_token(uris[0], "u"))
        assert (tok.kind, tok.queue_id, tok.idx) == (UNSUBSCRIBE, "Q2", idx)
        assert uris[1].startswith("mailto:unsubscribe@bounce.example.com?subject=unsubscribe-")
        # Only the headers were added: the body is untouched when opens/clicks are off.
        assert r.data.split(b"\r\n\r\n", 1)[1] == original.split(b"\r\n\r\n", 1)[1]


def test_sender_list_unsubscribe_is_replaced_not_duplicated() -> None:
    original = samples.alternative().replace(
        b"MIME-Version: 1.0\r\n",
        b"List-Unsubscribe: <https://old.example/u>,\r\n <mailto:old@example.com>\r\n"
        b"MIME-Version: 1.0\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
    )
    (r,) = tracker(None).personalize_sync("Q3", original, RCPTS[:1], False, False, True)
    assert r.data is not None
    assert r.data.count(b"List-Unsubscribe:") == 1
    assert r.data.count(b"List-Unsubscribe-Post:") == 1
    assert b"old.example" not in r.data and b"mailto:" not in r.data.split(b"\r\n\r\n")[0]


def test_attachments_and_images_are_not_touched() -> None:
    original = samples.mixed_with_attachment()
    (r,) = tracker().personalize_sync("Q4", original, RCPTS[:1], True, True, False)
    assert r.data is not None
    assert b'<html><body><a href="https://attached.example/">x</a></body></html>\r\n' in r.data
    assert b"R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7\r\n--outer--\r\n" in r.data
    (html,) = html_bodies(r.data)
    assert html.count(BASE + "/o/") == 1
    assert r.data.startswith(samples.HEADERS)


def test_latin1_8bit_single_part_without_body_tag() -> None:
    original = samples.latin1_8bit()
    (r,) = tracker().personalize_sync("Q5", original, RCPTS[:1], True, True, False)
    assert r.data is not None
    body = r.data.split(b"\r\n\r\n", 1)[1]
    assert body.startswith("<p>Grüße! ".encode("iso-8859-1"))
    m = re.search(rb'href="([^"]+)"', body)
    assert m
    tok = codec().verify(_token(m.group(1).decode(), "c"))
    assert tok.url == "https://example.de/ä?x=1&y=2"
    assert body.rstrip().endswith(
        b'.gif" width="1" height="1" alt="" border="0" '
        b'style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">'
    )


def test_long_lines_stay_within_smtp_limit_in_8bit() -> None:
    link = "https://example.com/p"
    line = "".join(f'<a href="{link}{i}">{i}</a>' for i in range(14))
    assert len(line) < 998
    original = (
        b"From: a@example.com\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        + f"<html><body>{line}</body></html>\r\n".encode()
    )
    (r,) = tracker().personalize_sync("Q6" * 20, original, RCPTS[:1], True, True, False)
    assert r.data is not None
    assert max(len(x) for x in r.data.split(b"\r\n")) <= 998
    text, hrefs, _ = html_view(r.data.split(b"\r\n\r\n", 1)[1].decode())
    assert text == "".join(str(i) for i in range(14))
    assert len(hrefs) == 14 and all(h.startswith(BASE + "/c/") for h in hrefs)


def test_nothing_to_do_returns_shared_body() -> None:
    plain = b"From: a@example.com\r\nSubject: x\r\n\r\nhello https://example.com/\r\n"
    assert tracker().personalize_sync("Q7", plain, RCPTS, True, True, False) == tuple(
        r for r in tracker().personalize_sync("Q7", plain, RCPTS, False, False, False)
    )
    assert all(
        r.data is None for r in tracker().personalize_sync("Q7", plain, RCPTS, True, True, False)
    )
    out = tracker().personalize_sync("Q7", plain, RCPTS, True, True, True)
    assert all(
        r.data is not None and r.data.endswith(b"\r\n\r\nhello https://example.com/\r\n")
        for r in out
    )


def test_hostile_structure_is_sent_untracked() -> None:
    deep = b"From: a@example.com\r\n"
    for i in range(200):
        deep += f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
    deep += b"Content-Type: text/html\r\n\r\n<a href='https://x.example/'>x</a>\r\n"
    out = tracker().personalize_sync("Q8", deep, RCPTS[:1], True, True, False)
    assert out[0].data is None
    out = tracker().personalize_sync("Q8", deep, RCPTS[:1], True, True, True)
    assert out[0].data is not None and out[0].data.endswith(deep.split(b"\r\n\r\n", 1)[1])


def test_many_raw_text_blocks_stay_linear() -> None:
    import time

    html = "<html><body>" + '<style>p{}</style><a href="https://e.example/x">x</a>' * 20000
    data = b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n" + html.encode() + b"\r\n"
    started = time.monotonic()
    (r,) = tracker().personalize_sync("Q10", data, RCPTS[:1], True, True, False)
    assert time.monotonic() - started < 10  # quadratic scanning took minutes
    assert r.data is not None and r.data.count(b"/c/") == 20000


def test_copies_too_large_for_memory_go_untracked(monkeypatch: pytest.MonkeyPatch) -> None:
    from mtaserver.tracking import tracker as tracker_mod

    data = samples.alternative()
    monkeypatch.setattr(tracker_mod, "MAX_COPIES_BYTES", len(data) * 2)
    assert all(
        r.data is None for r in tracker().personalize_sync("Q11", data, RCPTS, True, True, True)
    )
    assert all(
        r.data is not None
        for r in tracker().personalize_sync("Q11", data, RCPTS[:2], True, True, True)
    )


async def test_async_personalize_matches_sync_for_big_jobs() -> None:
    data = samples.alternative("base64")
    many = tuple(f"r{i}@example.org" for i in range(400))  # beyond the inline threshold
    out = await tracker().personalize("Q12", data, many, True, True, True)
    assert out == tracker().personalize_sync("Q12", data, many, True, True, True)
