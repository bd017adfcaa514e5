"""Signed links for a person's consent: the double opt-in confirm link and the preferences
page link.

Layout before base64url (no padding)::

    kind(1) | varint(issued, unix seconds) | AES-SIV(owner NUL list NUL address) | HMAC[:16]

The HMAC (SHA-256, 16 bytes, compared in constant time before anything is decrypted) and
the AES-SIV key are derived from the tracking secrets with their own labels, so such a
token can never pass as a pixel, click or unsubscribe token, nor one of those as this. The
encrypted part keeps the address out of URLs that proxies and logs see (the token's head is
the associated data). Every secret of the file verifies, the first signs: a rotation keeps
links already in mailboxes working. A confirm token expires (``CONFIRM_MAX_AGE``); a
preferences token does not (an unsubscribe must keep working) and carries issue time 0, so
:func:`preferences_url` is pure: the same person always gets the same link.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from mtaserver.tracking.tokens import TokenCodec, TokenError

CONFIRM: Final = 0x21
PREFERENCES: Final = 0x22
CONFIRM_MAX_AGE: Final = 7 * 86400.0
_MAC_LEN = 16
_MAX_CHARS = 2048
_MAC_INFO = b"mtaserver consent token v1"
_SEAL_INFO = b"mtaserver consent address key v1"


@dataclass(frozen=True, slots=True)
class ConsentToken:
    kind: int
    owner: str
    list_name: str  # "" in a preferences token
    address: str
    issued: int


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise TokenError("truncated integer")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7


class ConsentTokens:
    """Issues and verifies consent tokens from the tracking codec, or from signing keys as
    :attr:`TokenCodec.key` gives them (derived from the secret file, not its raw lines)."""

    def __init__(self, codec_or_key: TokenCodec | bytes | tuple[bytes, ...]) -> None:
        self._source = codec_or_key

    def _keys(self) -> tuple[bytes, ...]:
        src = self._source
        if isinstance(src, TokenCodec):
            return src.keys  # read per call: a SIGHUP rotation applies at once
        return (src,) if isinstance(src, bytes) else src

    def issue(self, kind: int, owner: str, list_name: str, address: str, issued: int) -> str:
        if any("\0" in x for x in (owner, list_name, address)):
            raise ValueError("NUL in a consent token field")
        key = self._keys()[0]
        head = bytes([kind]) + _varint(max(0, issued))
        sealed = AESSIV(hmac.digest(key, _SEAL_INFO, "sha256")).encrypt(
            f"{owner}\0{list_name}\0{address}".encode(), [head]
        )
        payload = head + sealed
        mac = hmac.digest(hmac.digest(key, _MAC_INFO, "sha256"), payload, "sha256")[:_MAC_LEN]
        return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode("ascii")

    def confirm_token(self, owner: str, list_name: str, address: str, issued: float) -> str:
        return self.issue(CONFIRM, owner, list_name, address, int(issued))

    def preferences_token(self, owner: str, address: str) -> str:
        return self.issue(PREFERENCES, owner, "", address, 0)

    def verify(
        self, token: str, kind: int, now: float | None = None, max_age: float | None = None
    ) -> ConsentToken:
        """What the token says, or TokenError (bad, another kind, or older than max_age)."""
        if not token or len(token) > _MAX_CHARS or len(token) % 4 == 1:
            raise TokenError("bad token encoding")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise TokenError("bad token encoding") from None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            raise TokenError("non-canonical token encoding")
        if len(raw) < _MAC_LEN + 2:
            raise TokenError("token too short")
        payload, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        match = None
        for key in self._keys():
            mk = hmac.digest(key, _MAC_INFO, "sha256")
            if hmac.compare_digest(hmac.digest(mk, payload, "sha256")[:_MAC_LEN], mac):
                match = match or key
        if match is None:
            raise TokenError("bad token signature")
        if payload[0] != kind:
            raise TokenError("another kind of token")
        issued, pos = _read_varint(payload, 1)
        try:
            plain = AESSIV(hmac.digest(match, _SEAL_INFO, "sha256")).decrypt(
                payload[pos:], [payload[:pos]]
            )
            owner, list_name, address = plain.decode("utf-8").split("\0")
        except (InvalidTag, UnicodeDecodeError, ValueError):
            raise TokenError("bad address part") from None
        if max_age is not None and now is not None and not now - max_age <= issued <= now + 300:
            raise TokenError("expired token")
        return ConsentToken(kind, owner, list_name, address, issued)


def preferences_url(
    codec_or_key: TokenCodec | bytes | tuple[bytes, ...], base_url: str, owner: str, address: str
) -> str:
    """The person's preferences page (``{base_url}/p/{token}``); pure and deterministic."""
    token = ConsentTokens(codec_or_key).preferences_token(owner, address.strip().lower())
    return f"{base_url.rstrip('/')}/p/{token}"


def confirm_url(tokens: ConsentTokens, base_url: str, owner: str, list_name: str,
                address: str, issued: float) -> str:  # fmt: skip
    """The double opt-in link (``{base_url}/s/{token}``), valid for CONFIRM_MAX_AGE."""
    return f"{base_url.rstrip('/')}/s/{tokens.confirm_token(owner, list_name, address, issued)}"
