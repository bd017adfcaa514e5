"""VERP return paths round-trip, survive lower-casing, and reject forgeries."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtaserver.verp import Verp

V = Verp(b"k" * 32, "bounces", "bounce.example.com")


def test_address_shape_and_round_trip() -> None:
    addr = V.address("q1a2b3", 4)
    assert re.fullmatch(r"bounces\+[a-z0-9-]+@bounce\.example\.com", addr)
    assert len(addr.split("@")[0]) <= 64
    assert V.parse(addr) == ("q1a2b3", 4)
    assert V.parse(f"<{addr}>") == ("q1a2b3", 4)


def test_mixed_case_queue_id_survives_case_changes() -> None:
    addr = V.address("AbC-12_x", 7)
    assert addr == addr.lower()
    assert V.parse(addr.upper()) == ("AbC-12_x", 7)
    assert V.parse(addr.lower()) == ("AbC-12_x", 7)


@given(st.text(min_size=1, max_size=24), st.integers(min_value=0, max_value=100_000))
def test_round_trip_any_queue_id(queue_id: str, idx: int) -> None:
    addr = V.address(queue_id, idx)
    assert V.parse(addr) == (queue_id, idx)
    assert V.parse(addr.swapcase()) == (queue_id, idx)


def test_rejects_tampering_and_foreign_addresses() -> None:
    addr = V.address("q1a2b3", 4)
    local, domain = addr.split("@")
    prefix, token = local.split("+")
    qid, idx, mac = token.split("-")
    assert V.parse(f"{prefix}+{qid}-5-{mac}@{domain}") is None  # other recipient
    assert V.parse(f"{prefix}+rq1a2b4-{idx}-{mac}@{domain}") is None  # other message
    flipped = ("a" if mac[0] != "a" else "b") + mac[1:]
    assert V.parse(f"{prefix}+{qid}-{idx}-{flipped}@{domain}") is None
    assert V.parse(f"{prefix}+{qid}-04-{mac}@{domain}") is None  # non-canonical index
    assert V.parse(f"{local}@other.example") is None
    assert V.parse(f"other+{token}@{domain}") is None
    assert V.parse("bounces@bounce.example.com") is None
    assert V.parse("not an address") is None
    assert V.parse("bounces+b!!!-1-abc@bounce.example.com") is None
    other_key = Verp(b"x" * 32, "bounces", "bounce.example.com")
    assert other_key.parse(addr) is None


def test_invalid_construction() -> None:
    with pytest.raises(ValueError):
        Verp(b"", "bounces", "example.com")
    with pytest.raises(ValueError):
        Verp(b"k", "a+b", "example.com")
    with pytest.raises(ValueError):
        V.address("", 1)
    with pytest.raises(ValueError):
        V.address("q", -1)
