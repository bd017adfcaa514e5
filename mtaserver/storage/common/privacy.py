"""The privacy owners' backend-free parts: which per-contact data owners join an erase or
an export, the consent proofs an erase keeps, and the shape of an export — the same on
SQLite (:mod:`mtaserver.storage.sqlite.privacy`) and PostgreSQL.

The rules themselves (what an erase removes, what it keeps) are :mod:`mtaserver.privacy`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from mtaserver.errors import StorageError
from mtaserver.storage.sqlite.contacts import Contact
from mtaserver.storage.sqlite.queue.values import BodyCodec

PERSONAL_KEYS: Final = ("user_agent", "client_ip", "proxy", "ip")  # of the erased person's hits
# Tables handled explicitly, or that never hold addresses of mail recipients.
SKIP_TABLES: Final = frozenset({
    "messages", "recipients", "events", "suppressions", "soft_bounces", "users",
    "user_domains", "meta", "schema_migrations", "webhook_outbox", "webhook_endpoints",
    "sqlite_sequence", "contacts", "consent_proofs", "privacy_keys",
})  # fmt: skip
UNREADABLE: Final = "(encrypted with a key that is not configured)"


class ContactDataOwner(Protocol):
    """A table owner holding data about a contact (its events, journeys, ...): the privacy
    requests export and erase through it. ``export_for`` returns JSON-ready data (every
    owner's rows for the address); ``erase_for`` deletes them, returning how many rows."""

    async def export_for(self, address: str) -> Any: ...

    async def erase_for(self, address: str) -> int: ...


class _JourneyStore(Protocol):
    async def export_address(self, address: str) -> dict[str, object]: ...

    async def erase_for(self, address: str) -> int: ...


class JourneyData:
    """A contact's events and trigger steps, every owner's, through either backend's
    journey store (their rows also go with the contact's own delete: the foreign keys
    cascade)."""

    def __init__(self, store: _JourneyStore) -> None:
        self._store = store

    async def export_for(self, address: str) -> Any:
        return await self._store.export_address(address.strip().lower())

    async def erase_for(self, address: str) -> int:
        return await self._store.erase_for(address.strip().lower())


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 of an address (or IP) under the database's random proof key."""
    return hmac.new(key, value.strip().lower().encode(), hashlib.sha256).hexdigest()


def proof_rows(key: bytes, contacts: Sequence[Contact], now: float) -> list[tuple[object, ...]]:
    """The ``consent_proofs`` rows ``(address_hash, owner, list_name, status, source, at,
    ip_hash, erased_at)`` an erase keeps of each contact: its consent and each list's
    membership, with the address and the IP as keyed hashes (GDPR art. 17(3)(b),(e) and
    art. 7(1): the controller must be able to show that consent was given; the person is
    not identifiable from the row without being presented again)."""
    rows: list[tuple[object, ...]] = []
    for c in contacts:
        addr = keyed_hash(key, c.address)
        ip = keyed_hash(key, "ip:" + c.consent_ip) if c.consent_ip else None
        rows.append((addr, c.owner, None, c.consent_status, c.consent_source, c.consent_at,
                     ip, now))  # fmt: skip
        for m in c.lists:
            source = "confirm" if m.confirmed_at is not None else "added"
            rows.append((addr, c.owner, m.list_name, m.status, source,
                         m.confirmed_at or m.added_at, None, now))  # fmt: skip
    return rows


def mentions(recipient: str | None, data: str | None, addr: str, pat: re.Pattern[str]) -> bool:
    """Whether an event found by a loose text match is about ``addr``: its recipient, or
    the address as a whole word in its data."""
    return (recipient or "").lower() == addr or bool(pat.search(data or ""))


def body_reader(codec: BodyCodec, bodies: bool) -> Callable[[bytes | None], str | None]:
    """How an export shows a stored body: its text (None when bodies are not asked for),
    or a note when it is encrypted with a key this node does not have."""

    def text(blob: bytes | None) -> str | None:
        if blob is None or not bodies:
            return None
        with contextlib.suppress(StorageError):
            return codec.decode(bytes(blob)).decode("utf-8", "replace")
        return UNREADABLE

    return text


def with_bodies(
    rows: list[dict[str, Any]], text: Callable[[bytes | None], str | None]
) -> list[dict[str, Any]]:
    """``rows`` with each ``body`` column read by ``text``."""
    for row in rows:
        row["body"] = text(row["body"])
    return rows


def mentioning_events(
    rows: Iterable[dict[str, Any]], addr: str, pat: re.Pattern[str]
) -> list[dict[str, Any]]:
    """The events of ``rows`` about ``addr`` (:func:`mentions`), their data decoded."""
    events = []
    for e in rows:
        if mentions(e["recipient"], e["data"], addr, pat):
            with contextlib.suppress(ValueError):
                e["data"] = json.loads(e["data"])
            events.append(e)
    return events


def json_ready(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a table no owner claims, bytes as hex."""
    return [{k: (v.hex() if isinstance(v, bytes) else v) for k, v in r.items()} for r in rows]


def export_doc(
    addr: str, generated_at: float, contacts: Iterable[Contact], proofs: list[dict[str, Any]],
    received: list[dict[str, Any]], sent: list[dict[str, Any]], events: list[dict[str, Any]],
    suppressions: list[dict[str, Any]], soft_bounces: list[dict[str, Any]],
    user: list[dict[str, Any]], other: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:  # fmt: skip
    """The export of everything stored about ``addr`` (the per-contact data owners' part,
    ``contact_data``, is added by the caller)."""
    return {
        "address": addr,
        "generated_at": generated_at,
        "contacts": [{"owner": c.owner, **c.as_json()} for c in contacts],
        "consent_proofs": proofs,
        "received": received,
        "sent": sent,
        "events": events,
        "suppressions": suppressions,
        "soft_bounces": soft_bounces,
        "user_account": user[0] if user else None,
        "other": other,
    }
