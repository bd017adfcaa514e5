"""The privacy requests' storage side on PostgreSQL: the only writer of ``consent_proofs``
and ``privacy_keys``; what :mod:`mtaserver.privacy` needs, as
:class:`mtaserver.storage.sqlite.privacy.SqlitePrivacy` gives it on SQLite.

The same rules, through the PostgreSQL owners' erase functions (queue, events,
suppressions, contacts), for the whole cluster: an erase on any node finds the address in
every node's mail. Tables no owner here handles are scrubbed generically, as on SQLite:
every text (or jsonb) column that mentions the address, rows named by ``ctid``. There is
no WAL file of ours to truncate: :meth:`PgPrivacy.checkpoint` VACUUMs the rewritten
tables, so the old row versions are freed for reuse (PostgreSQL's own WAL recycling and
backups are the operator's, see the README).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from mtaserver.errors import StorageError
from mtaserver.model import ErasePlan, Event, Redaction
from mtaserver.storage.common import privacy as shared
from mtaserver.storage.common.privacy import (
    PERSONAL_KEYS,
    SKIP_TABLES,
    ContactDataOwner,
    JourneyData,
)
from mtaserver.storage.postgres.contacts.rows import contacts_of, erase_contacts_in
from mtaserver.storage.postgres.db import Connection, PgDatabase
from mtaserver.storage.postgres.events import erase_event, insert_events
from mtaserver.storage.postgres.journeys import PgJourneyStore
from mtaserver.storage.postgres.queue import erase as q
from mtaserver.storage.postgres.suppressions import add_hashed, forget_soft_bounces, hash_entries
from mtaserver.storage.sqlite.contacts import Contact
from mtaserver.storage.sqlite.queue.values import BodyCodec
from mtaserver.suppression import address_hash

# SQLite skips its join tables of ids (WITHOUT ROWID there): the same tables here.
_SKIP: Final = SKIP_TABLES | {"list_members", "optin_sent", "template_versions"}
_TEXT_TYPES: Final = ("text", "character varying", "jsonb")
_VACUUM: Final = "VACUUM messages, recipients, events, suppressions, soft_bounces, contacts"


def contact_data_owners(db: PgDatabase) -> dict[str, ContactDataOwner]:
    """The owners of per-contact data (as ``storage.sqlite.privacy.contact_data_owners``)."""
    return {"journeys": JourneyData(PgJourneyStore(db))}


async def _proof_key(conn: Connection) -> bytes:
    return bytes(await conn.fetchval("SELECT key FROM privacy_keys WHERE name='consent_proof'"))


async def proof_hash(conn: Connection, value: str) -> str:
    """HMAC-SHA256 of an address (or IP) under this database's random proof key."""
    return shared.keyed_hash(await _proof_key(conn), value)


async def _keep_proofs(conn: Connection, contacts: Sequence[Contact], now: float) -> int:
    """What an erase keeps of each contact (as the SQLite owner's ``_keep_proofs``)."""
    if not contacts:
        return 0
    rows = shared.proof_rows(await _proof_key(conn), contacts, now)
    await conn.executemany(
        "INSERT INTO consent_proofs (address_hash, owner, list_name, status, source, at, "
        "ip_hash, erased_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        rows,
    )
    return len(rows)


async def _text_columns(conn: Connection) -> dict[str, list[tuple[str, str]]]:
    rows = await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND data_type = ANY($1::text[]) "
        "ORDER BY table_name, ordinal_position",
        list(_TEXT_TYPES),
    )
    out: dict[str, list[tuple[str, str]]] = {}
    for table, col, kind in rows:
        if table not in _SKIP:
            out.setdefault(str(table), []).append((str(col), str(kind)))
    return out


def _mentions(cols: Sequence[tuple[str, str]]) -> str:
    return " OR ".join(f'strpos(lower("{c}"::text), $1) > 0' for c, _ in cols)


