"""Privacy requests about one address: ``export`` everything held, ``erase`` it.

``erase`` removes or anonymizes every trace of the address in the database:

- its recipient rows: address → an opaque token (``erased-<random>@erased.invalid``, one per
  erase, so per-recipient statistics still add up), domain → ``erased.invalid``, replies
  scrubbed; a recipient still queued is cancelled (final state ``suppressed``);
- queued messages whose body mentions it (To/Cc headers, per-recipient copies) or that it
  sent: the bodies go and their other pending recipients are cancelled too — content cannot
  be rewritten without breaking DKIM;
- events: the recipient column, and the address wherever it appears inside the JSON data;
  the user agent and client IP of its opens and clicks are dropped;
- the sender/user columns of messages it sent; its soft-bounce counter;
- any other table (tracking, future ones) whose text columns mention it;
- its suppression entries are kept as SHA-256 hashes (``suppression.hash_entries``), so mail
  to it stays suppressed while the address itself is gone;
- its contacts (every owner's: attributes, consent, list memberships) are deleted; their
  consent is kept as proof in ``consent_proofs`` — owner, list, status, source and time,
  with the address and the IP as HMAC-SHA256 under a random per-database key — so an owner
  can still show that consent was given (or withdrawn) when the person presents the
  address again, but the rows name nobody; then every other owner of contact data
  (``storage.sqlite.privacy.contact_data_owners``) erases its rows.

The user account table is left alone (``mtaserver user remove`` deletes an account); the
result says when one exists. Matching is case-insensitive and bounded: erasing
``bob@example.com`` does not touch ``jimbob@example.com``.

Work is found on the read connection and applied in batches of ``BATCH`` rows per write, so
a long history never holds the writer for long; a last pass catches rows written meanwhile.
The writer runs with ``secure_delete`` (db.configure), so deleted content is overwritten in
the file; after the erase the WAL is checkpointed and truncated so old page images go too.
The finding and rewriting is the storage backend's (``storage.sqlite.privacy``, through
the table owners); this module holds the rules and the order of the steps.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from mtaserver.clock import Clock, SystemClock
from mtaserver.errors import MtaError
from mtaserver.model import ErasePlan, Redaction

BATCH = 500


class BodyReader(Protocol):
    def decode(self, blob: bytes) -> bytes: ...


class PrivacyStore(Protocol):
    """The storage side of a request (``storage.sqlite.privacy.SqlitePrivacy``)."""

    async def leased_with(self, address: str) -> int: ...

    async def erase_contacts(self, address: str, now: float) -> tuple[int, int, int]: ...

    async def find(self, red: Redaction, codec: Any) -> ErasePlan: ...

    async def cancel_messages(self, ids: Sequence[str], now: float) -> tuple[int, int]: ...

    async def erase_recipients(
        self, rowids: Sequence[int], red: Redaction, now: float
    ) -> tuple[int, int]: ...

    async def erase_messages(self, ids: Sequence[str], red: Redaction) -> int: ...

    async def erase_events(self, ids: Sequence[int], red: Redaction) -> int: ...

    async def scrub_other(self, table: str, rowids: Sequence[int], red: Redaction) -> int: ...

    async def finish(
        self, red: Redaction, suppress: bool, now: float, summary: dict[str, str | int]
    ) -> tuple[int, int, bool]: ...

    async def checkpoint(self) -> bool: ...

    async def export(
        self, addr: str, pat: re.Pattern[str], codec: Any, bodies: bool, generated_at: float
    ) -> dict[str, Any]: ...


class _Identity:
    def decode(self, blob: bytes) -> bytes:
        return blob


class PrivacyError(MtaError):
    """The request cannot be carried out as asked (e.g. not an address)."""


def normalize(address: str) -> str:
    addr = address.strip().strip("<>").strip().lower()
    local, _, domain = addr.rpartition("@")
    if not local or not domain or any(c.isspace() for c in addr) or "." not in domain:
        raise PrivacyError(f"not an email address: {address!r}")
    return addr


def _pattern(addr: str) -> re.Pattern[str]:
    """The address as a whole word: not inside a longer local part or domain."""
    return re.compile(
        r"(?<![A-Za-z0-9._%+\-=/])" + re.escape(addr) + r"(?![A-Za-z0-9\-]|\.[A-Za-z0-9])",
        re.IGNORECASE,
    )


@dataclass
class EraseResult:
    address_token: str
    recipients: int = 0
    cancelled: int = 0  # recipients (of any address) whose delivery was cancelled
    bodies_removed: int = 0  # messages whose queued/kept content was removed
    messages: int = 0  # messages whose sender/user fields were anonymized
    events: int = 0
    suppressions_hashed: int = 0
    contacts: int = 0  # contact rows deleted (one per owner holding the address)
    consent_proofs: int = 0  # hashed proof rows kept of their consent and memberships
    contact_data: int = 0  # rows erased by the other contact data owners
    soft_bounces: int = 0
    other: dict[str, int] = field(default_factory=dict)  # table → rows scrubbed
    user_account: bool = False  # a submission user of that name exists (not touched)
    checkpointed: bool = False
    in_flight: int = 0  # deliveries still leased when erasing: run the erase again later

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chunks(items: Sequence[Any], n: int = BATCH) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


async def erase(
    store: PrivacyStore,
    address: str,
    *,
    codec: BodyReader | None = None,
    suppress: bool = False,
    now: float | None = None,
    wait_leased: float = 30.0,
    clock: Clock | None = None,
) -> EraseResult:
    """Remove or anonymize every trace of ``address``; keep its suppressions as hashes.

    ``suppress`` also adds a global (hashed) suppression when there is none, so mail to the
    address is refused from now on. Safe while the daemon runs; idempotent. A delivery to the
    address in flight (leased) is waited for up to ``wait_leased`` seconds, since its result
    would otherwise be recorded after the erase; ``in_flight`` counts those still leased.
    """
    addr = normalize(address)
    clock = clock or SystemClock()
    t = clock.now() if now is None else now
    reader = codec or _Identity()
    token = f"erased-{secrets.token_hex(6)}@erased.invalid"
    red = Redaction(addr, token, _pattern(addr))
    result = EraseResult(address_token=token)
    result.in_flight = await _wait_for_leases(store, addr, wait_leased, clock)
    # First: the contact rows would otherwise be rewritten by the generic scrub below.
    result.contacts, result.consent_proofs, result.contact_data = await store.erase_contacts(
        addr, t
    )
    for _ in range(5):  # a last pass catches rows written while the previous one ran
        found = await store.find(red, reader)
        if found.empty():
            break
        for chunk in _chunks(found.bodies, 100):
            removed, cancelled = await store.cancel_messages(chunk, t)
            result.bodies_removed += removed
            result.cancelled += cancelled
        for chunk in _chunks(found.recipients):
            own, cancelled = await store.erase_recipients(chunk, red, t)
            result.recipients += own
            result.cancelled += cancelled
        for chunk in _chunks(found.messages):
            result.messages += await store.erase_messages(chunk, red)
        for chunk in _chunks(found.events):
            result.events += await store.erase_events(chunk, red)
        for table, rowids in found.other.items():
            for chunk in _chunks(rowids):
                n = await store.scrub_other(table, chunk, red)
                result.other[table] = result.other.get(table, 0) + n
    summary: dict[str, str | int] = {
        "token": token,
        "recipients": result.recipients,
        "events": result.events,
    }
    hashed, soft, user = await store.finish(red, suppress, t, summary)
    result.suppressions_hashed, result.soft_bounces, result.user_account = hashed, soft, user
    result.checkpointed = await store.checkpoint()
    return result


async def _wait_for_leases(store: PrivacyStore, addr: str, wait: float, clock: Clock) -> int:
    """Let deliveries in flight to the address finish; how many are still leased."""
    deadline = clock.monotonic() + wait
    while True:
        leased = await store.leased_with(addr)
        if not leased or clock.monotonic() >= deadline:
            return leased
        await clock.sleep(0.2)


async def export(
    store: PrivacyStore,
    address: str,
    *,
    codec: BodyReader | None = None,
    bodies: bool = True,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """Everything the database holds about ``address``, as JSON-ready data."""
    addr = normalize(address)
    generated_at = (clock or SystemClock()).now()
    return await store.export(addr, _pattern(addr), codec or _Identity(), bodies, generated_at)
