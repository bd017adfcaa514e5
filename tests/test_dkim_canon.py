"""The fast relaxed body canonicalization equals dkimpy's, byte for byte."""

from __future__ import annotations

from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from mtaserver.dkim.signer import normalize_crlf, relaxed_body

PIECES = st.sampled_from([b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\r\n\r\n", b"a", b"xy", b"\xe9"])


@settings(max_examples=400, deadline=None)
@given(st.lists(PIECES, max_size=40))
def test_relaxed_body_matches_dkimpy(pieces: list[bytes]) -> None:
    body = b"".join(pieces)
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_relaxed_body_matches_dkimpy_on_normalized_bytes(data: bytes) -> None:
    body = normalize_crlf(data)
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


def test_normalize_crlf() -> None:
    assert normalize_crlf(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd\r\n"
    same = b"a\r\nb\r\n"
    assert normalize_crlf(same) is same
    assert normalize_crlf(b"") == b"\r\n"
