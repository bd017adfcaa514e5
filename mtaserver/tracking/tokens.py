"""Compact, URL-safe, HMAC-signed tracking tokens.

A token names one recipient of one message, ``(queue_id, idx)``, and what it is for: the
open pixel, a click (with the link's target signed into the token, so a click never needs a
lookup and the redirect target can only be what mtaserver issued), or the unsubscribe
endpoint. Layout before base64url (no padding)::

    kind(1) | len(queue_id)(1) | queue_id | varint(idx) | [click: varint(link) varint(links)
    | url (deflated when that is shorter)] | [unsubscribe: AES-SIV(address NUL sender
    domain)] | HMAC-SHA256(key, payload)[:16]

An unsubscribe token carries its recipient's address and the sender's domain, encrypted
(AES-SIV, the token's head as associated data, so equal addresses do not look alike
across messages): an unsubscribe must work long after retention has removed the message
from the queue tables, and a URL that proxies and logs see must not show the address.
Unsubscribe tokens without that part (issued before it existed) still verify; they need
the queue tables.

The key is derived from the ``[tracking] secret_file``; every line of that file is a
secret, the first signs and all verify, so the secret can be rotated without breaking
links already in mailboxes. Verification is constant-time (``hmac.compare_digest``) and
happens before anything in the payload is trusted or decompressed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

OPEN = 1
CLICK = 2
UNSUBSCRIBE = 3
_KINDS = frozenset({OPEN, CLICK, UNSUBSCRIBE})
_DEFLATED = 0x80  # flag in the kind byte: the click URL is raw-deflated
_MAC_LEN = 16
_DEFLATE_GAIN = 12  # bytes a deflated URL must save
_MAX_TOKEN_CHARS = 4096
_MAX_URL_BYTES = 8192
_KEY_INFO = b"mtaserver tracking token v1"
_SEAL_INFO = b"mtaserver tracking address key v1"


_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_NOT_B64URL = re.compile(r"[^A-Za-z0-9_-]")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_PADDING = ("", "", "==", "=")  # by len % 4 (1 is refused before)


class TokenError(ValueError):
    """A token that mtaserver did not issue (bad encoding, bad signature, bad payload)."""


class TokenData(NamedTuple):
    """What a verified token says (a NamedTuple: one is made per request)."""

    kind: int  # OPEN, CLICK or UNSUBSCRIBE
    queue_id: str
    idx: int
    url: str | None = None  # CLICK only: the original http(s) target
    link: int = 0  # CLICK only: position of the link in the message
    links: int = 0  # CLICK only: how many tracked links the message has
    address: str | None = None  # UNSUBSCRIBE only: the recipient (None in older tokens)
    sender_domain: str | None = None  # UNSUBSCRIBE only: whose mail to stop


@functools.lru_cache(maxsize=16384)
def is_trackable_url(url: str) -> bool:
    """Only absolute http/https URLs with a host are ever signed into a click token.

    Memoized: a campaign's links are the same for every recipient who clicks them.
    """
    if _CONTROL_OR_SPACE.search(url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def load_secrets(path: Path) -> tuple[bytes, ...]:
    """Read the secret file: one secret per non-empty line, the first one signs."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read tracking secret: {exc.strerror}") from None
    secrets = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not secrets:
        raise ValueError(f"{path}: tracking secret file is empty")
    if any(len(s) < 16 for s in secrets):
        raise ValueError(f"{path}: tracking secrets must be at least 16 bytes")
    return secrets


def _derive(secret: bytes, info: bytes = _KEY_INFO) -> bytes:
    return hmac.digest(secret, info, "sha256")


