"""The suppression list: addresses we must not send to, and why.

Scope: an entry is either **global** (``scope=None``) or limited to one **sending domain**.
Reasons about the address itself — unknown user, disabled mailbox, non-existent domain, too
many soft bounces — are global: the mailbox is just as dead for every sender on this server.
Complaints and unsubscribes are per sending domain: a recipient who reported brand A's
newsletter has said nothing about brand B's invoices. ``check(address, sender_domain)``
therefore matches global entries and entries for that sending domain.

What a bounce does to the list is data (``[inbound.suppression.policy]``): category →
``suppress`` | ``suppress-sender`` | ``count`` | ``ignore``. ``count`` adds to a rolling
soft-bounce counter; N soft bounces within M days suppress the address for a while.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from mtaserver.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Suppression:
    address: str
    scope: str | None  # None = global; else the sending domain
    reason: str
    source: str
    created_at: float
    expires_at: float | None
    event_id: int | None = None
    queue_id: str | None = None


def normalize(address: str) -> str:
    return address.strip().strip("<>").strip().lower()


def valid_address(address: str) -> str:
    """``address`` if it looks like one (``local@domain``, no spaces); the CLI and the admin
    API refuse the same strings."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or not local or not domain or " " in address:
        raise ConfigError(f"not an email address: {address!r}")
    return address


def address_hash(address: str) -> str:
    """How an erased address stays on the list (``mtaserver privacy erase``).

    A SHA-256 of the normalized address: the address itself is gone, yet ``check`` of the
    same address still matches. Not a secret: whoever holds a candidate address can test it,
    which is exactly what keeps it suppressed.
    """
    digest = hashlib.sha256(b"mtaserver-suppression\x00" + normalize(address).encode())
    return "sha256:" + digest.hexdigest()


def _scope_key(scope: str | None) -> str:
    return (scope or "").strip().lower().rstrip(".")
