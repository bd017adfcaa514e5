"""``[tls]`` certificates signed with SHA-1 or MD5: refused by the config check, as OpenSSL
refuses them at load — and a self-signed root in the chain, whose signature OpenSSL does
not check, is not. Each case is also loaded into OpenSSL, so the check and OpenSSL agree."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from mtaserver.config import ConfigError, parse_config
from mtaserver.devsetup import write_private

NOW = dt.datetime.now(dt.UTC)


# sha256WithRSAEncryption, and what replaces it: cryptography (>= 45) no longer signs a
# certificate with SHA-1 or MD5, so the test builds one with SHA-256 and re-signs its
# to-be-signed part with the weak digest (the OIDs have one length: a byte swap).
_RSA_SHA256 = bytes.fromhex("06092a864886f70d01010b")
_WEAK_OID = {"sha1": bytes.fromhex("06092a864886f70d010105"),
             "md5": bytes.fromhex("06092a864886f70d010104")}  # fmt: skip


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, key: rsa.RSAPrivateKey, issuer: str, signer: rsa.RSAPrivateKey,
    digest: hashes.HashAlgorithm, *, ca: bool = False,
) -> x509.Certificate:  # fmt: skip
    cert = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1)).not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )  # fmt: skip
    if isinstance(digest, hashes.SHA256):
        return cert
    oid = _WEAK_OID[digest.name]
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(_RSA_SHA256) == 1
    tbs = tbs.replace(_RSA_SHA256, oid)
    signature = signer.sign(tbs, padding.PKCS1v15(), digest)
    algorithm = _der(0x30, oid + b"\x05\x00")
    der = _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature))
    weak = x509.load_der_x509_certificate(der)
    assert isinstance(weak.signature_hash_algorithm, type(digest))
    return weak


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """A CA's key and the leaf's (2048 bits: the key check passes, only digests differ)."""
    return tuple(rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in "ab")  # type: ignore[return-value]


def _files(tmp_path: Path, leaf_key: rsa.RSAPrivateKey, *chain: x509.Certificate) -> str:
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    (tmp_path / "cert.pem").write_bytes(pem)
    (tmp_path / "key.pem").unlink(missing_ok=True)
    write_private(tmp_path / "key.pem", leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))  # fmt: skip
    return "[tls]\ncert = 'cert.pem'\nkey = 'key.pem'\n"


def _openssl_loads(tmp_path: Path) -> bool:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    except ssl.SSLError as exc:
        assert "CA_MD_TOO_WEAK" in str(exc) or "too weak" in str(exc).lower(), exc
        return False
    return True


@pytest.mark.parametrize(("digest", "named"), [(hashes.SHA1(), "SHA-1"), (hashes.MD5(), "MD5")])
def test_a_leaf_signed_with_a_weak_digest_is_refused_naming_the_file_and_the_fix(
    tmp_path: Path, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    digest: hashes.HashAlgorithm, named: str,
) -> None:  # fmt: skip
    ca_key, leaf_key = keys
    leaf = _cert("mta.test", leaf_key, "weak ca", ca_key, digest)
    text = _files(tmp_path, leaf_key, leaf)
    assert not _openssl_loads(tmp_path)
    with pytest.raises(ConfigError) as exc:
        parse_config(text, tmp_path / "config.toml")
    assert str(exc.value) == (
        f"config.toml: tls.cert: {tmp_path}/cert.pem: the certificate for 'CN=mta.test' is "
        f"signed with {named}, which OpenSSL refuses to load (CA_MD_TOO_WEAK); have it "
        "reissued signed with SHA-256 (openssl x509 -req ... -sha256, or your CA's default)"
    )


def test_the_chain_is_checked_but_not_a_self_signed_roots_signature(
    tmp_path: Path, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    ca_key, leaf_key = keys
    leaf = _cert("mta.test", leaf_key, "intermediate", ca_key, hashes.SHA256())
    # an intermediate (same key as the leaf's issuer, for brevity) signed with SHA-1: refused
    weak = _cert("intermediate", ca_key, "root", leaf_key, hashes.SHA1(), ca=True)
    text = _files(tmp_path, leaf_key, leaf, weak)
    assert not _openssl_loads(tmp_path)
    with pytest.raises(ConfigError, match="certificate for 'CN=intermediate' is signed with SHA-1"):
        parse_config(text, tmp_path / "config.toml")
    # a self-signed SHA-1 root in the file: OpenSSL loads it, so the check passes it too
    root = _cert("intermediate", ca_key, "intermediate", ca_key, hashes.SHA1(), ca=True)
    text = _files(tmp_path, leaf_key, leaf, root)
    assert _openssl_loads(tmp_path)
    cfg = parse_config(text, tmp_path / "config.toml")
    assert cfg.tls.cert == tmp_path / "cert.pem"
