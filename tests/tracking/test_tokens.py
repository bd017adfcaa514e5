"""Tokens: round trips, tamper resistance, rotation, what is never issued."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtaserver.tracking.tokens import (
    CLICK,
    OPEN,
    UNSUBSCRIBE,
    TokenCodec,
    TokenError,
    is_trackable_url,
    load_secrets,
)
from tests.tracking.helpers import SECRET, codec


def test_round_trip_every_kind() -> None:
    c = codec()
    assert c.verify(c.open_token("01JD2Q3R4S5T6V7W", 0)).kind == OPEN
    u = c.verify(c.unsubscribe_token("01JD2Q3R4S5T6V7W", 70000))
    assert (u.kind, u.queue_id, u.idx) == (UNSUBSCRIBE, "01JD2Q3R4S5T6V7W", 70000)
    t = c.verify(c.click_token("01JD2Q3R4S5T6V7W", 3, "https://example.com/a?b=1", 2, 5))
    assert (t.kind, t.idx, t.url, t.link, t.links) == (CLICK, 3, "https://example.com/a?b=1", 2, 5)


def test_tokens_are_compact_and_url_safe() -> None:
    c = codec()
    tok = c.open_token("01JD2Q3R4S5T6V7W", 12)
    assert len(tok) <= 48
    assert set(tok) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    long_url = (
        "https://www.example.com/products/winter-sale?utm_source=newsletter&utm_medium=email" * 3
    )
    click = c.click_token("01JD2Q3R4S5T6V7W", 12, long_url, 0, 1)
    assert len(click) < len(long_url)  # repetitive URLs are deflated
    assert c.verify(click).url == long_url


def test_every_single_character_change_is_rejected() -> None:
    c = codec()
    tok = c.click_token("Q", 1, "https://example.com/", 0, 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, ch in enumerate(tok):
        for repl in {
            alphabet[(alphabet.index(ch) + 1) % 64],
            alphabet[(alphabet.index(ch) + 33) % 64],
        }:
            bad = tok[:i] + repl + tok[i + 1 :]
            with pytest.raises(TokenError):
                c.verify(bad)
    for bad in ("", "A", tok + "A", tok[:-1], tok + "==", tok.replace("-", "+"), "x" * 5000):
        if bad != tok:
            with pytest.raises(TokenError):
                c.verify(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=80))
def test_random_strings_never_verify(s: str) -> None:
    with pytest.raises(TokenError):
        codec().verify(s)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=120))
def test_random_payloads_with_wrong_mac_never_verify(raw: bytes) -> None:
    tok = base64.urlsafe_b64encode(raw + b"\0" * 16).rstrip(b"=").decode()
    with pytest.raises(TokenError):
        codec().verify(tok)


def test_only_http_and_https_are_ever_issued() -> None:
    c = codec()
    for url in (
        "javascript:alert(1)",
        "JAVASCRIPT:alert(1)",
        "data:text/html,x",
        "//evil.example/",
        "mailto:a@example.com",
        "ftp://example.com/",
        "https:///nohost",
        "https://exa mple.com/",
        "https://example.com/\r\nLocation: x",
        "vbscript:x",
        "/relative",
    ):
        assert not is_trackable_url(url), url
        with pytest.raises(ValueError):
            c.click_token("Q", 0, url, 0, 1)
    assert is_trackable_url("HTTPS://EXAMPLE.COM/")


def test_rotation_old_secret_still_verifies_new_one_signs(tmp_path: Path) -> None:
    old = TokenCodec((SECRET,))
    tok = old.open_token("Q", 1)
    f = tmp_path / "tracking.key"
    f.write_bytes(b"a-brand-new-secret-0123456789abcdef\n" + SECRET + b"\n")
    new = TokenCodec(load_secrets(f))
    assert new.verify(tok).idx == 1
    fresh = new.open_token("Q", 1)
    assert fresh != tok
    with pytest.raises(TokenError):
        old.verify(fresh)


def test_secret_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_secrets(tmp_path / "missing")
    (tmp_path / "empty").write_bytes(b"\n\n")
    with pytest.raises(ValueError, match="empty"):
        load_secrets(tmp_path / "empty")
    (tmp_path / "short").write_bytes(b"short\n")
    with pytest.raises(ValueError, match="at least 16"):
        load_secrets(tmp_path / "short")


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def test_unsubscribe_token_carries_the_address_encrypted() -> None:
    c = codec()
    tok = c.unsubscribe_token("01JD2Q3R4S5T6V7W", 7, "Reader@Example.org", "shop.example")
    data = c.verify(tok)
    assert (data.kind, data.queue_id, data.idx) == (UNSUBSCRIBE, "01JD2Q3R4S5T6V7W", 7)
    assert (data.address, data.sender_domain) == ("Reader@Example.org", "shop.example")
    raw = _raw(tok)
    assert b"Reader" not in raw and b"example" not in raw.lower()  # not readable in the URL
    # The same address in another message does not look alike.
    other = _raw(c.unsubscribe_token("01JD2Q3R4S5T6V7X", 7, "Reader@Example.org", "shop.example"))
    assert raw[19:-16] != other[19:-16]
    # Tokens issued before addresses were carried still verify (no address in them).
    old = c.verify(c.unsubscribe_token("01JD2Q3R4S5T6V7W", 7))
    assert old.kind == UNSUBSCRIBE and old.address is None
    # Every character of it is covered: changing one is refused.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, ch in enumerate(tok[:-1]):
        bad = tok[:i] + alphabet[(alphabet.index(ch) + 1) % 64] + tok[i + 1 :]
        with pytest.raises(TokenError):
            c.verify(bad)


def test_unsubscribe_address_survives_secret_rotation_and_needs_the_right_key() -> None:
    old = TokenCodec((SECRET,))
    tok = old.unsubscribe_token("Q", 1, "a@b.example", "shop.example")
    rotated = TokenCodec((b"a-brand-new-secret-0123456789abcdef", SECRET))
    assert rotated.verify(tok).address == "a@b.example"
    # A valid MAC over an address part sealed with another deployment's key is refused.
    stranger = TokenCodec((b"another-deployment-secret-123456",))
    forged = _raw(stranger.unsubscribe_token("Q", 1, "a@b.example", "shop.example"))[:-16]
    resealed = old._seal(forged)  # signed with our key, sealed with theirs
    with pytest.raises(TokenError, match="address"):
        old.verify(resealed)
