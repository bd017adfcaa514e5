"""``mtaserver dkim keygen|show|check`` and ``mtaserver dns records|check``.

Every lookup goes to a DnsServer on 127.0.0.1 named in ``[delivery] nameservers``.
"""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from mtaserver.cli import main
from mtaserver.dkim import KeySet, sign_message
from mtaserver.dkim import keys as K
from mtaserver.dkim.records import parse_tags
from tests.support.dkimtools import dkimpy_verify, make_key, publish
from tests.support.dnsserver import DnsServer


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _txt_from_zone(line: str) -> tuple[str, str, tuple[bytes, ...]]:
    name, klass, rtype, rdata = line.split("\t")
    assert klass == "IN"
    rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), rdata)
    return name, rtype, tuple(getattr(rd, "strings", ()))


@pytest.mark.parametrize(("algorithm", "bits"), [("rsa", "2048"), ("rsa", "3072"), ("ed25519", "")])
def test_keygen_writes_0600_key_and_prints_its_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], algorithm: str, bits: str
) -> None:
    out = tmp_path / "k.pem"
    argv = ["dkim", "keygen", "--domain", "Example.com", "--selector", "s2026"]
    argv += ["--algorithm", algorithm, "--out", str(out)] + (["--bits", bits] if bits else [])
    code, stdout, stderr = _run(capsys, *argv)
    assert code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    name, rtype, strings = _txt_from_zone(stdout.splitlines()[0])
    assert (name, rtype) == ("s2026._domainkey.example.com.", "TXT")
    assert all(len(s) <= 255 for s in strings)
    if algorithm == "rsa":
        assert len(strings) >= 2  # a 2048-bit key does not fit one string
    tags = parse_tags(b"".join(strings).decode())
    assert tags["v"] == "DKIM1" and tags["k"] == algorithm
    key = K.load_key(out, domain="example.com", selector="s2026")
    assert tags["p"] == key.public_b64
    if bits:
        assert key.bits == int(bits)
    assert 'selector = "s2026"' in stderr
    # the printed record verifies a signature made with the written key
    signed = sign_message(
        b"From: a@example.com\r\n\r\nhi\r\n", KeySet.build([key]), int(time.time())
    )
    assert dkimpy_verify(signed, [key]) == [True]


def test_keygen_refuses_weak_key_and_existing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "k.pem"
    base = ["dkim", "keygen", "--domain", "example.com", "--selector", "s", "--out", str(out)]
    code, _o, err = _run(capsys, *base, "--bits", "1024")
    assert code == 2 and "at least 2048" in err and not out.exists()
    assert _run(capsys, *base)[0] == 0
    before = out.read_bytes()
    code, _o, err = _run(capsys, *base)
    assert code == 2 and "already exists" in err
    assert out.read_bytes() == before


def test_operator_error_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mtaserver", "dkim", "show", "-c", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "config file not found" in proc.stderr


def _config(tmp_path: Path, dns_server: DnsServer, keys: list[K.DkimKey]) -> Path:
    text = (
        f'[server]\nhostname = "mta.example.com"\ndata_dir = "{tmp_path}/var"\n'
        f'[inbound]\nbounce_domain = "bounces.example.com"\n'
        f'[delivery]\nnameservers = ["{dns_server.nameserver}"]\n'
        f'[tracking]\nbase_url = "https://t.example.com"\n'
    )
    for k in keys:
        text += (
            f'[[dkim]]\ndomain = "{k.domain}"\nselector = "{k.selector}"\nkey = "{k.path}"\n'
            f'algorithm = "{k.algorithm.value}"\nactive = {"true" if k.active else "false"}\n'
        )
    path = tmp_path / "mtaserver.toml"
    path.write_text(text)
    return path


@pytest.fixture
def keys(tmp_path: Path) -> list[K.DkimKey]:
    return [
        make_key(tmp_path, "example.com", "s2026", K.Algorithm.RSA),
        make_key(tmp_path, "example.com", "s2025", K.Algorithm.RSA, active=False),
        make_key(tmp_path, "example.com", "ed2026", K.Algorithm.ED25519),
        make_key(tmp_path, "example.org", "s1", K.Algorithm.ED25519),
    ]


