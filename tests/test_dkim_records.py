"""TXT record text: 255-byte strings, zone-file quoting, tag parsing."""

from __future__ import annotations

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from mtaserver.dkim.records import parse_tags, quote_txt, split_txt, zone_line


@pytest.mark.parametrize("n", [0, 1, 254, 255, 256, 510, 511, 1000])
def test_split_txt_bounds(n: int) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(n))
    parts = split_txt(text)
    assert "".join(parts) == text
    assert all(len(p) <= 255 for p in parts)
    assert len(parts) == max(1, -(-n // 255))


def test_quote_txt_round_trips_through_a_dns_parser() -> None:
    text = 'v=DKIM1; k=rsa; n=say "hi" \\ there; p=' + "A" * 400
    rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, quote_txt(text))
    strings = rd.strings  # type: ignore[attr-defined]
    assert b"".join(strings).decode() == text
    assert [len(s) for s in strings] == [255, len(text.encode()) - 255]


def test_zone_line_and_tags() -> None:
    assert zone_line("s._domainkey.example.com", "TXT", '"x"') == (
        's._domainkey.example.com.\tIN\tTXT\t"x"'
    )
    assert parse_tags("v=DKIM1; k=rsa;\t p=MIIB IjAN ; t=s") == {
        "v": "DKIM1",
        "k": "rsa",
        "p": "MIIBIjAN",
        "t": "s",
    }
