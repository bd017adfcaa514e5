"""Config parsing: units, every error class naming its key path, the shipped files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from mtaserver.config import ConfigError, parse_config
from mtaserver.config.units import format_duration, parse_duration, parse_rate, parse_size

ROOT = Path(__file__).resolve().parents[1]


def load(text: str, tmp_path: Path | None = None):
    return parse_config(text, (tmp_path or Path("/tmp")) / "config.toml")


def error_of(text: str, tmp_path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as exc:
        load(text, tmp_path)
    return str(exc.value)


# -- units ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("4h", 14400), ("5d", 432000), ("1h30m", 5400),
     ("250ms", 0.25), ("1.5h", 5400), (" 2 m ", 120), ("1w", 604800)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "m", "5x", "-5m", "5m garbage", "h5", "5 minutes"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("25MiB", 25 * 2**20), ("512KiB", 512 * 1024), ("10MB", 10**7), ("1000", 1000),
     ("1GiB", 2**30), ("0.5KiB", 512), ("7b", 7)],
)  # fmt: skip
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "25 parsecs", "-1MiB", "0.3B", "1e3"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("600/min", 10), ("10/s", 10), ("50000/h", 50000 / 3600), ("100/5m", 100 / 300),
     ("86400/day", 1), ("1/hour", 1 / 3600)],
)  # fmt: skip
def test_rates(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["100 per min", "100", "/s", "10/fortnight", "10/0s", "x/s"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["s", "m", "h", "d"]))
def test_duration_roundtrip(n: int, unit: str) -> None:
    assert parse_duration(format_duration(parse_duration(f"{n}{unit}"))) == parse_duration(
        f"{n}{unit}"
    )


# -- error classes name the file and key path -------------------------------------------
def test_bad_rate_names_quoted_domain_path() -> None:
    msg = error_of('[shaping."gmail.com"]\nmax_rate = "100 per min"\n')
    assert msg == (
        "config.toml: shaping.\"gmail.com\".max_rate: expected N/unit like '600/min', "
        "'10/s', '50000/h', got '100 per min'"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nhostnmae = 'x'\n", "config.toml: server.hostnmae: unknown key"),
        ("[bogus]\n", "config.toml: bogus: unknown key"),
        ("[submission]\nmax_recipients = 'ten'\n",
         "config.toml: submission.max_recipients: expected an integer, got 'ten'"),
        ("[submission]\nmax_recipients = 0\n",
         "config.toml: submission.max_recipients: expected an integer >= 1, got 0"),
        ("[submission]\nrequire_tls = 1\n",
         "config.toml: submission.require_tls: expected true or false, got 1"),
        ("[submission]\nidle_timeout = '5 minutes'\n",
         "config.toml: submission.idle_timeout: expected a duration"),
        ("[submission]\nmax_message_size = 'big'\n",
         "config.toml: submission.max_message_size: expected a size"),
        ("[submission]\ntrusted_networks = ['10.0.0.0/33']\n",
         "config.toml: submission.trusted_networks: expected CIDR networks"),
        ("[submission]\nlisten_plain = 'localhost'\n",
         "config.toml: submission.listen_plain: expected 'host:port'"),
        ("[submission]\nbare_newline = 'fix'\n",
         "config.toml: submission.bare_newline: expected one of 'normalize', 'reject'"),
        ("[delivery]\ntls = 'maybe'\n", "config.toml: delivery.tls: expected one of"),
        ("[delivery]\nnameservers = '127.0.0.1'\n",
         "config.toml: delivery.nameservers: expected a list of strings"),
        ("[delivery]\nnameservers = ['127.0.0.1:x']\n",
         "config.toml: delivery.nameservers: expected 'ip:port' entries"),
        ("[delivery]\nport = 70000\n", "config.toml: delivery.port: expected an integer <= 65535"),
        ("[tracking]\nbase_url = 'javascript:alert(1)'\n",
         "config.toml: tracking.base_url: expected an http(s) URL"),
        ("[shaping.default]\nmax_connections = -1\n",
         "config.toml: shaping.default.max_connections: expected an integer >= 1"),
        ("[shaping.'example.org']\nturbo = true\n",
         "config.toml: shaping.\"example.org\".turbo: unknown key"),
        ("dkim = 3\n", "config.toml: dkim: expected an array of tables"),
        ("[[dkim]]\ndomain = 'example.com'\n", "config.toml: dkim[0].selector: required key is missing"),
        ("[server\n", "config.toml: not valid TOML"),
        ("server = 'x'\n", "config.toml: server: expected a table"),
        ("[submission]\nlisten = '127.0.0.1:587'\n",
         "config.toml: submission.listen: needs [tls] cert and key"),
        ("[submission]\nlisten_plain = '127.0.0.1:2525'\n",
         "config.toml: submission.listen_plain: a plaintext listener accepts only trusted_networks"),
    ],
)  # fmt: skip
def test_error_names_key_path(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


def test_missing_file_paths_fail_at_load(tmp_path: Path) -> None:
    msg = error_of(f"[tls]\ncert = '{tmp_path}/nope.pem'\nkey = '{tmp_path}/nope.key'\n", tmp_path)
    assert msg.startswith("config.toml: tls.cert: file not found:")
    msg = error_of("[[dkim]]\ndomain='example.com'\nselector='s'\nkey='missing.pem'\n", tmp_path)
    assert msg == f"config.toml: dkim[0].key: file not found: {tmp_path}/missing.pem"


def test_tls_pair_must_match_and_be_strong(tmp_path: Path) -> None:
    ca = trustme.CA()
    a, b = ca.issue_cert("a.test"), ca.issue_cert("b.test")
    a.cert_chain_pems[0].write_to_path(str(tmp_path / "a.pem"))
    b.private_key_pem.write_to_path(str(tmp_path / "b.key"))
    msg = error_of("[tls]\ncert = 'a.pem'\nkey = 'b.key'\n", tmp_path)
    assert (
        msg
        == f"config.toml: tls.key: {tmp_path}/b.key: does not match the certificate in {tmp_path}/a.pem"
    )
    (tmp_path / "junk.pem").write_text("not a cert")
    msg = error_of("[tls]\ncert = 'junk.pem'\nkey = 'b.key'\n", tmp_path)
    assert msg == f"config.toml: tls.cert: {tmp_path}/junk.pem: not a PEM certificate"
    msg = error_of("[tls]\ncert = 'a.pem'\n", tmp_path)
    assert msg == "config.toml: tls.key: cert and key must be set together"
    if os.geteuid() != 0:  # root reads anything; the check only means something for others
        (tmp_path / "b.key").chmod(0)
        assert "file not readable" in error_of("[tls]\ncert = 'a.pem'\nkey = 'b.key'\n", tmp_path)


def test_weak_tls_key_is_refused(tmp_path: Path) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from mtaserver.devsetup import write_private

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "weak.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))  # fmt: skip
    (tmp_path / "w.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(tmp_path / "w.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))  # fmt: skip
    msg = error_of("[tls]\ncert = 'w.pem'\nkey = 'w.key'\n", tmp_path)
    assert msg.endswith("RSA key of 1024 bits, need at least 2048")


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = load("[server]\nhostname = 'mx.test'\ndata_dir = 'state'\n", tmp_path)
    assert cfg.server.data_dir == tmp_path / "state"
    assert cfg.storage.database == tmp_path / "state" / "mtaserver.db"
    assert cfg.delivery.port == 25 and cfg.delivery.tls == "opportunistic"
    assert cfg.submission.max_message_size == 25 * 2**20


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtaserver", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)  # fmt: skip


def test_shipped_configs_pass_check_config_after_dev_setup(tmp_path: Path) -> None:
    """What `make run` does on a fresh clone, in a copy of the tree."""
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "dev.toml", tmp_path / "config" / "dev.toml")
    dev = tmp_path / "config" / "dev.toml"
    missing = _cli("check-config", "-c", str(dev))
    assert missing.returncode == 2 and "file not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    setup = _cli("dev-setup", "-c", str(dev))
    assert setup.returncode == 0, setup.stderr
    assert (tmp_path / "certs" / "dev-dkim-example.com.pem").stat().st_mode & 0o077 == 0
    # (config/mtaserver.example.toml is checked by tests/test_packaging.py, installed as
    # README "Install" installs it.)
    done = _cli("check-config", "-c", str(dev))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("config ok:")
    assert "dkim keys" in done.stdout and "listeners" in done.stdout


def test_cli_errors_are_one_line_not_tracebacks(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[shaping."gmail.com"]\nmax_rate = "100 per min"\n')
    out = _cli("check-config", "-c", str(bad))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "mtaserver: bad.toml: shaping.\"gmail.com\".max_rate: expected N/unit like '600/min', "
        "'10/s', '50000/h', got '100 per min'"
    )
    version = _cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("mtaserver ")
    for group in ("serve", "check-config", "dev-setup"):
        helped = _cli(group, "--help")
        assert helped.returncode == 0 and "usage:" in helped.stdout
