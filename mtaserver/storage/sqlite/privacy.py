"""The privacy requests' storage side: find every trace of an address, rewrite it, export it.

The rules (what an erase removes, what it keeps) are :mod:`mtaserver.privacy`'s; this
module finds the rows on the read connection and applies each batch in one write op
through the owners' erase functions (queue, events, suppressions). Tables no owner claims
(added later, e.g. by an extension) are scrubbed generically: every text column that
mentions the address. What the PostgreSQL owner does alike (the consent proofs an erase
keeps, the export's shape) is :mod:`mtaserver.storage.common.privacy`.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Sequence
from typing import Any

from mtaserver.errors import StorageError
from mtaserver.model import ErasePlan, Event, Redaction
from mtaserver.storage.common.privacy import (
    PERSONAL_KEYS,
    SKIP_TABLES,
    ContactDataOwner,
    JourneyData,
    body_reader,
    export_doc,
    json_ready,
    keyed_hash,
    mentioning_events,
    mentions,
    proof_rows,
    with_bodies,
)
from mtaserver.storage.sqlite.contacts import Contact, contacts_of, erase_contacts_in
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import erase_event, insert_events
from mtaserver.storage.sqlite.journeys import JourneyStore
from mtaserver.storage.sqlite.queue.maintenance import (
    erase_cancel_message,
    erase_message_fields,
    erase_recipient,
)
from mtaserver.storage.sqlite.queue.values import BodyCodec
from mtaserver.storage.sqlite.suppressions import add_hashed, forget_soft_bounces, hash_entries
from mtaserver.suppression import address_hash


def contact_data_owners(db: Database) -> dict[str, ContactDataOwner]:
    """THE one place where owners of per-contact data join the privacy requests: add
    ``"name": TheStore(db)`` here and export/erase cover its tables (exported under
    ``contact_data.name``, erased after the contacts' consent proofs are written)."""
    return {"journeys": JourneyData(JourneyStore(db))}


def _proof_key(conn: sqlite3.Connection) -> bytes:
    row = conn.execute("SELECT key FROM privacy_keys WHERE name='consent_proof'").fetchone()
    return bytes(row[0])


def proof_hash(conn: sqlite3.Connection, value: str) -> str:
    """HMAC-SHA256 of an address (or IP) under this database's random proof key."""
    return keyed_hash(_proof_key(conn), value)


def _keep_proofs(conn: sqlite3.Connection, contacts: Sequence[Contact], now: float) -> int:
    """What an erase keeps of each contact: its consent and memberships, the address and
    the IP as keyed hashes (``proof_rows`` of :mod:`mtaserver.storage.common.privacy`)."""
    if not contacts:
        return 0
    rows = proof_rows(_proof_key(conn), contacts, now)
    conn.executemany(
        "INSERT INTO consent_proofs (address_hash, owner, list_name, status, source, at, "
        "ip_hash, erased_at) VALUES (?,?,?,?,?,?,?,?)",
        rows,
    )
    return len(rows)


def _text_columns(conn: sqlite3.Connection) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for table, sql in conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall():
        # rows are found and rewritten by rowid; a WITHOUT ROWID table (a join table of
        # ids, like list_members) has none, and no text about a person either
        if table in SKIP_TABLES or "WITHOUT ROWID" in (sql or "").upper():
            continue
        cols = [
            r[1]
            for r in conn.execute(f'PRAGMA table_info("{table}")')
            if (r[2] or "").upper() in ("TEXT", "") or "CHAR" in (r[2] or "").upper()
        ]
        if cols:
            out[table] = cols
    return out


def _find(conn: sqlite3.Connection, addr: str, pat: re.Pattern[str], codec: BodyCodec) -> ErasePlan:
    """Read-only search (on the reader: no write lock however big the tables are)."""
    recipients = [
        r[0]
        for r in conn.execute(
            "SELECT rowid FROM recipients WHERE lower(address)=? OR instr(lower(last_reply), ?)",
            (addr, addr),
        )
    ]
    messages = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM messages WHERE lower(sender)=? OR lower(coalesce(user,''))=? "
            "OR instr(lower(message_id), ?)",
            (addr, addr, addr),
        )
    ]
    needle = addr.encode()
    bpat = re.compile(pat.pattern.encode(), re.IGNORECASE)
    mentioned: set[str] = set()
    for qid, body in conn.execute("SELECT id, body FROM messages WHERE body IS NOT NULL"):
        data = codec.decode(body)
        if needle in data.lower() and bpat.search(data):
            mentioned.add(qid)
    for qid, body in conn.execute("SELECT queue_id, body FROM recipients WHERE body IS NOT NULL"):
        if qid not in mentioned:
            data = codec.decode(body)
            if needle in data.lower() and bpat.search(data):
                mentioned.add(qid)
    # Messages it sent or is a recipient of, still holding content, go as a whole.
    mentioned.update(
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT m.id FROM messages m LEFT JOIN recipients r ON r.queue_id=m.id "
            "WHERE (lower(m.sender)=? OR lower(r.address)=?) "
            "AND (m.body IS NOT NULL OR r.body IS NOT NULL)",
            (addr, addr),
        )
    )
    events = [
        r[0]
        for r in conn.execute(
            "SELECT id, recipient, data FROM events WHERE lower(recipient)=? "
            "OR instr(lower(data), ?)",
            (addr, addr),
        )
        if mentions(r[1], r[2], addr, pat)
    ]
    other: dict[str, tuple[int, ...]] = {}
    for table, cols in _text_columns(conn).items():
        where = " OR ".join(f'instr(lower("{c}"), ?)' for c in cols)
        rows = conn.execute(
            f'SELECT rowid FROM "{table}" WHERE {where}', (addr,) * len(cols)
        ).fetchall()
        if rows:
            other[table] = tuple(r[0] for r in rows)
    return ErasePlan(
        tuple(recipients), tuple(messages), tuple(sorted(mentioned)), tuple(events), other
    )


