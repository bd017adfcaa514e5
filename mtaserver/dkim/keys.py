"""DKIM private keys: load and validate them, generate new ones, hold them as one immutable set.

A key that would produce signatures receivers reject (RSA under 2048 bits) or that leaks
(a file other users can read) is refused at load, so a bad key fails at ``check-config`` and
on SIGHUP rather than at the first message. Errors name the config key path.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import stat
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mtaserver.config.dkim import normalize_domain as normalize_domain
from mtaserver.dkim.errors import DkimKeyError

MIN_RSA_BITS = 2048

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class Algorithm(enum.StrEnum):
    RSA = "rsa"
    ED25519 = "ed25519"

    @classmethod
    def from_config(cls, value: str) -> Algorithm:
        """``rsa``, ``rsa-sha256``, ``ed25519`` or ``ed25519-sha256``."""
        return cls(value.removesuffix("-sha256"))

    @property
    def signature_algorithm(self) -> bytes:
        """The ``a=`` tag value (RFC 6376 / RFC 8463); sha1 is never used."""
        return b"rsa-sha256" if self is Algorithm.RSA else b"ed25519-sha256"


@dataclass(frozen=True, slots=True)
class DkimKey:
    """One configured selector with its loaded private key."""

    domain: str  # lower-case A-label, no trailing dot
    selector: str
    algorithm: Algorithm
    path: str
    active: bool  # signs new mail; inactive keys stay listed for publication (rotation)
    private_key: PrivateKey = field(repr=False, compare=False)
    public_b64: str  # the p= value

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def record_text(self) -> str:
        """The TXT record content, unsplit (see ``records.split_txt``)."""
        return txt_record_text(self.algorithm, self.public_b64)

    @property
    def bits(self) -> int:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.key_size
        return 256


def txt_record_text(algorithm: Algorithm, public_b64: str) -> str:
    return f"v=DKIM1; k={algorithm.value}; p={public_b64}"


def public_b64(key: PrivateKey) -> str:
    """The base64 public key as published in ``p=``: SPKI DER for RSA, raw 32 bytes for Ed25519."""
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode("ascii")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def load_key(
    path: str | Path,
    *,
    domain: str,
    selector: str,
    algorithm: Algorithm | None = None,
    active: bool = True,
    where: str = "dkim.key",
) -> DkimKey:
    """Read and check one private key file; ``where`` is the config key path for errors."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise DkimKeyError(f"{where}: key file {p} does not exist") from None
    except OSError as exc:
        raise DkimKeyError(f"{where}: cannot stat key file {p}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DkimKeyError(f"{where}: key file {p} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise DkimKeyError(
            f"{where}: key file {p} is accessible by group or others (mode {mode:04o}); "
            f"run: chmod 600 {p}"
        )
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"{where}: cannot read key file {p}: {exc.strerror}") from None
    key = _parse_private_key(data, algorithm, where, p)
    found = Algorithm.RSA if isinstance(key, rsa.RSAPrivateKey) else Algorithm.ED25519
    if algorithm is not None and found is not algorithm:
        raise DkimKeyError(
            f"{where}: key file {p} holds an {found.value} key but algorithm is {algorithm.value!r}"
        )
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise DkimKeyError(
            f"{where}: key file {p} is a {key.key_size}-bit RSA key; "
            f"at least {MIN_RSA_BITS} bits are required"
        )
    return DkimKey(
        domain=normalize_domain(domain),
        selector=selector,
        algorithm=found,
        path=str(p),
        active=active,
        private_key=key,
        public_b64=public_b64(key),
    )


def _parse_private_key(data: bytes, algorithm: Algorithm | None, where: str, p: Path) -> PrivateKey:
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise DkimKeyError(f"{where}: key file {p} is not a usable PEM key: {exc}") from None
        if isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            return key
        raise DkimKeyError(f"{where}: key file {p} is neither an RSA nor an Ed25519 key")
    # dkimpy's dknewkey writes Ed25519 keys as the base64 of the 32-byte seed.
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == 32 and algorithm in (None, Algorithm.ED25519):
        return ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    raise DkimKeyError(f"{where}: key file {p} is not a PEM private key")


def generate_key(algorithm: Algorithm, bits: int = MIN_RSA_BITS) -> PrivateKey:
    if algorithm is Algorithm.RSA:
        if bits < MIN_RSA_BITS:
            raise DkimKeyError(f"RSA keys need at least {MIN_RSA_BITS} bits, got {bits}")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return ed25519.Ed25519PrivateKey.generate()


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write the key with mode 0600 from the first byte (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))
    os.chmod(path, 0o600)


@dataclass(frozen=True, slots=True)
class KeySet:
    """Every configured key, and for each domain its active key per algorithm.

    Immutable: a reload builds a new KeySet and swaps the reference in one assignment.
    """

    keys: tuple[DkimKey, ...] = ()
    signing: Mapping[str, tuple[DkimKey, ...]] = field(
        default_factory=lambda: types.MappingProxyType({})
    )

    @classmethod
    def build(cls, keys: Iterable[DkimKey]) -> KeySet:
        all_keys = tuple(keys)
        by_domain: dict[str, dict[Algorithm, DkimKey]] = {}
        for key in all_keys:
            if not key.active:
                continue
            slot = by_domain.setdefault(key.domain, {})
            if key.algorithm in slot:
                other = slot[key.algorithm]
                raise DkimKeyError(
                    f"dkim: domain {key.domain} has two active {key.algorithm.value} keys "
                    f"(selectors {other.selector!r} and {key.selector!r}); "
                    "set active = false on the one that must not sign"
                )
            slot[key.algorithm] = key
        signing = {
            d: tuple(slot[a] for a in (Algorithm.RSA, Algorithm.ED25519) if a in slot)
            for d, slot in by_domain.items()
        }
        return cls(keys=all_keys, signing=types.MappingProxyType(signing))

    def lookup(self, from_domain: str) -> tuple[str, tuple[DkimKey, ...]] | None:
        """The signing domain and its active keys: the From domain or its nearest parent."""
        labels = from_domain.split(".")
        for i in range(len(labels)):
            if i > 0 and len(labels) - i < 2:
                break  # never walk up to a top-level domain
            candidate = ".".join(labels[i:])
            found = self.signing.get(candidate)
            if found:
                return candidate, found
        return None

    def domains(self) -> tuple[str, ...]:
        return tuple(sorted({k.domain for k in self.keys}))


class KeyEntry(Protocol):
    """What a ``[[dkim]]`` entry provides (``config.dkim.DkimKeyConfig``)."""

    @property
    def domain(self) -> str: ...
    @property
    def selector(self) -> str: ...
    @property
    def key(self) -> Path: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def active(self) -> bool: ...
    @property
    def where(self) -> str: ...


def load_keyset(entries: Sequence[KeyEntry]) -> KeySet:
    """Load every configured key (at start-up and on SIGHUP) into a new KeySet."""
    return KeySet.build(
        load_key(
            e.key,
            domain=e.domain,
            selector=e.selector,
            algorithm=Algorithm.from_config(e.algorithm),
            active=e.active,
            where=f"{e.where}.key",
        )
        for e in entries
    )
