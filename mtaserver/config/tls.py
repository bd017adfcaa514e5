"""``[tls]``: the certificate our listeners present, checked at load, not at first STARTTLS."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mtaserver.config.reader import Reader


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path | None
    key: Path | None

    @property
    def enabled(self) -> bool:
        return self.cert is not None

    def server_context(self) -> ssl.SSLContext:
        """A fresh server context (call again on SIGHUP to pick up renewed files)."""
        assert self.cert is not None and self.key is not None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


def parse(r: Reader) -> TlsConfig:
    cert = r.path("cert", None, must_exist=True, readable=True)
    key = r.path("key", None, must_exist=True, readable=True)
    r.finish()
    if (cert is None) != (key is None):
        missing = "key" if key is None else "cert"
        raise r.error(missing, "cert and key must be set together")
    if cert is not None and key is not None:
        check_pair(r, cert, key)
    return TlsConfig(cert=cert, key=key)


def check_pair(r: Reader, cert_path: Path, key_path: Path) -> None:
    """The certificate parses, no certificate of the chain is signed with a digest OpenSSL
    refuses, the key parses, they match, and the key is strong enough."""
    try:
        certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
    except ValueError:
        raise r.error("cert", f"{cert_path}: not a PEM certificate") from None
    for cert in certs:
        weak = _weak_digest(cert)
        if weak is not None:
            raise r.error("cert", (
                f"{cert_path}: the certificate for {cert.subject.rfc4514_string()!r} is signed "
                f"with {weak}, which OpenSSL refuses to load (CA_MD_TOO_WEAK); have it reissued "
                "signed with SHA-256 (openssl x509 -req ... -sha256, or your CA's default)"
            ))  # fmt: skip
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise r.error("key", f"{key_path}: not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        raise r.error("key", f"{key_path}: RSA key of {key.key_size} bits, need at least 2048")
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise r.error("key", f"{key_path}: unsupported key type")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if certs[0].public_key().public_bytes(enc, pub) != key.public_key().public_bytes(enc, pub):
        raise r.error("key", f"{key_path}: does not match the certificate in {cert_path}")


def _weak_digest(cert: x509.Certificate) -> str | None:
    """'SHA-1' or 'MD5' if ``cert`` is signed with it; None otherwise.

    As OpenSSL 3 (from security level 1, the lowest default: it rates both digests under
    80 bits), which does not check the signature of a self-signed certificate (a root in
    the chain file is trusted as itself, not by its signature)."""
    if cert.issuer == cert.subject:
        return None
    try:
        digest = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None  # OpenSSL decides; its error is reported at load
    if isinstance(digest, hashes.SHA1):
        return "SHA-1"
    if isinstance(digest, hashes.MD5):
        return "MD5"
    return None