def test_show_lists_keys_with_records(
    tmp_path: Path, dns_server: DnsServer, keys: list[K.DkimKey], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, dns_server, keys)
    code, out, _err = _run(capsys, "dkim", "show", "-c", str(cfg))
    assert code == 0
    lines = out.splitlines()
    assert "; example.com selector=s2026 rsa-2048 active" in lines[0]
    assert "selector=s2025 rsa-2048 inactive" in lines[2]
    records = [_txt_from_zone(line) for line in lines if not line.startswith(";")]
    assert [r[0] for r in records] == [k.record_name + "." for k in keys]
    for (_n, _t, strings), key in zip(records, keys, strict=True):
        assert b"".join(strings).decode() == key.record_text
    assert dns_server.queries == []  # show never resolves


def test_check_reports_ok_missing_different(
    tmp_path: Path, dns_server: DnsServer, keys: list[K.DkimKey], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, dns_server, keys)
    publish(dns_server, keys[:1])  # s2026 correct
    dns_server.set(keys[1].record_name, "TXT", ['"v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiWrong"'])
    code, out, _err = _run(capsys, "dkim", "check", "--domain", "example.com", "-c", str(cfg))
    assert code == 1
    lines = {line.split()[2]: line for line in out.splitlines() if "_domainkey" in line}
    assert lines["s2026._domainkey.example.com"].startswith("ok ")
    assert lines["s2025._domainkey.example.com"].startswith("different ")
    assert "p=MIIBIjANBgkqhkiWrong" in lines["s2025._domainkey.example.com"]
    assert lines["ed2026._domainkey.example.com"].startswith("missing ")
    assert ("ed2026._domainkey.example.com.", "TXT") in dns_server.queries
    publish(dns_server, keys[:3])
    code, out, _err = _run(capsys, "dkim", "check", "--domain", "example.com", "-c", str(cfg))
    assert code == 0 and out.splitlines()[-1] == "3 of 3 records ok"
    code, _out, err = _run(capsys, "dkim", "check", "--domain", "example.net", "-c", str(cfg))
    assert code == 2 and "no [[dkim]] key" in err


def test_check_reports_lookup_errors(
    tmp_path: Path, dns_server: DnsServer, keys: list[K.DkimKey], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, dns_server, keys[3:])
    dns_server.servfail(keys[3].record_name)
    code, out, _err = _run(capsys, "dkim", "check", "--domain", "example.org", "-c", str(cfg))
    assert code == 1
    assert out.splitlines()[0].startswith("error ")
    assert "SERVFAIL" in out


def _zone_records(out: str) -> list[tuple[str, str, str]]:
    rows = []
    for line in out.splitlines():
        if line and not line.startswith(";"):
            name, klass, rtype, rdata = line.split("\t")
            assert klass == "IN" and name.endswith(".")
            rows.append((name, rtype, rdata))
    return rows


def test_dns_records_prints_everything_to_publish(
    tmp_path: Path, dns_server: DnsServer, keys: list[K.DkimKey], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, dns_server, keys)
    code, out, _err = _run(capsys, "dns", "records", "-c", str(cfg))
    assert code == 0
    rows = _zone_records(out)
    names = [(n, t) for n, t, _v in rows]
    for k in keys:
        assert (k.record_name + ".", "TXT") in names
    for d in ("example.com.", "example.org."):
        assert (d, "TXT") in names
        assert ("_dmarc." + d, "TXT") in names
    assert ("bounces.example.com.", "MX") in names
    assert ("bounces.example.com.", "TXT") in names
    assert ("t.example.com.", "CNAME") in names
    assert ("mta.example.com.", "A") in names
    for _name, rtype, rdata in rows:
        if rtype != "A":  # the host address is a placeholder for the operator to fill in
            dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), rdata)
    values = {(n, t): v for n, t, v in rows}
    assert values[("example.com.", "TXT")] == '"v=spf1 a:mta.example.com ~all"'
    assert values[("_dmarc.example.com.", "TXT")].startswith('"v=DMARC1; p=none; rua=mailto:')
    assert values[("bounces.example.com.", "MX")] == "10 mta.example.com."
    assert values[("t.example.com.", "CNAME")] == "mta.example.com."
    assert "SPF cannot align: bounces.example.com is not under example.org" in out
    assert "is not under example.com" not in out
    code, out, _err = _run(capsys, "dns", "records", "--domain", "example.org", "-c", str(cfg))
    names = [(n, t) for n, t, _v in _zone_records(out)]
    assert ("s1._domainkey.example.org.", "TXT") in names
    assert not any(n.endswith("example.com.") and "_domainkey" in n for n, _t in names)
    assert dns_server.queries == []


