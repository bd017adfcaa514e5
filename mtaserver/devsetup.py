"""What ``make run`` needs on a fresh clone: a self-signed certificate, DKIM keys and
secrets for the paths the config names, created only when missing."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

from mtaserver.clock import Clock, SystemClock
from mtaserver.errors import ConfigError


@dataclass(frozen=True, slots=True)
class DevFiles:
    created: tuple[Path, ...]


def write_private(path: Path, data: bytes) -> None:
    """Write a secret with mode 0600 from the first byte (no window where others can read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def self_signed(hostname: str, cert: Path, key: Path, clock: Clock | None = None) -> None:
    pk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.fromtimestamp((clock or SystemClock()).now(), dt.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost"),
                                   x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]  # fmt: skip
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pk.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(pk, hashes.SHA256())
    )
    write_private(
        key,
        pk.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert.parent.mkdir(parents=True, exist_ok=True)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def dkim_key(path: Path, algorithm: str) -> None:
    pk: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm.startswith("ed25519"):
        pk = ed25519.Ed25519PrivateKey.generate()
    else:
        pk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_private(
        path,
        pk.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def ensure_dev_files(config_path: Path) -> DevFiles:
    """Create whatever files the config names that do not exist yet."""
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{config_path}: config file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{config_path}: cannot read config file: {exc}") from None
    base = config_path.parent.resolve()

    def resolve(p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else (base / q).resolve()

    created: list[Path] = []
    server = raw.get("server", {})
    hostname = server.get("hostname", "localhost")
    data_dir = resolve(server.get("data_dir", "var"))
    data_dir.mkdir(parents=True, exist_ok=True)
    tls = raw.get("tls", {})
    if "cert" in tls and "key" in tls:
        cert, key = resolve(tls["cert"]), resolve(tls["key"])
        if not cert.exists() and not key.exists():
            self_signed(hostname, cert, key)
            created += [cert, key]
    for entry in raw.get("dkim", []):
        path = resolve(entry["key"])
        if not path.exists():
            dkim_key(path, entry.get("algorithm", "rsa-sha256"))
            created.append(path)
    secret_paths = [resolve(server.get("secret_file", str(data_dir / "secret.key")))]
    tracking = raw.get("tracking", {})
    secret_paths.append(resolve(tracking.get("secret_file", str(data_dir / "tracking.key"))))
    for path in secret_paths:
        if not path.exists():
            write_private(path, secrets.token_bytes(32).hex().encode() + b"\n")
            created.append(path)
    return DevFiles(tuple(created))


def read_secret(path: Path) -> bytes:
    """Read a secret file (hex or raw); create it (0600) when missing."""
    if not path.exists():
        write_private(path, secrets.token_bytes(32).hex().encode() + b"\n")
    data = path.read_bytes().strip()
    try:
        return bytes.fromhex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return data