def _scrub_other(
    conn: sqlite3.Connection, table: str, rowids: Sequence[int], red: Redaction
) -> int:
    cols = _text_columns(conn).get(table, [])
    done = 0
    for rowid in rowids:
        names = ", ".join(f'"{c}"' for c in cols)
        row = conn.execute(f'SELECT {names} FROM "{table}" WHERE rowid=?', (rowid,)).fetchone()
        if row is None:
            continue
        sets = ", ".join(f'"{c}"=?' for c in cols)
        values = [red.sub(v) if isinstance(v, str) else v for v in row]
        conn.execute(f'UPDATE "{table}" SET {sets} WHERE rowid=?', (*values, rowid))
        done += 1
    return done


class SqlitePrivacy:
    """What :mod:`mtaserver.privacy` needs from storage, on SQLite."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.owners = contact_data_owners(db)

    async def erase_contacts(self, address: str, now: float) -> tuple[int, int, int]:
        """Delete every owner's contact with the address (memberships go with them),
        keeping its consent as hashed proof in the same transaction; then the contact data
        of the other owners. (contacts removed, proof rows kept, other rows erased)"""

        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            gone = erase_contacts_in(conn, address)
            return len(gone), _keep_proofs(conn, gone, now)

        removed, kept = await self.db.write(op)
        other = 0
        for owner in self.owners.values():
            other += await owner.erase_for(address)
        return removed, kept, other

    async def leased_with(self, address: str) -> int:
        """Recipients leased right now in messages the address is a recipient of."""

        def fn(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute(
                    "SELECT count(*) FROM recipients r WHERE r.state='leased' AND r.queue_id IN "
                    "(SELECT queue_id FROM recipients WHERE lower(address)=?)",
                    (address,),
                ).fetchone()[0]
            )

        return await self.db.read(fn)

    async def find(self, red: Redaction, codec: BodyCodec) -> ErasePlan:
        return await self.db.read(lambda c: _find(c, red.address, red.pattern, codec))

    async def cancel_messages(self, ids: Sequence[str], now: float) -> tuple[int, int]:
        """(bodies removed, recipients cancelled) for one batch of messages."""

        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            bodies = cancelled = 0
            for qid in ids:
                b, c = erase_cancel_message(conn, qid, now)
                bodies, cancelled = bodies + b, cancelled + c
            return bodies, cancelled

        return await self.db.write(op)

    async def erase_recipients(
        self, rowids: Sequence[int], red: Redaction, now: float
    ) -> tuple[int, int]:
        """(own recipient rows anonymized, deliveries cancelled) for one batch."""

        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            own = cancelled = 0
            for rowid in rowids:
                o, c = erase_recipient(conn, rowid, red, now)
                own, cancelled = own + o, cancelled + c
            return own, cancelled

        return await self.db.write(op)

    async def erase_messages(self, ids: Sequence[str], red: Redaction) -> int:
        return await self.db.write(lambda c: sum(erase_message_fields(c, q, red) for q in ids))

    async def erase_events(self, ids: Sequence[int], red: Redaction) -> int:
        return await self.db.write(
            lambda c: sum(erase_event(c, i, red, PERSONAL_KEYS) for i in ids)
        )

    async def scrub_other(self, table: str, rowids: Sequence[int], red: Redaction) -> int:
        return await self.db.write(lambda c: _scrub_other(c, table, rowids, red))

    async def finish(
        self, red: Redaction, suppress: bool, now: float, summary: dict[str, str | int]
    ) -> tuple[int, int, bool]:
        """Hash the suppressions, forget soft bounces, log ``erased``.
        (suppressions hashed, soft bounces deleted, a user account of that name exists)"""

        def op(conn: sqlite3.Connection) -> tuple[int, int, bool]:
            hashed = hash_entries(conn, red.address)
            if suppress:
                add_hashed(conn, red.address, "erased", now)
            soft = forget_soft_bounces(conn, red.address)
            user = conn.execute(
                "SELECT 1 FROM users WHERE lower(name)=?", (red.address,)
            ).fetchone()
            insert_events(conn, [Event(type="erased", at=now, data=tuple(summary.items()))])
            return hashed, soft, user is not None

        return await self.db.write(op)

    async def checkpoint(self) -> bool:
        return await _checkpoint(self.db)

    async def export(
        self, addr: str, pat: re.Pattern[str], codec: BodyCodec, bodies: bool, generated_at: float
    ) -> dict[str, Any]:
        """Everything the database holds about ``addr``, as JSON-ready data."""

        def fn(conn: sqlite3.Connection) -> dict[str, Any]:
            def rows(sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
                cur = conn.execute(sql, args)
                names = [d[0] for d in cur.description]
                return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

            text = body_reader(codec, bodies)
            received = rows(
                "SELECT r.queue_id, r.idx, r.address, r.state, r.attempts, r.last_reply, "
                "r.updated_at, m.sender, m.received_at, m.message_id, m.campaign, m.size, "
                "coalesce(r.body, m.body) AS body FROM recipients r JOIN messages m "
                "ON m.id = r.queue_id WHERE lower(r.address)=? ORDER BY m.received_at",
                (addr,),
            )
            sent = rows(
                "SELECT id AS queue_id, sender, user, client_ip, received_at, size, message_id, "
                "campaign, (SELECT count(*) FROM recipients r WHERE r.queue_id = m.id) "
                "AS recipients, body FROM messages m WHERE lower(sender)=? OR lower(user)=? "
                "ORDER BY received_at",
                (addr, addr),
            )
            events = rows(
                "SELECT id, at, type, queue_id, recipient, data FROM events "
                "WHERE lower(recipient)=? OR instr(lower(data), ?) ORDER BY id",
                (addr, addr),
            )
            hashed = address_hash(addr)
            supp = rows(
                "SELECT scope, reason, source, created_at, expires_at, queue_id, reply "
                "FROM suppressions "
                "WHERE address IN (?, ?)",
                (addr, hashed),
            )
            soft = rows(
                "SELECT at, category, queue_id FROM soft_bounces WHERE lower(address)=?", (addr,)
            )
            user = rows(
                "SELECT name, created_at, updated_at FROM users WHERE lower(name)=?", (addr,)
            )
            if user:
                user[0]["domains"] = [
                    r[0]
                    for r in conn.execute(
                        "SELECT domain FROM user_domains WHERE user=? ORDER BY domain",
                        (user[0]["name"],),
                    )
                ]
            other: dict[str, list[dict[str, Any]]] = {}
            for table, cols in _text_columns(conn).items():
                where = " OR ".join(f'instr(lower("{c}"), ?)' for c in cols)
                found = rows(f'SELECT * FROM "{table}" WHERE {where}', (addr,) * len(cols))
                if found:
                    other[table] = json_ready(found)
            proofs = rows(
                "SELECT owner, list_name, status, source, at, erased_at FROM consent_proofs "
                "WHERE address_hash=? ORDER BY id",
                (proof_hash(conn, addr),),
            )
            return export_doc(
                addr, generated_at, contacts_of(conn, addr), proofs,
                with_bodies(received, text), with_bodies(sent, text),
                mentioning_events(events, addr, pat), supp, soft, user, other,
            )  # fmt: skip

        out = await self.db.read(fn)
        out["contact_data"] = {n: await o.export_for(addr) for n, o in self.owners.items()}
        return out


async def _checkpoint(db: Database) -> bool:
    """Copy the WAL into the file and truncate it, so old page images leave the disk.

    Runs on its own connection; False if a reader kept it from completing (it will on the
    next automatic checkpoint).
    """

    def run() -> bool:
        conn = sqlite3.connect(db.path, timeout=10)
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return int(busy) == 0
        finally:
            conn.close()

    try:
        return await asyncio.to_thread(run)
    except sqlite3.Error as exc:
        raise StorageError(f"checkpoint failed: {exc}") from exc
