"""Signed per-recipient return paths (VERP), so a bounce maps back to ``(queue_id, idx)``.

An address looks like ``<prefix>+<token>@<domain>`` where the token is
``<queue id>-<idx>-<mac>``, all lower case: some MTAs lower-case local parts on the way
back, so everything in the token survives that. A queue id made only of lower-case letters
and digits is written as is (tag ``r``); any other queue id is base32-encoded (tag ``b``).
The MAC is HMAC-SHA256 over the queue id and index, truncated to 80 bits, base32 — enough
that nobody can forge a bounce for a recipient they did not send to, and short enough to
keep the local part under the 64 octets RFC 5321 allows for ordinary queue ids.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

_RAW_QID = re.compile(r"[a-z0-9]+")
_MAC_BYTES = 10


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _unb32(text: str) -> bytes:
    pad = "=" * (-len(text) % 8)
    return base64.b32decode(text.upper() + pad)


class Verp:
    """Builds and checks VERP return paths; pure, holds only its key and names."""

    def __init__(self, secret: bytes, prefix: str, domain: str) -> None:
        if not secret:
            raise ValueError("VERP secret must not be empty")
        if not prefix or "@" in prefix or "+" in prefix:
            raise ValueError(f"invalid VERP prefix {prefix!r}")
        if not domain or "@" in domain:
            raise ValueError(f"invalid VERP domain {domain!r}")
        self._secret = secret
        self._prefix = prefix.lower()
        self._domain = domain.lower().rstrip(".")

    def _mac(self, queue_id: str, idx: int) -> str:
        msg = queue_id.encode("utf-8") + b"\x00" + str(idx).encode("ascii")
        return _b32(hmac.new(self._secret, msg, hashlib.sha256).digest()[:_MAC_BYTES])

    def address(self, queue_id: str, idx: int) -> str:
        """The return path for recipient ``idx`` of message ``queue_id``."""
        if idx < 0:
            raise ValueError("recipient index must be >= 0")
        if not queue_id:
            raise ValueError("queue id must not be empty")
        if _RAW_QID.fullmatch(queue_id):
            qid = "r" + queue_id
        else:
            qid = "b" + _b32(queue_id.encode("utf-8"))
        return f"{self._prefix}+{qid}-{idx}-{self._mac(queue_id, idx)}@{self._domain}"

    def parse(self, address: str) -> tuple[str, int] | None:
        """``(queue_id, idx)`` when ``address`` is one of ours with a valid MAC, else None."""
        addr = address.strip().strip("<>").strip().lower()
        local, sep, domain = addr.rpartition("@")
        if not sep or domain.rstrip(".") != self._domain:
            return None
        head = self._prefix + "+"
        if not local.startswith(head):
            return None
        parts = local[len(head) :].split("-")
        if len(parts) != 3:
            return None
        qid_part, idx_part, mac = parts
        if not idx_part.isascii() or not idx_part.isdigit() or len(idx_part) > 9:
            return None
        if idx_part != str(int(idx_part)):
            return None
        if len(qid_part) < 2:
            return None
        tag, body = qid_part[0], qid_part[1:]
        if tag == "r" and _RAW_QID.fullmatch(body):
            queue_id = body
        elif tag == "b":
            try:
                queue_id = _unb32(body).decode("utf-8")
            except (binascii.Error, ValueError):
                return None
        else:
            return None
        idx = int(idx_part)
        if not hmac.compare_digest(
            mac.encode("ascii", "replace"), self._mac(queue_id, idx).encode()
        ):
            return None
        return queue_id, idx
