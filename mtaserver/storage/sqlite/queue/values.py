"""The queue's values: ids, the frozen rows operators see, and the body codec seam."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_queue_id(now: float) -> str:
    """16 characters, time-ordered (48-bit milliseconds) plus 32 random bits, Crockford base32."""
    ms = int(now * 1000) & ((1 << 48) - 1)
    value = (ms << 32) | secrets.randbits(32)
    chars = []
    for _ in range(16):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class RecipientInfo:
    idx: int
    address: str
    state: str
    attempts: int
    next_attempt: float
    last_reply: str


@dataclass(frozen=True, slots=True)
class MessageInfo:
    queue_id: str
    sender: str
    user: str | None
    client_ip: str
    received_at: float
    size: int
    message_id: str
    campaign: str | None
    recipients: tuple[RecipientInfo, ...]


@dataclass(frozen=True, slots=True)
class QueueEntry:
    queue_id: str
    idx: int
    address: str
    domain: str
    state: str
    attempts: int
    next_attempt: float
    last_reply: str
    received_at: float
    sender: str


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """Non-final recipients by destination and age bucket (like Postfix's qshape)."""

    buckets: tuple[str, ...]  # bucket labels, e.g. ("5m", "10m", ...)
    rows: tuple[tuple[str, int, tuple[int, ...]], ...]  # (domain, total, counts per bucket)
    by_state: tuple[tuple[str, int], ...]


AGE_BUCKETS = ((300, "5m"), (600, "10m"), (1800, "30m"), (3600, "1h"), (14400, "4h"),
               (86400, "1d"), (432000, "5d"), (float("inf"), "older"))  # fmt: skip


class BodyCodec(Protocol):
    """How bodies are stored (``mtaserver.crypto`` encrypts them at rest)."""

    def encode(self, data: bytes) -> bytes: ...

    def decode(self, blob: bytes) -> bytes: ...


class IdentityCodec:
    def encode(self, data: bytes) -> bytes:
        return data

    def decode(self, blob: bytes) -> bytes:
        return blob