async def _find(conn: Connection, red: Redaction, codec: BodyCodec) -> ErasePlan:
    addr, pat = red.address, red.pattern
    recipients, messages, mentioned = await q.find_in_queue(conn, addr, pat, codec)
    events = [
        int(r[0])
        for r in await conn.fetch(
            "SELECT id, recipient, data FROM events WHERE lower(recipient)=$1 "
            "OR strpos(lower(data), $1) > 0",
            addr,
        )
        if shared.mentions(r[1], r[2], addr, pat)
    ]
    other: dict[str, tuple[Any, ...]] = {}
    for table, cols in (await _text_columns(conn)).items():
        found = await conn.fetch(f'SELECT ctid::text FROM "{table}" WHERE {_mentions(cols)}', addr)
        if found:
            other[table] = tuple(str(r[0]) for r in found)
    return ErasePlan(
        tuple(recipients),  # type: ignore[arg-type]  # (queue_id, idx) keys on PostgreSQL
        tuple(messages), tuple(sorted(mentioned)), tuple(events), other,
    )  # fmt: skip


async def _scrub_other(conn: Connection, table: str, ctids: Sequence[str], red: Redaction) -> int:
    cols = (await _text_columns(conn)).get(table, [])
    if not cols:
        return 0
    names = ", ".join(f'"{c}"::text' for c, _ in cols)
    sets = ", ".join(f'"{c}" = ${i + 2}::{k}' for i, (c, k) in enumerate(cols))
    done = 0
    for ctid in ctids:
        row = await conn.fetchrow(f'SELECT {names} FROM "{table}" WHERE ctid = $1::tid', ctid)
        if row is None:
            continue
        values = [red.sub(v) if isinstance(v, str) else v for v in row]
        await conn.execute(f'UPDATE "{table}" SET {sets} WHERE ctid = $1::tid', ctid, *values)
        done += 1
    return done


class PgPrivacy:
    """What :mod:`mtaserver.privacy` needs from storage, on PostgreSQL."""

    def __init__(self, db: PgDatabase) -> None:
        self.db = db
        self.owners = contact_data_owners(db)

    async def erase_contacts(self, address: str, now: float) -> tuple[int, int, int]:
        """Delete every owner's contact with the address, keeping its consent as hashed
        proof in the same transaction; then the other owners' contact data."""
        async with self.db.transaction() as conn:
            gone = await erase_contacts_in(conn, address)
            kept = await _keep_proofs(conn, gone, now)
        other = 0
        for owner in self.owners.values():
            other += await owner.erase_for(address)
        return len(gone), kept, other

    async def leased_with(self, address: str) -> int:
        async with self.db.connection() as conn:
            return await q.leased_with(conn, address)

    async def find(self, red: Redaction, codec: BodyCodec) -> ErasePlan:
        async with self.db.transaction() as conn:  # read-only; the body scan is a cursor
            return await _find(conn, red, codec)

    async def cancel_messages(self, ids: Sequence[str], now: float) -> tuple[int, int]:
        bodies = cancelled = 0
        async with self.db.transaction() as conn:
            for qid in ids:
                b, c = await q.erase_cancel_message(conn, qid, now)
                bodies, cancelled = bodies + b, cancelled + c
        return bodies, cancelled

    async def erase_recipients(
        self, keys: Sequence[Any], red: Redaction, now: float
    ) -> tuple[int, int]:
        own = cancelled = 0
        async with self.db.transaction() as conn:
            for key in keys:
                o, c = await q.erase_recipient(conn, key, red, now)
                own, cancelled = own + o, cancelled + c
        return own, cancelled

    async def erase_messages(self, ids: Sequence[str], red: Redaction) -> int:
        async with self.db.transaction() as conn:
            return sum([await q.erase_message_fields(conn, i, red) for i in ids])

    async def erase_events(self, ids: Sequence[int], red: Redaction) -> int:
        async with self.db.transaction() as conn:
            return sum([await erase_event(conn, i, red, PERSONAL_KEYS) for i in ids])

    async def scrub_other(self, table: str, rowids: Sequence[Any], red: Redaction) -> int:
        async with self.db.transaction() as conn:
            return await _scrub_other(conn, table, rowids, red)

    async def finish(
        self, red: Redaction, suppress: bool, now: float, summary: dict[str, str | int]
    ) -> tuple[int, int, bool]:
        """Hash the suppressions, forget soft bounces, log ``erased``."""
        async with self.db.transaction() as conn:
            hashed = await hash_entries(conn, red.address)
            if suppress:
                await add_hashed(conn, red.address, "erased", now)
            soft = await forget_soft_bounces(conn, red.address)
            user = await conn.fetchval("SELECT 1 FROM users WHERE lower(name)=$1", red.address)
            await insert_events(conn, [Event(type="erased", at=now, data=tuple(summary.items()))])
        return hashed, soft, user is not None

    async def checkpoint(self) -> bool:
        """VACUUM the rewritten tables (outside a transaction); False if it could not run."""
        try:
            async with self.db.connection() as conn:
                await conn.execute(_VACUUM)
        except StorageError:
            return False
        return True

    async def export(
        self, addr: str, pat: re.Pattern[str], codec: BodyCodec, bodies: bool, generated_at: float
    ) -> dict[str, Any]:
        """Everything the cluster's database holds about ``addr``, as JSON-ready data."""
        async with self.db.connection() as conn:
            out = await _export(conn, addr, pat, codec, bodies, generated_at)
        out["contact_data"] = {n: await o.export_for(addr) for n, o in self.owners.items()}
        return out


