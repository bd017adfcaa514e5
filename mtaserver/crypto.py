"""Encryption at rest for queued message bodies (``[storage] encryption_key_file``).

A body is stored as ``MAGIC | len(key id) | key id | nonce | AES-256-GCM(body)``; the key id
and magic are the associated data, so a record cannot be relabelled to another key. Every
record names its key, so keys rotate without re-encrypting the queue: add a new key, mark it
current, SIGHUP; bodies written under the old key still decrypt as long as it stays in the
file. Bodies written before encryption was turned on (no magic) are read as they are.

Key file (TOML, mode 0600)::

    current = "2026-11"
    [keys]
    "2026-10" = "base64 of 32 random bytes"
    "2026-11" = "..."

``mtaserver storage keygen FILE`` writes or extends one.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mtaserver.errors import MtaError, StorageError

MAGIC = b"\x00MTE1"  # a stored body never starts with NUL: plain bodies start with a header
_NONCE = 12
_KEY_BYTES = 32


class KeyFileError(MtaError):
    """The key file is missing, unreadable or malformed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Keyring:
    """Every key that may decrypt, and the one that encrypts."""

    keys: tuple[tuple[str, bytes], ...]
    current: str

    def key(self, key_id: str) -> bytes | None:
        for kid, key in self.keys:
            if kid == key_id:
                return key
        return None


def parse_keyring(text: str, where: str) -> Keyring:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KeyFileError(f"{where}: not valid TOML: {exc}") from None
    unknown = set(data) - {"current", "keys"}
    if unknown:
        raise KeyFileError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    table = data.get("keys")
    if not isinstance(table, dict) or not table:
        raise KeyFileError(f"{where}: expected a [keys] table with at least one key")
    keys: list[tuple[str, bytes]] = []
    for kid, value in table.items():
        if not kid.isascii() or not 0 < len(kid) < 256:
            raise KeyFileError(f"{where}: keys.{kid}: key ids are 1-255 ASCII characters")
        try:
            key = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{where}: keys.{kid}: expected base64") from None
        if len(key) != _KEY_BYTES:
            raise KeyFileError(
                f"{where}: keys.{kid}: expected {_KEY_BYTES} bytes (AES-256), got {len(key)}"
            )
        keys.append((kid, key))
    current = data.get("current")
    if not isinstance(current, str) or current not in table:
        raise KeyFileError(f"{where}: current: expected the id of a key in [keys], got {current!r}")
    return Keyring(tuple(keys), current)


def load_keyring(path: Path) -> Keyring:
    """Read and check a key file; refuses files other users can read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: key file must not be readable by others (chmod 600)")
    return parse_keyring(text, str(path))


def generate_key(path: Path, key_id: str | None = None) -> str:
    """Add a fresh key to ``path`` (created with mode 0600) and make it current."""
    if path.exists():
        ring = load_keyring(path)
        keys = list(ring.keys)
    else:
        keys = []
    kid = key_id or f"k{len(keys) + 1}-{secrets.token_hex(3)}"
    if any(k == kid for k, _ in keys):
        raise KeyFileError(f"{path}: key id {kid!r} already exists")
    keys.append((kid, secrets.token_bytes(_KEY_BYTES)))
    lines = [
        "# mtaserver storage encryption keys: keep every key that may still decrypt a body.",
        f'current = "{kid}"',
        "[keys]",
    ]
    lines += [f'"{k}" = "{base64.b64encode(v).decode()}"' for k, v in keys]
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write key file: {exc.strerror}") from None
    return kid


class PlainCodec:
    """No encryption configured: bodies are stored as they are; encrypted ones are refused."""

    def encode(self, data: bytes) -> bytes:
        return data

    def decode(self, blob: bytes) -> bytes:
        if blob.startswith(MAGIC):
            raise StorageError(
                "queued body is encrypted but [storage] encryption_key_file is not set"
            )
        return blob


class AesGcmCodec:
    """Encrypts with the current key; decrypts with whichever key the record names."""

    def __init__(self, ring: Keyring) -> None:
        self._ciphers = {kid: AESGCM(key) for kid, key in ring.keys}
        self._current = ring.current
        self._header = MAGIC + bytes([len(ring.current)]) + ring.current.encode("ascii")

    @property
    def current(self) -> str:
        return self._current

    def encode(self, data: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        sealed = self._ciphers[self._current].encrypt(nonce, data, self._header)
        return self._header + nonce + sealed

    def decode(self, blob: bytes) -> bytes:
        if not blob.startswith(MAGIC):
            return blob  # written before encryption was turned on
        n = len(MAGIC)
        klen = blob[n]
        header = blob[: n + 1 + klen]
        kid = header[n + 1 :].decode("ascii", "replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise StorageError(f"queued body is encrypted with key {kid!r}, not in the key file")
        nonce = blob[len(header) : len(header) + _NONCE]
        try:
            return cipher.decrypt(nonce, blob[len(header) + _NONCE :], header)
        except InvalidTag:
            raise StorageError(f"queued body failed authentication under key {kid!r}") from None


def key_id_of(blob: bytes) -> str | None:
    """The key id a stored body was encrypted with, or None for a plain body."""
    if not blob.startswith(MAGIC):
        return None
    n = len(MAGIC)
    return blob[n + 1 : n + 1 + blob[n]].decode("ascii", "replace")


def codec_for(key_file: Path | None) -> PlainCodec | AesGcmCodec:
    return AesGcmCodec(load_keyring(key_file)) if key_file is not None else PlainCodec()
