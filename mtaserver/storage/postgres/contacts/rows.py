"""The statements the PostgreSQL contact store shares: rows → dataclasses, batched upserts,
list memberships, and the consent change the suppression owner makes in its transaction.

Batches are one statement each over ``unnest`` of arrays (one round trip for a chunk of
1,000 rows, whatever its size). An upsert is two statements, INSERT … ON CONFLICT DO
NOTHING RETURNING for the new addresses, then one UPDATE … FROM for the others, so the
existing rows get SQLite's json_patch merge and consent rule with the row's own values
(excluded.* would only carry the merged result). A chunk that names an address twice is
cut into rounds, each address at most once per round, in order: the same result as
SQLite's row-by-row executemany.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from mtaserver.contacts import ContactInput
from mtaserver.storage.postgres.db import Connection
from mtaserver.storage.sqlite.contacts import (
    CONSENT_SOURCES,
    Contact,
    ListInfo,
    Membership,
    Upserted,
    _contact,
    _list,
)

COLUMNS: Final = (
    "id, owner, address, attributes::text, consent_status, consent_source, consent_at, "
    "consent_ip, created_at, updated_at"
)
C_COLUMNS: Final = ", ".join("c." + col for col in COLUMNS.split(", "))
_UNNEST = "unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::bool[])"
_INSERT = (
    "INSERT INTO contacts (owner, address, attributes, consent_status, consent_source, "
    "consent_at, consent_ip, created_at, updated_at) "
    "SELECT $1, u.address, mta_json_patch('{}', u.attrs::jsonb), coalesce(u.consent, "
    f"'subscribed'), $2, $3, u.ip, $3, $3 FROM {_UNNEST} AS u(address, attrs, consent, ip, "
    "resub) ON CONFLICT (owner, address) DO NOTHING RETURNING address"
)
# An unsubscribed contact changes only with resubscribe (as SQLite's _CHANGE).
_CHANGE = ("(u.consent IS NOT NULL AND u.consent <> c.consent_status AND "
           "(c.consent_status <> 'unsubscribed' OR u.resub))")  # fmt: skip
_UPDATE = (
    "UPDATE contacts c SET attributes = CASE WHEN u.attrs = '{}' THEN c.attributes "
    "ELSE mta_json_patch(c.attributes, u.attrs::jsonb) END, "
    f"consent_status = CASE WHEN {_CHANGE} THEN u.consent ELSE c.consent_status END, "
    f"consent_source = CASE WHEN {_CHANGE} THEN $2 ELSE c.consent_source END, "
    f"consent_at = CASE WHEN {_CHANGE} THEN $3 ELSE c.consent_at END, "
    f"consent_ip = CASE WHEN {_CHANGE} THEN u.ip ELSE c.consent_ip END, "
    f"updated_at = $3 FROM {_UNNEST} AS u(address, attrs, consent, ip, resub) "
    "WHERE c.owner = $1 AND c.address = u.address"
)
LIST: Final = "SELECT id, owner, name, double_opt_in, created_at"
COUNTED: Final = ", (SELECT count(*) FROM list_members m WHERE m.list_id = lists.id)"


def count_of(status: str) -> int:
    """The row count of a command tag (``UPDATE 3``, ``INSERT 0 5``)."""
    return int(str(status).split()[-1])


def contact(row: Any, lists: tuple[Membership, ...] = ()) -> Contact:
    return _contact(tuple(row), lists)


def list_info(row: Any) -> ListInfo:
    return _list(tuple(row))


def _rounds(rows: Sequence[ContactInput]) -> list[list[ContactInput]]:
    """``rows`` cut so each address is at most once per round, its rows in order."""
    rounds: list[list[ContactInput]] = []
    seen: dict[str, int] = {}
    for c in rows:
        k = seen.get(c.address, 0)
        seen[c.address] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(c)
    return rounds


def _arrays(part: Sequence[ContactInput]) -> list[object]:
    return [[c.address for c in part], [c.attributes for c in part], [c.consent for c in part],
            [c.consent_ip for c in part], [bool(c.resubscribe) for c in part]]  # fmt: skip


async def upsert_rows(
    conn: Connection, owner: str, rows: Sequence[ContactInput], source: str, now: float
) -> Upserted:
    """Upsert ``rows`` (one chunk) inside the caller's transaction; created and updated."""
    # A generic plan of the UPDATE (asyncpg prepares, PostgreSQL goes generic after five
    # runs) was once a nested loop over the whole table: 9 s for one 1,000-row chunk.
    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
    created = 0
    for part in _rounds(rows):
        part.sort(key=lambda c: c.address)  # one lock order: fewer deadlocks between nodes
        new = {r[0] for r in await conn.fetch(_INSERT, owner, source, now, *_arrays(part))}
        created += len(new)
        rest = [c for c in part if c.address not in new]
        if rest:
            await conn.execute(_UPDATE, owner, source, now, *_arrays(rest))
    return Upserted(created, len(rows) - created)