async def _export(
    conn: Connection, addr: str, pat: re.Pattern[str], codec: BodyCodec, bodies: bool,
    generated_at: float,
) -> dict[str, Any]:  # fmt: skip
    async def rows(sql: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in await conn.fetch(sql, *args)]

    text = shared.body_reader(codec, bodies)
    received = await rows(
        "SELECT r.queue_id, r.idx, r.address, r.state, r.attempts, r.last_reply, r.updated_at, "
        "m.sender, m.received_at, m.message_id, m.campaign, m.size, "
        "coalesce(r.body, m.body) AS body FROM recipients r JOIN messages m "
        "ON m.id = r.queue_id WHERE lower(r.address)=$1 ORDER BY m.received_at",
        addr,
    )
    sent = await rows(
        'SELECT id AS queue_id, sender, "user", client_ip, received_at, size, message_id, '
        "campaign, (SELECT count(*) FROM recipients r WHERE r.queue_id = m.id) AS recipients, "
        'body FROM messages m WHERE lower(sender)=$1 OR lower("user")=$1 ORDER BY received_at',
        addr,
    )
    events = await rows(
        "SELECT id, at, type, queue_id, recipient, data FROM events "
        "WHERE lower(recipient)=$1 OR strpos(lower(data), $1) > 0 ORDER BY id",
        addr,
    )
    supp = await rows(
        "SELECT scope, reason, source, created_at, expires_at, queue_id, reply FROM suppressions "
        "WHERE address IN ($1, $2)",
        addr, address_hash(addr),
    )  # fmt: skip
    soft = await rows(
        "SELECT at, category, queue_id FROM soft_bounces WHERE lower(address)=$1", addr
    )
    user = await rows("SELECT name, created_at, updated_at FROM users WHERE lower(name)=$1", addr)
    if user:
        user[0]["domains"] = [
            r[0]
            for r in await conn.fetch(
                'SELECT domain FROM user_domains WHERE "user"=$1 ORDER BY domain', user[0]["name"]
            )
        ]
    other: dict[str, list[dict[str, Any]]] = {}
    for table, cols in (await _text_columns(conn)).items():
        found = await rows(f'SELECT * FROM "{table}" WHERE {_mentions(cols)}', addr)
        if found:
            other[table] = shared.json_ready(found)
    proofs = await rows(
        "SELECT owner, list_name, status, source, at, erased_at FROM consent_proofs "
        "WHERE address_hash=$1 ORDER BY id",
        await proof_hash(conn, addr),
    )
    return shared.export_doc(
        addr, generated_at, await contacts_of(conn, addr), proofs,
        shared.with_bodies(received, text), shared.with_bodies(sent, text),
        shared.mentioning_events(events, addr, pat), supp, soft, user, other,
    )  # fmt: skip
