"""``[[dkim]]`` config and key loading: unsafe or weak keys are refused, naming the key path."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mtaserver.app.mail import dkim_service
from mtaserver.config import ConfigError, parse_config
from mtaserver.dkim import DkimKeyError, DkimSigner, KeySet
from mtaserver.dkim import keys as K
from mtaserver.keyfiles import check_key_files
from tests.support.clock import FakeClock


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def _pem(key: K.PrivateKey) -> bytes:
    return K.private_pem(key)


@pytest.fixture(scope="module")
def rsa_pem() -> bytes:
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def rsa_pem_b() -> bytes:
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _config(tmp_path: Path, entries: str) -> str:
    return f'[server]\nhostname = "mta.example.com"\ndata_dir = "{tmp_path}/var"\n' + entries


def _entry(domain: str, selector: str, key: Path, algorithm: str = "", extra: str = "") -> str:
    alg = f'algorithm = "{algorithm}"\n' if algorithm else ""
    return f'[[dkim]]\ndomain = "{domain}"\nselector = "{selector}"\nkey = "{key}"\n{alg}{extra}\n'


def _parse(tmp_path: Path, entries: str):  # type: ignore[no-untyped-def]
    return check_key_files(parse_config(_config(tmp_path, entries), tmp_path / "mtaserver.toml"))


def test_valid_keys_load_into_a_keyset(tmp_path: Path, rsa_pem: bytes, rsa_pem_b: bytes) -> None:
    a = _write(tmp_path / "a.pem", rsa_pem)
    b = _write(tmp_path / "b.pem", rsa_pem_b)
    e = _write(tmp_path / "e.pem", _pem(ed25519.Ed25519PrivateKey.generate()))
    cfg = _parse(
        tmp_path,
        _entry("Example.COM.", "s2026", a)
        + _entry("example.com", "s2025", b, extra="active = false")
        + _entry("example.com", "ed2026", e, "ed25519-sha256"),
    )
    assert [(k.domain, k.selector, k.algorithm, k.active) for k in cfg.dkim] == [
        ("example.com", "s2026", "rsa-sha256", True),
        ("example.com", "s2025", "rsa-sha256", False),
        ("example.com", "ed2026", "ed25519-sha256", True),
    ]
    ks = K.load_keyset(cfg.dkim)
    assert len(ks.keys) == 3
    assert [k.selector for k in ks.signing["example.com"]] == ["s2026", "ed2026"]
    assert ks.domains() == ("example.com",)


def test_small_rsa_key_refused(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = _write(tmp_path / "weak.pem", _pem(weak))
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, _entry("example.com", "s1", path))
    msg = str(info.value)
    assert msg.startswith("mtaserver.toml: dkim[0].key: ")
    assert "1024-bit" in msg and "2048" in msg


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_key_accessible_by_others_refused(tmp_path: Path, rsa_pem: bytes, mode: int) -> None:
    path = _write(tmp_path / "k.pem", rsa_pem, mode)
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, _entry("example.com", "s1", path))
    assert "dkim[0].key" in str(info.value)
    assert f"chmod 600 {path}" in str(info.value)


def test_mode_0400_is_fine(tmp_path: Path, rsa_pem: bytes) -> None:
    path = _write(tmp_path / "k.pem", rsa_pem, 0o400)
    assert _parse(tmp_path, _entry("example.com", "s1", path)).dkim[0].key == path


def test_algorithm_must_match_key(tmp_path: Path, rsa_pem: bytes) -> None:
    path = _write(tmp_path / "k.pem", rsa_pem)
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, _entry("example.com", "s1", path, "ed25519"))
    assert "dkim[0].key" in str(info.value) and "rsa key" in str(info.value)


def test_garbage_key_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "k.pem", b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(ConfigError, match=r"dkim\[0\]\.key: .*not a usable PEM key"):
        _parse(tmp_path, _entry("example.com", "s1", path))
    path2 = _write(tmp_path / "k2.pem", b"hello")
    with pytest.raises(ConfigError, match=r"dkim\[0\]\.key: .*not a PEM private key"):
        _parse(tmp_path, _entry("example.com", "s1", path2))


def test_missing_key_file_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dkim\[0\]\.key: file not found"):
        _parse(tmp_path, _entry("example.com", "s1", tmp_path / "nope.pem"))


def test_two_active_keys_per_algorithm_refused(
    tmp_path: Path, rsa_pem: bytes, rsa_pem_b: bytes
) -> None:
    a = _write(tmp_path / "a.pem", rsa_pem)
    b = _write(tmp_path / "b.pem", rsa_pem_b)
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, _entry("example.com", "s1", a) + _entry("example.com", "s2", b))
    assert "dkim[1].active" in str(info.value)
    assert "exactly one key per algorithm" in str(info.value)
    # different domains may each have their active key
    cfg = _parse(tmp_path, _entry("example.com", "s1", a) + _entry("example.org", "s1", b))
    assert set(K.load_keyset(cfg.dkim).signing) == {"example.com", "example.org"}


def test_duplicate_selector_and_bad_names_refused(tmp_path: Path, rsa_pem: bytes) -> None:
    a = _write(tmp_path / "a.pem", rsa_pem)
    entries = _entry("example.com", "s1", a) + _entry(
        "example.com", "s1", a, extra="active = false"
    )
    with pytest.raises(ConfigError, match=r"dkim\[1\]\.selector: .*also"):
        _parse(tmp_path, entries)
    with pytest.raises(ConfigError, match=r"dkim\[0\]\.selector"):
        _parse(tmp_path, _entry("example.com", "bad selector", a))
    with pytest.raises(ConfigError, match=r"dkim\[0\]\.domain"):
        _parse(tmp_path, _entry("localhost", "s1", a))
    with pytest.raises(ConfigError, match=r"dkim\[0\]\.colour: unknown key"):
        _parse(tmp_path, _entry("example.com", "s1", a, extra='colour = "red"'))


def test_dkimpy_ed25519_seed_format_loads(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    path = _write(tmp_path / "ed.key", base64.b64encode(seed) + b"\n")
    loaded = K.load_key(path, domain="example.com", selector="e", where="dkim[0].key")
    assert loaded.algorithm is K.Algorithm.ED25519
    assert loaded.public_b64 == K.public_b64(key)


def test_keygen_refuses_small_rsa() -> None:
    with pytest.raises(DkimKeyError):
        K.generate_key(K.Algorithm.RSA, 1024)


def test_lookup_walks_to_parent_but_not_to_tld(tmp_path: Path, rsa_pem: bytes) -> None:
    path = _write(tmp_path / "a.pem", rsa_pem)
    ks = KeySet.build(
        [
            K.load_key(path, domain="example.co.uk", selector="s"),
            K.load_key(path, domain="localhost", selector="s"),
        ]
    )
    found = ks.lookup("a.b.example.co.uk")
    assert found is not None and found[0] == "example.co.uk"
    assert ks.lookup("other.co.uk") is None
    assert ks.lookup("uk") is None
    assert ks.lookup("localhost") is not None  # an exact match is always used


async def test_sighup_reload_swaps_active_selector(
    tmp_path: Path, rsa_pem: bytes, rsa_pem_b: bytes
) -> None:
    """The app's dkim service loads the new config's keys and swaps them in; a bad key file
    fails the reload and leaves the signer on its old keys."""
    a = _write(tmp_path / "a.pem", rsa_pem)
    b = _write(tmp_path / "b.pem", rsa_pem_b)
    before = _parse(
        tmp_path,
        _entry("example.com", "s1", a) + _entry("example.com", "s2", b, extra="active = false"),
    )
    after = _parse(
        tmp_path,
        _entry("example.com", "s1", a, extra="active = false") + _entry("example.com", "s2", b),
    )
    signer = DkimSigner(K.load_keyset(before.dkim), FakeClock())
    service = dkim_service(signer)
    msg = b"From: a@example.com\r\nSubject: x\r\n\r\nhi\r\n"
    assert b"s=s1;" in await signer.sign(msg)
    await service.reload(after)
    signed = await signer.sign(msg)
    assert b"s=s2;" in signed and b"s=s1;" not in signed
    os.chmod(a, 0o644)
    with pytest.raises(DkimKeyError):
        await service.reload(before)
    assert b"s=s2;" in await signer.sign(msg)