class _Hmac:
    """HMAC-SHA256 with the key's inner and outer blocks hashed once, up front.

    ``hmac.digest`` sets the key up again on every call; copying two prepared SHA-256
    states is about half the work, and this runs for every pixel and click.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = key.ljust(64, b"\0")  # a derived key is 32 bytes: never longer than a block
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def mac(self, payload: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:_MAC_LEN]


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("negative integer in token")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 35:
            raise TokenError("truncated integer")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7


@dataclass(frozen=True, slots=True)
class _Secrets:
    """Everything derived from the secret file, swapped as one value on reload (tokens may
    be issued on a worker thread while the loop reloads)."""

    keys: tuple[bytes, ...]
    macs: tuple[_Hmac, ...]
    seals: tuple[AESSIV, ...]


def _secrets(secrets: tuple[bytes, ...]) -> _Secrets:
    if not secrets:
        raise ValueError("at least one tracking secret is needed")
    keys = tuple(_derive(s) for s in secrets)
    return _Secrets(
        keys, tuple(_Hmac(k) for k in keys), tuple(AESSIV(_derive(s, _SEAL_INFO)) for s in secrets)
    )


class TokenCodec:
    """Issues and verifies tokens with the configured secrets."""

    def __init__(self, secrets: tuple[bytes, ...]) -> None:
        self._s = _secrets(secrets)

    def reload(self, secrets: tuple[bytes, ...]) -> None:
        """New secrets (a rotation: a new first line signs, the old ones still verify)."""
        self._s = _secrets(secrets)

    @property
    def key(self) -> bytes:
        """The signing key (also used to hash client IPs when privacy says so)."""
        return self._s.keys[0]

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Every verifying key, the signing one first (other signed links derive theirs)."""
        return self._s.keys

    def _seal(self, payload: bytes, s: _Secrets | None = None) -> str:
        raw = payload + (s or self._s).macs[0].mac(payload)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def _head(self, kind: int, queue_id: str, idx: int) -> bytes:
        qid = queue_id.encode("ascii")
        if not 0 < len(qid) < 256:
            raise ValueError("queue id must be 1..255 ASCII characters")
        return bytes([kind, len(qid)]) + qid + _varint(idx)

    def open_token(self, queue_id: str, idx: int) -> str:
        return self._seal(self._head(OPEN, queue_id, idx))

    def unsubscribe_token(
        self, queue_id: str, idx: int, address: str | None = None, sender_domain: str = ""
    ) -> str:
        """With ``address``, the token can unsubscribe it without the queue tables."""
        head = self._head(UNSUBSCRIBE, queue_id, idx)
        if address is None:
            return self._seal(head)
        if "\0" in address or "\0" in sender_domain:
            raise ValueError("NUL in an address")
        plain = f"{address}\0{sender_domain}".encode()
        s = self._s
        return self._seal(head + s.seals[0].encrypt(plain, [head]), s)

    def click_token(self, queue_id: str, idx: int, url: str, link: int = 0, links: int = 1) -> str:
        """Sign ``url`` into a click token; refuses anything but an http(s) URL."""
        if not is_trackable_url(url):
            raise ValueError("only http and https URLs are tracked")
        body = url.encode("utf-8")
        if len(body) > _MAX_URL_BYTES:
            raise ValueError("URL too long to track")
        kind = CLICK
        packed = zlib.compress(body, 9, wbits=-15)
        if len(packed) + _DEFLATE_GAIN <= len(body):  # else not worth inflating per click
            kind |= _DEFLATED
            body = packed
        head = self._head(kind, queue_id, idx) + _varint(link) + _varint(links)
        return self._seal(head + body)

    def verify(self, token: str) -> TokenData:
        """Return what the token says, or raise TokenError; the MAC is checked first."""
        n = len(token)
        if not n or n > _MAX_TOKEN_CHARS or n % 4 == 1 or _NOT_B64URL.search(token):
            raise TokenError("bad token encoding")
        # Only the canonical encoding is accepted, so one token has exactly one spelling:
        # the bits of the last character beyond the data must be zero.
        if n % 4 and _B64URL.index(token[-1]) & (0x0F if n % 4 == 2 else 0x03):
            raise TokenError("non-canonical token encoding")
        try:  # the character set was checked above
            raw = binascii.a2b_base64((token + _PADDING[n % 4]).encode().translate(_FROM_URLSAFE))
        except (binascii.Error, ValueError):
            raise TokenError("bad token encoding") from None
        if len(raw) <= _MAC_LEN + 3:
            raise TokenError("token too short")
        payload, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        key = -1
        s = self._s
        for i, signer in enumerate(s.macs):
            if hmac.compare_digest(signer.mac(payload), mac) and key < 0:
                key = i
        if key < 0:
            raise TokenError("bad token signature")
        return self._parse(payload, s.seals[key])

    def _parse(self, payload: bytes, seal: AESSIV) -> TokenData:
        kind = payload[0] & 0x7F
        deflated = bool(payload[0] & _DEFLATED)
        if kind not in _KINDS or (deflated and kind != CLICK):
            raise TokenError("unknown token kind")
        qlen = payload[1]
        qid_bytes = payload[2 : 2 + qlen]
        if len(qid_bytes) != qlen or qlen == 0:
            raise TokenError("truncated queue id")
        try:
            queue_id = qid_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise TokenError("bad queue id") from None
        idx, pos = _read_varint(payload, 2 + qlen)
        if kind == UNSUBSCRIBE and pos < len(payload):
            return _open_unsubscribe(payload, pos, seal, queue_id, idx)
        if kind != CLICK:
            if pos != len(payload):
                raise TokenError("trailing bytes")
            return TokenData(kind, queue_id, idx)
        link, pos = _read_varint(payload, pos)
        links, pos = _read_varint(payload, pos)
        body = payload[pos:]
        try:
            if deflated:
                d = zlib.decompressobj(wbits=-15)
                body = d.decompress(body, _MAX_URL_BYTES + 1)
                if len(body) > _MAX_URL_BYTES or not d.eof:
                    raise TokenError("bad URL")
            url = body.decode("utf-8")
        except (zlib.error, UnicodeDecodeError):
            raise TokenError("bad URL") from None
        if not is_trackable_url(url):
            raise TokenError("URL is not http(s)")
        return TokenData(kind, queue_id, idx, url, link, links)


def _open_unsubscribe(payload: bytes, pos: int, seal: AESSIV, queue_id: str, idx: int) -> TokenData:
    """Decrypt the address part with the secret whose MAC matched."""
    try:
        plain = seal.decrypt(payload[pos:], [payload[:pos]])
        address, sep, domain = plain.decode("utf-8").partition("\0")
    except (InvalidTag, UnicodeDecodeError):
        raise TokenError("bad address part") from None
    if not sep or "@" not in address:
        raise TokenError("bad address part")
    return TokenData(UNSUBSCRIBE, queue_id, idx, address=address, sender_domain=domain)