def _publish_all(server: DnsServer, keys: list[K.DkimKey]) -> None:
    publish(server, keys)
    for d in ("example.com", "example.org"):
        server.set(d, "TXT", ['"v=spf1 include:_spf.google.com a:mta.example.com ~all"'])
        server.set("_dmarc." + d, "TXT", [f'"v=DMARC1; p=quarantine; rua=mailto:d@{d}"'])
    server.set("mta.example.com", "A", ["127.0.0.5"])
    server.set("bounces.example.com", "MX", ["10 mta.example.com."])
    server.set("bounces.example.com", "TXT", ['"v=spf1 a:mta.example.com -all"'])
    server.set("t.example.com", "CNAME", ["mta.example.com."])


def test_dns_check_all_ok_then_each_problem(
    tmp_path: Path, dns_server: DnsServer, keys: list[K.DkimKey], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, dns_server, keys)
    _publish_all(dns_server, keys)
    code, out, _err = _run(capsys, "dns", "check", "-c", str(cfg))
    assert code == 0, out
    assert out.splitlines()[-1] == "12 of 12 records ok"

    dns_server.remove("_dmarc.example.org")
    dns_server.set("example.com", "TXT", ['"v=spf1 -all"', '"google-site-verification=x"'])
    dns_server.set("bounces.example.com", "MX", ["10 mx.elsewhere.net."])
    dns_server.remove("t.example.com")
    dns_server.set("t.example.com", "A", ["127.0.0.9"])
    code, out, _err = _run(capsys, "dns", "check", "-c", str(cfg))
    assert code == 1
    by_name: dict[tuple[str, str], str] = {}
    for line in out.splitlines()[:-1]:
        parts = line.split()
        by_name[(parts[2], parts[1])] = line
    assert by_name[("_dmarc.example.org", "TXT")].startswith("missing ")
    spf = by_name[("example.com", "TXT")]
    assert spf.startswith("different ") and '"v=spf1 -all"' in spf
    assert by_name[("bounces.example.com", "MX")].startswith("different ")
    assert "10 mx.elsewhere.net" in by_name[("bounces.example.com", "MX")]
    tracking = by_name[("t.example.com", "CNAME")]
    assert tracking.startswith("different ") and "127.0.0.9" in tracking
    assert by_name[("example.org", "TXT")].startswith("ok ")

    # an A record with this host's address is as good as the CNAME
    dns_server.set("t.example.com", "A", ["127.0.0.5"])
    code, out, _err = _run(capsys, "dns", "check", "--domain", "example.org", "-c", str(cfg))
    lines = out.splitlines()
    assert any(line.startswith("ok ") and "t.example.com" in line for line in lines)
    assert not any("example.com " in line and "_domainkey" in line for line in lines)


def test_dns_records_route_the_unsubscribe_mailto_domain_here(
    tmp_path: Path, dns_server: DnsServer, keys: list[K.DkimKey], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, dns_server, keys[:1])
    base = cfg.read_text().replace(
        '[inbound]\nbounce_domain = "bounces.example.com"\n',
        '[inbound]\nbounce_domain = "bounces.example.com"\nlisten = "127.0.0.1:2525"\n',
    )
    for mailto, expected in (
        ("unsubscribe@unsub.example.com", [("unsub.example.com.", "10 mta.example.com.")]),
        ("unsubscribe@bounces.example.com", []),  # the bounce domain's MX already does it
    ):
        cfg.write_text(
            base.replace("[tracking]\n", f'[tracking]\nunsubscribe_mailto = "{mailto}"\n')
        )
        code, out, _err = _run(capsys, "dns", "records", "-c", str(cfg))
        assert code == 0
        mx = [(n, v) for n, t, v in _zone_records(out) if t == "MX" and n != "bounces.example.com."]
        assert mx == expected