async def ids_of(conn: Connection, owner: str, addresses: Sequence[str]) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT address, id FROM contacts WHERE owner = $1 AND address = ANY($2::text[])",
        owner, list(addresses),
    )  # fmt: skip
    return {str(r[0]): int(r[1]) for r in rows}


async def list_row(
    conn: Connection, owner: str, name: str, counted: bool = False
) -> ListInfo | None:
    row = await conn.fetchrow(
        f"{LIST}{COUNTED if counted else ''} FROM lists WHERE owner = $1 AND name = $2",
        owner, name,
    )  # fmt: skip
    return None if row is None else list_info(row)


async def add_members(
    conn: Connection, lst: ListInfo, ids: Sequence[int], status: str | None, now: float
) -> int:
    """Add contacts to a list (members already on it keep their status); how many were new."""
    st = status or ("unconfirmed" if lst.double_opt_in else "subscribed")
    confirmed = now if st == "subscribed" else None
    done = await conn.execute(
        "INSERT INTO list_members (list_id, contact_id, status, added_at, confirmed_at) "
        "SELECT $1, u.id, $3, $4, $5 FROM unnest($2::int8[]) AS u(id) ORDER BY u.id "
        "ON CONFLICT (list_id, contact_id) DO NOTHING",
        lst.id, list(ids), st, now, confirmed,
    )  # fmt: skip
    return count_of(done)


async def memberships(conn: Connection, contact_id: int) -> tuple[Membership, ...]:
    rows = await conn.fetch(
        "SELECT l.name, m.status, m.added_at, m.confirmed_at FROM list_members m "
        'JOIN lists l ON l.id = m.list_id WHERE m.contact_id = $1 ORDER BY l.name COLLATE "C"',
        contact_id,
    )
    return tuple(
        Membership(str(n), str(s), float(a), None if c is None else float(c)) for n, s, a, c in rows
    )


async def unsubscribe_in(
    conn: Connection, address: str, source: str, at: float, *, sender_domain: str | None = None
) -> int:
    """Mark contacts with ``address`` unsubscribed inside the caller's transaction (the
    suppression owner's); how many changed. ``sender_domain`` None reaches every owner's
    contact; else only the owners of that sending domain's (as SQLite's)."""
    if source not in CONSENT_SOURCES:
        raise ValueError(f"consent source {source!r}: one of {CONSENT_SOURCES}")
    addr = address.strip().strip("<>").strip().lower()
    sql = (
        "UPDATE contacts SET consent_status = 'unsubscribed', consent_source = $1, "
        "consent_at = $2, consent_ip = NULL, updated_at = $2 WHERE address = $3 "
        "AND consent_status <> 'unsubscribed'"
    )
    params: list[object] = [source, at, addr]
    if sender_domain is not None:
        sql += ' AND owner IN (SELECT "user" FROM user_domains WHERE domain = $4)'
        params.append(sender_domain.strip().lower().rstrip("."))
    return count_of(await conn.execute(sql, *params))


async def contacts_of(conn: Connection, address: str) -> list[Contact]:
    """Every owner's contact with ``address`` (a privacy export, or what an erase removes)."""
    rows = await conn.fetch(
        f'SELECT {COLUMNS} FROM contacts WHERE address = $1 ORDER BY owner COLLATE "C"',
        address.strip().lower(),
    )
    return [contact(r, await memberships(conn, int(r[0]))) for r in rows]


async def erase_contacts_in(conn: Connection, address: str) -> list[Contact]:
    """Delete every owner's contact with ``address`` (memberships go with them); the
    contacts as they were, for the caller's proof records."""
    found = await contacts_of(conn, address)
    await conn.execute("DELETE FROM contacts WHERE id = ANY($1::int8[])", [c.id for c in found])
    return found
