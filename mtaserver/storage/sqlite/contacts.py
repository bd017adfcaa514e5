"""Contacts, lists and list memberships: the only writer of ``contacts``, ``lists`` and
``list_members``.

Every query is scoped by ``owner`` (the mtaserver user whose key or ``--user`` asks), so one
tenant never reads or changes another's contacts. Writes go through the database's group
commit: an import is cut into chunks of ``CHUNK`` rows, each one ``executemany`` inside one
write operation (one savepoint of a shared transaction), so a 100,000-row import neither
holds the writer for long nor pays one fsync per row. Reads page by keyset on the
(owner, address) index, so exporting or streaming a million contacts holds one page.

:func:`unsubscribe_in` is for the suppression owner: it runs inside the transaction that
writes the suppression, so the list and the contact's consent change together.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from mtaserver.clock import Clock, SystemClock
from mtaserver.contacts import (
    ContactConflict,
    ContactError,
    ContactInput,
    ImportParser,
    LineError,
    attr_path,
    check_list_name,
    check_status,
    iso,
    normalize_address,
)
from mtaserver.errors import MtaError
from mtaserver.storage.sqlite.db import Database

CHUNK: Final = 1000  # rows per write operation of an import
PAGE: Final = 1000  # rows per read of an export
MAX_ERRORS: Final = 100  # line errors kept in an import's answer (the rest only counted)
MAX_FILTERS: Final = 10
CONSENT_SOURCES: Final = ("bounce", "complaint", "unsubscribe")

_COLUMNS = (
    "id, owner, address, attributes, consent_status, consent_source, consent_at, "
    "consent_ip, created_at, updated_at"
)
# One statement for single upserts and imports. ?4 NULL keeps the stored status (a new
# contact is subscribed); an unsubscribed contact changes only with ?8 (resubscribe).
_CHANGE = "(?4 IS NOT NULL AND ?4 <> contacts.consent_status AND " \
          "(contacts.consent_status <> 'unsubscribed' OR ?8))"  # fmt: skip
_UPSERT = (
    "INSERT INTO contacts (owner, address, attributes, consent_status, consent_source, "
    "consent_at, consent_ip, created_at, updated_at) "
    "VALUES (?1, ?2, json_patch('{}', ?3), coalesce(?4, 'subscribed'), ?5, ?6, ?7, ?6, ?6) "
    "ON CONFLICT (owner, address) DO UPDATE SET "
    "attributes = CASE WHEN ?3 = '{}' THEN contacts.attributes "
    "ELSE json_patch(contacts.attributes, ?3) END, "
    f"consent_status = CASE WHEN {_CHANGE} THEN ?4 ELSE contacts.consent_status END, "
    f"consent_source = CASE WHEN {_CHANGE} THEN ?5 ELSE contacts.consent_source END, "
    f"consent_at = CASE WHEN {_CHANGE} THEN ?6 ELSE contacts.consent_at END, "
    f"consent_ip = CASE WHEN {_CHANGE} THEN ?7 ELSE contacts.consent_ip END, "
    "updated_at = ?6"
)


@dataclass(frozen=True, slots=True)
class Membership:
    list_name: str
    status: str
    added_at: float
    confirmed_at: float | None


@dataclass(frozen=True, slots=True)
class Contact:
    """A stored contact. ``attributes`` is its JSON object as text (see :meth:`attrs`)."""

    id: int
    owner: str
    address: str
    attributes: str
    consent_status: str
    consent_source: str
    consent_at: float | None
    consent_ip: str | None
    created_at: float
    updated_at: float
    lists: tuple[Membership, ...] = ()

    def attrs(self) -> dict[str, object]:
        value = json.loads(self.attributes)
        return value if isinstance(value, dict) else {}

    def as_json(self) -> dict[str, object]:
        """The API's and the CLI's view (times in ISO 8601 UTC)."""
        return {
            "email": self.address,
            "attributes": self.attrs(),
            "consent": {"status": self.consent_status, "source": self.consent_source,
                        "at": iso(self.consent_at), "ip": self.consent_ip},
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "lists": [{"name": m.list_name, "status": m.status, "added_at": iso(m.added_at),
                       "confirmed_at": iso(m.confirmed_at)} for m in self.lists],
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class ListInfo:
    id: int
    owner: str
    name: str
    double_opt_in: bool
    created_at: float
    members: int = 0  # count, where the query asked for it

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "double_opt_in": self.double_opt_in,
                "created_at": iso(self.created_at), "members": self.members}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Member:
    contact: Contact
    status: str
    added_at: float
    confirmed_at: float | None

    def as_json(self) -> dict[str, object]:
        out = self.contact.as_json()
        del out["lists"]
        out["membership"] = {"status": self.status, "added_at": iso(self.added_at),
                             "confirmed_at": iso(self.confirmed_at)}  # fmt: skip
        return out


@dataclass(frozen=True, slots=True)
class Upserted:
    created: int
    updated: int


class ImportAborted(MtaError):
    """The import's byte stream broke off; ``result`` counts what was stored before (the
    rows of the unfinished chunk were not)."""

    def __init__(self, result: ImportResult, cause: BaseException) -> None:
        super().__init__(
            f"the import stopped after {result.created + result.updated} stored contacts: "
            f"{type(cause).__name__}: {cause}"
        )
        self.result = result


@dataclass(frozen=True, slots=True)
class ImportResult:
    rows: int  # records read (header and blank lines excluded)
    created: int
    updated: int
    failed: int
    errors: tuple[LineError, ...] = field(default=())  # the first MAX_ERRORS

    def as_json(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "failed": self.failed,
            "errors": [{"line": e.line, "message": e.message} for e in self.errors],
            "errors_truncated": self.failed > len(self.errors),
        }


def _contact(row: Sequence[object], lists: tuple[Membership, ...] = ()) -> Contact:
    cid, owner, address, attrs, status, source, at, ip, created, updated = row
    return Contact(
        int(cid), str(owner), str(address), str(attrs), str(status), str(source),  # type: ignore[call-overload]
        None if at is None else float(at),  # type: ignore[arg-type]
        None if ip is None else str(ip),
        float(created), float(updated),  # type: ignore[arg-type]
        lists,
    )  # fmt: skip


def _list(row: Sequence[object]) -> ListInfo:
    lid, owner, name, doi, created, *count = row
    return ListInfo(int(lid), str(owner), str(name), bool(doi), float(created),  # type: ignore[call-overload, arg-type]
                    int(count[0]) if count else 0)  # type: ignore[call-overload]  # fmt: skip


def _params(owner: str, c: ContactInput, source: str, now: float) -> tuple[object, ...]:
    return (owner, c.address, c.attributes, c.consent, source, now, c.consent_ip, c.resubscribe)


def _upsert_rows(
    conn: sqlite3.Connection, owner: str, rows: Sequence[ContactInput], source: str, now: float
) -> Upserted:
    """Upsert ``rows`` (one chunk); how many were created and updated."""
    wanted = list(dict.fromkeys(c.address for c in rows))
    existing: set[str] = set()
    for i in range(0, len(wanted), 500):
        part = wanted[i : i + 500]
        marks = ",".join("?" * len(part))
        existing.update(
            r[0]
            for r in conn.execute(
                f"SELECT address FROM contacts WHERE owner=? AND address IN ({marks})",
                (owner, *part),
            )
        )
    conn.executemany(_UPSERT, [_params(owner, c, source, now) for c in rows])
    created = len(wanted) - len(existing)
    return Upserted(created, len(rows) - created)


def _ids(conn: sqlite3.Connection, owner: str, addresses: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(0, len(addresses), 500):
        part = addresses[i : i + 500]
        marks = ",".join("?" * len(part))
        out.update(
            conn.execute(
                f"SELECT address, id FROM contacts WHERE owner=? AND address IN ({marks})",
                (owner, *part),
            ).fetchall()
        )
    return out


_LIST = "SELECT id, owner, name, double_opt_in, created_at"
_COUNTED = ", (SELECT count(*) FROM list_members m WHERE m.list_id = lists.id)"


def _list_row(
    conn: sqlite3.Connection, owner: str, name: str, counted: bool = False
) -> ListInfo | None:
    row = conn.execute(
        f"{_LIST}{_COUNTED if counted else ''} FROM lists WHERE owner=? AND name=?", (owner, name)
    ).fetchone()
    return None if row is None else _list(row)


def _add_members(
    conn: sqlite3.Connection, lst: ListInfo, ids: Sequence[int], status: str | None, now: float
) -> int:
    """Add contacts to a list (members already on it keep their status); how many were new."""
    st = status or ("unconfirmed" if lst.double_opt_in else "subscribed")
    confirmed = now if st == "subscribed" else None
    before = conn.total_changes
    conn.executemany(
        "INSERT INTO list_members (list_id, contact_id, status, added_at, confirmed_at) "
        "VALUES (?,?,?,?,?) ON CONFLICT (list_id, contact_id) DO NOTHING",
        [(lst.id, cid, st, now, confirmed) for cid in ids],
    )
    return conn.total_changes - before


def _memberships(conn: sqlite3.Connection, contact_id: int) -> tuple[Membership, ...]:
    return tuple(
        Membership(str(n), str(s), float(a), None if c is None else float(c))
        for n, s, a, c in conn.execute(
            "SELECT l.name, m.status, m.added_at, m.confirmed_at FROM list_members m "
            "JOIN lists l ON l.id = m.list_id WHERE m.contact_id=? ORDER BY l.name",
            (contact_id,),
        )
    )


def unsubscribe_in(
    conn: sqlite3.Connection,
    address: str,
    source: str,
    at: float,
    *,
    sender_domain: str | None = None,
) -> int:
    """Mark contacts with ``address`` unsubscribed (``consent_source`` = ``source``), inside
    the caller's transaction; how many changed. ``sender_domain`` None (a dead address)
    reaches every owner's contact; else only the owners of that sending domain's."""
    if source not in CONSENT_SOURCES:
        raise ValueError(f"consent source {source!r}: one of {CONSENT_SOURCES}")
    addr = address.strip().strip("<>").strip().lower()
    sql = (
        "UPDATE contacts SET consent_status='unsubscribed', consent_source=?, consent_at=?, "
        "consent_ip=NULL, updated_at=? WHERE address=? AND consent_status <> 'unsubscribed'"
    )
    params: tuple[object, ...] = (source, at, at, addr)
    if sender_domain is not None:
        sql += " AND owner IN (SELECT user FROM user_domains WHERE domain=?)"
        params += (sender_domain.strip().lower().rstrip("."),)
    return conn.execute(sql, params).rowcount


class ContactStore:
    """Contacts and lists of each owner, in the shared database."""

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self._clock: Clock = clock or SystemClock()

    # -- contacts ----------------------------------------------------------------------------
    async def upsert(
        self, owner: str, c: ContactInput, source: str = "api"
    ) -> tuple[Contact, bool]:
        """Create or update one contact (attributes merged); the stored contact and whether it
        was created."""
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> tuple[Contact, bool]:
            counts = _upsert_rows(conn, owner, [c], source, now)
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM contacts WHERE owner=? AND address=?", (owner, c.address)
            ).fetchone()
            return _contact(row, _memberships(conn, int(row[0]))), counts.created == 1

        return await self.db.write(op)

    async def upsert_many(
        self, owner: str, rows: Sequence[ContactInput], source: str = "api"
    ) -> Upserted:
        """Create or update ``rows`` in one transaction (all or none)."""
        now = self._clock.now()
        return await self.db.write(lambda conn: _upsert_rows(conn, owner, rows, source, now))

    async def get(self, owner: str, address: str) -> Contact | None:
        addr = normalize_address(address, "address")

        def fn(conn: sqlite3.Connection) -> Contact | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM contacts WHERE owner=? AND address=?", (owner, addr)
            ).fetchone()
            return None if row is None else _contact(row, _memberships(conn, int(row[0])))

        return await self.db.read(fn)

    async def delete(self, owner: str, address: str) -> bool:
        """Delete the contact and its memberships; whether it existed."""
        addr = normalize_address(address, "address")
        n = await self.db.write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM contacts WHERE owner=? AND address=?", (owner, addr)
                ).rowcount
            )
        )
        return bool(n)

    async def search(
        self,
        owner: str,
        equals: Sequence[tuple[str, str]] = (),
        *,
        status: str | None = None,
        list_name: str | None = None,
        after: str = "",
        limit: int = 100,
    ) -> list[Contact]:
        """Contacts whose attributes equal the given values (``("plan", "pro")``; a value
        that reads as a JSON number or boolean also matches that typed value), ordered by
        address, after ``after`` (keyset). Names are checked (ContactError naming
        ``attr.NAME``) and reach SQL only as bound JSON paths."""
        if len(equals) > MAX_FILTERS:
            raise ContactError(f"at most {MAX_FILTERS} attribute filters", "attr")
        where = ["c.owner = ?", "c.address > ?"]
        params: list[object] = [owner, after]
        for name, value in equals:
            where.append("json_extract(c.attributes, ?) IN (?, ?)")
            params += [attr_path(name), value, _typed(value)]
        if status is not None:
            where.append("c.consent_status = ?")
            params.append(check_status(status, "status"))
        if list_name is not None:
            check_list_name(list_name, "list")
            # A lookup per row on the members' primary key: no page builds the whole list.
            where.append(
                "EXISTS (SELECT 1 FROM list_members m WHERE m.list_id = "
                "(SELECT l.id FROM lists l WHERE l.owner = ? AND l.name = ?) "
                "AND m.contact_id = c.id)"
            )
            params += [owner, list_name]
        sql = (
            f"SELECT {', '.join('c.' + col for col in _COLUMNS.split(', '))} FROM contacts c "
            f"WHERE {' AND '.join(where)} ORDER BY c.address LIMIT ?"
        )
        params.append(max(1, min(limit, PAGE)))

        def fn(conn: sqlite3.Connection) -> list[Contact]:
            return [_contact(r) for r in conn.execute(sql, params)]

        return await self.db.read(fn)

    async def export(self, owner: str, page: int = PAGE) -> AsyncIterator[Contact]:
        """Every contact of ``owner`` by address, one page of ``page`` rows at a time."""
        after = ""
        while True:
            rows = await self.search(owner, after=after, limit=page)
            for c in rows:
                yield c
            if len(rows) < page:
                return
            after = rows[-1].address

    async def attribute_names(self, owner: str, limit: int = 1000) -> list[str]:
        """The top-level attribute names ``owner``'s contacts use (an export's columns)."""

        def fn(conn: sqlite3.Connection) -> list[str]:
            return [
                str(r[0])
                for r in conn.execute(
                    "SELECT DISTINCT j.key FROM contacts c, json_each(c.attributes) j "
                    "WHERE c.owner=? ORDER BY j.key LIMIT ?",
                    (owner, limit),
                )
            ]

        return await self.db.read(fn)

    async def count(self, owner: str) -> int:
        def fn(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute("SELECT count(*) FROM contacts WHERE owner=?", (owner,)).fetchone()[0]
            )

        return await self.db.read(fn)

    # -- imports -----------------------------------------------------------------------------
    async def import_many(
        self,
        owner: str,
        rows: Sequence[ContactInput],
        *,
        source: str = "import",
        list_name: str | None = None,
    ) -> Upserted:
        """Upsert ``rows`` in chunks of ``CHUNK``, each its own write operation (durable when
        this returns); with ``list_name`` (which must exist) they also join that list."""
        created = updated = 0
        for i in range(0, len(rows), CHUNK):
            chunk = rows[i : i + CHUNK]
            now = self._clock.now()

            def op(conn: sqlite3.Connection, chunk: Sequence[ContactInput] = chunk,
                   now: float = now) -> Upserted:  # fmt: skip
                counts = _upsert_rows(conn, owner, chunk, source, now)
                if list_name is not None:
                    lst = _list_row(conn, owner, list_name)
                    if lst is None:
                        raise ContactError(f"list: no list {list_name!r}", "list")
                    ids = _ids(conn, owner, list(dict.fromkeys(c.address for c in chunk)))
                    _add_members(conn, lst, list(ids.values()), None, now)
                return counts

            got = await self.db.write(op)
            created += got.created
            updated += got.updated
        return Upserted(created, updated)

    async def import_stream(
        self,
        owner: str,
        chunks: AsyncIterable[bytes],
        parser: ImportParser,
        *,
        source: str = "import",
        list_name: str | None = None,
    ) -> ImportResult:
        """Parse and store an import as its bytes arrive (see :func:`stream_import`)."""
        return await stream_import(self, owner, chunks, parser, source, list_name)

    # -- lists -------------------------------------------------------------------------------
    async def create_list(self, owner: str, name: str, double_opt_in: bool = False) -> ListInfo:
        check_list_name(name)
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> ListInfo:
            try:
                cur = conn.execute(
                    "INSERT INTO lists (owner, name, double_opt_in, created_at) VALUES (?,?,?,?)",
                    (owner, name, int(double_opt_in), now),
                )
            except sqlite3.IntegrityError:
                raise ContactConflict(f"name: a list {name!r} exists already", "name") from None
            return ListInfo(int(cur.lastrowid or 0), owner, name, double_opt_in, now)

        return await self.db.write(op)

    async def get_list(self, owner: str, name: str) -> ListInfo | None:
        return await self.db.read(lambda conn: _list_row(conn, owner, name, counted=True))

    async def lists(self, owner: str) -> list[ListInfo]:
        def fn(conn: sqlite3.Connection) -> list[ListInfo]:
            return [
                _list(r)
                for r in conn.execute(
                    f"{_LIST}{_COUNTED} FROM lists WHERE owner=? ORDER BY name",
                    (owner,),
                )
            ]

        return await self.db.read(fn)

    async def update_list(
        self, owner: str, name: str, *, new_name: str | None = None,
        double_opt_in: bool | None = None,
    ) -> ListInfo | None:  # fmt: skip
        """Rename a list or change its double opt-in; None when there is no such list."""
        if new_name is not None:
            check_list_name(new_name)

        def op(conn: sqlite3.Connection) -> ListInfo | None:
            lst = _list_row(conn, owner, name)
            if lst is None:
                return None
            try:
                conn.execute(
                    "UPDATE lists SET name=coalesce(?, name), "
                    "double_opt_in=coalesce(?, double_opt_in) WHERE id=?",
                    (new_name, None if double_opt_in is None else int(double_opt_in), lst.id),
                )
            except sqlite3.IntegrityError:
                raise ContactConflict(f"name: a list {new_name!r} exists already", "name") from None
            return _list_row(conn, owner, new_name or name, counted=True)

        return await self.db.write(op)

    async def delete_list(self, owner: str, name: str) -> bool:
        """Delete a list and its memberships (the contacts stay)."""
        n = await self.db.write(
            lambda conn: (
                conn.execute("DELETE FROM lists WHERE owner=? AND name=?", (owner, name)).rowcount
            )
        )
        return bool(n)

    async def add_members(
        self, owner: str, list_name: str, addresses: Sequence[str], status: str | None = None
    ) -> int | None:
        """Put contacts on a list, creating missing contacts (unconfirmed on a double opt-in
        list). Members already on it keep their status. How many joined; None: no list."""
        addrs = list(dict.fromkeys(addresses))
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> int | None:
            lst = _list_row(conn, owner, list_name)
            if lst is None:
                return None
            consent = "unconfirmed" if lst.double_opt_in else None
            for i in range(0, len(addrs), CHUNK):
                part = [ContactInput(a, "{}", consent) for a in addrs[i : i + CHUNK]]
                conn.executemany(
                    "INSERT INTO contacts (owner, address, consent_status, consent_source, "
                    "consent_at, created_at, updated_at) VALUES (?,?,?,?,?,?,?) "
                    "ON CONFLICT (owner, address) DO NOTHING",
                    [(owner, c.address, c.consent or "subscribed", "api", now, now, now)
                     for c in part],
                )  # fmt: skip
            ids = _ids(conn, owner, addrs)
            return _add_members(conn, lst, [ids[a] for a in addrs], status, now)

        return await self.db.write(op)

    async def confirm_member(
        self, owner: str, list_name: str, address: str, ip: str | None = None
    ) -> bool:
        """Double opt-in: the person confirmed (the signed link's target calls this). The
        membership becomes subscribed and an unconfirmed contact's consent subscribed, with
        source ``confirm``, the time and the IP as proof; an unsubscribed contact stays so.
        Whether an unconfirmed membership was there to confirm."""
        addr = normalize_address(address, "address")
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT m.list_id, c.id FROM list_members m JOIN lists l ON l.id = m.list_id "
                "JOIN contacts c ON c.id = m.contact_id WHERE l.owner=? AND l.name=? "
                "AND c.owner=? AND c.address=? AND m.status='unconfirmed'",
                (owner, list_name, owner, addr),
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "UPDATE list_members SET status='subscribed', confirmed_at=? "
                "WHERE list_id=? AND contact_id=?",
                (now, row[0], row[1]),
            )
            conn.execute(
                "UPDATE contacts SET consent_status='subscribed', consent_source='confirm', "
                "consent_at=?, consent_ip=?, updated_at=? "
                "WHERE id=? AND consent_status='unconfirmed'",
                (now, ip, now, row[1]),
            )
            return True

        return await self.db.write(op)

    async def remove_member(self, owner: str, list_name: str, address: str) -> bool | None:
        """Take a contact off a list; whether it was on it; None: no such list."""
        addr = normalize_address(address, "address")

        def op(conn: sqlite3.Connection) -> bool | None:
            lst = _list_row(conn, owner, list_name)
            if lst is None:
                return None
            return bool(
                conn.execute(
                    "DELETE FROM list_members WHERE list_id=? AND contact_id="
                    "(SELECT id FROM contacts WHERE owner=? AND address=?)",
                    (lst.id, owner, addr),
                ).rowcount
            )

        return await self.db.write(op)

    async def members(
        self, owner: str, list_name: str, *, after: int = 0, limit: int = 100
    ) -> list[Member] | None:
        """A page of a list's members by contact id after ``after``; None: no such list."""
        cols = ", ".join("c." + col for col in _COLUMNS.split(", "))

        def fn(conn: sqlite3.Connection) -> list[Member] | None:
            lst = _list_row(conn, owner, list_name)
            if lst is None:
                return None
            return [
                Member(_contact(r[:10]), str(r[10]), float(r[11]),
                       None if r[12] is None else float(r[12]))
                for r in conn.execute(
                    f"SELECT {cols}, m.status, m.added_at, m.confirmed_at FROM list_members m "
                    "JOIN contacts c ON c.id = m.contact_id WHERE m.list_id=? AND m.contact_id>? "
                    "ORDER BY m.contact_id LIMIT ?",
                    (lst.id, after, max(1, min(limit, PAGE))),
                )
            ]  # fmt: skip

        return await self.db.read(fn)

    # -- consent: who may receive, the preferences page -------------------------------------
    async def may_receive(self, owner: str, address: str, list_name: str | None = None) -> bool:
        """Whether mail may go to the contact: its consent is ``subscribed`` and, with
        ``list_name``, its membership of that list too (an unconfirmed double opt-in member
        gets nothing but the confirmation mail). An unknown contact may not."""
        addr = normalize_address(address, "address")

        def fn(conn: sqlite3.Connection) -> bool:
            if list_name is None:
                row = conn.execute(
                    "SELECT 1 FROM contacts WHERE owner=? AND address=? "
                    "AND consent_status='subscribed'",
                    (owner, addr),
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT 1 FROM contacts c JOIN list_members m ON m.contact_id = c.id "
                    "JOIN lists l ON l.id = m.list_id WHERE c.owner=? AND c.address=? "
                    "AND c.consent_status='subscribed' AND l.owner=? AND l.name=? "
                    "AND m.status='subscribed'",
                    (owner, addr, owner, list_name),
                ).fetchone()
            return row is not None

        return await self.db.read(fn)

    async def set_preferences(
        self, owner: str, address: str, wanted: Sequence[str], ip: str | None = None
    ) -> Contact | None:
        """The preferences page's form: the contact is subscribed to exactly the ``wanted``
        lists of ``owner`` (others are marked unsubscribed, not deleted: the record of the
        choice stays). The signed link proves the address, so a list joined here is
        subscribed at once, double opt-in or not, and an unconfirmed contact's consent becomes
        subscribed (source ``preferences``). An unsubscribed contact stays unsubscribed: its
        suppression entry would stop the mail anyway. None: no such contact."""
        addr = normalize_address(address, "address")
        now = self._clock.now()
        want = set(wanted)

        def op(conn: sqlite3.Connection) -> Contact | None:
            row = conn.execute(
                "SELECT id, consent_status FROM contacts WHERE owner=? AND address=?",
                (owner, addr),
            ).fetchone()
            if row is None:
                return None
            cid = int(row[0])
            for lid, name in conn.execute(
                "SELECT id, name FROM lists WHERE owner=?", (owner,)
            ).fetchall():
                if name not in want:
                    conn.execute(
                        "UPDATE list_members SET status='unsubscribed' WHERE list_id=? "
                        "AND contact_id=? AND status <> 'unsubscribed'",
                        (lid, cid),
                    )
                    continue
                conn.execute(
                    "INSERT INTO list_members (list_id, contact_id, status, added_at, "
                    "confirmed_at) VALUES (?1, ?2, 'subscribed', ?3, ?3) "
                    "ON CONFLICT (list_id, contact_id) DO UPDATE SET status='subscribed', "
                    "confirmed_at=coalesce(list_members.confirmed_at, ?3) "
                    "WHERE list_members.status <> 'subscribed'",
                    (lid, cid, now),
                )
            if want and row[1] == "unconfirmed":
                conn.execute(
                    "UPDATE contacts SET consent_status='subscribed', consent_source="
                    "'preferences', consent_at=?, consent_ip=?, updated_at=? WHERE id=?",
                    (now, ip, now, cid),
                )
            full = conn.execute(f"SELECT {_COLUMNS} FROM contacts WHERE id=?", (cid,)).fetchone()
            return _contact(full, _memberships(conn, cid))

        return await self.db.write(op)

    async def leave_all_lists(self, owner: str, address: str) -> int:
        """After an unsubscribe from everything: every membership marked unsubscribed."""
        addr = normalize_address(address, "address")
        return await self.db.write(
            lambda conn: (
                conn.execute(
                    "UPDATE list_members SET status='unsubscribed' WHERE status <> 'unsubscribed' "
                    "AND contact_id=(SELECT id FROM contacts WHERE owner=? AND address=?)",
                    (owner, addr),
                ).rowcount
            )
        )


# -- privacy requests (storage.sqlite.privacy calls these inside its transactions) ----------
def contacts_of(conn: sqlite3.Connection, address: str) -> list[Contact]:
    """Every owner's contact with ``address`` (an export, or what an erase will remove)."""
    addr = address.strip().lower()
    return [
        _contact(r, _memberships(conn, int(r[0])))
        for r in conn.execute(
            f"SELECT {_COLUMNS} FROM contacts WHERE address=? ORDER BY owner", (addr,)
        ).fetchall()
    ]


def erase_contacts_in(conn: sqlite3.Connection, address: str) -> list[Contact]:
    """Delete every owner's contact with ``address`` (memberships go with them); the
    contacts as they were, for the caller's proof records."""
    found = contacts_of(conn, address)
    conn.executemany("DELETE FROM contacts WHERE id=?", [(c.id,) for c in found])
    return found


def _typed(value: str) -> object:
    """The JSON scalar ``value`` reads as (``30`` → 30, ``true`` → 1), else ``value``."""
    try:
        v = json.loads(value)
    except ValueError:
        return value
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int | float):
        return v
    return value


class _Importer(Protocol):
    """What :func:`stream_import` needs of a contact store (either backend's)."""

    async def import_many(
        self, owner: str, rows: Sequence[ContactInput], *, source: str, list_name: str | None
    ) -> Upserted: ...

    async def get_list(self, owner: str, name: str) -> Any: ...


async def stream_import(
    store: _Importer,
    owner: str,
    chunks: AsyncIterable[bytes],
    parser: ImportParser,
    source: str,
    list_name: str | None,
) -> ImportResult:
    """Parse and store an import as its bytes arrive. One chunk is committing while the
    next is parsed; at most two chunks of rows are held, whatever the stream's size.
    A bad header raises ContactError before anything is stored."""
    rows = created = updated = failed = 0
    errors: list[LineError] = []
    batch: list[ContactInput] = []
    pending: asyncio.Future[Upserted] | None = None

    async def settle() -> None:
        nonlocal pending, created, updated
        if pending is not None:
            got = await pending
            pending = None
            created += got.created
            updated += got.updated

    async def flush() -> None:
        nonlocal pending, batch
        await settle()
        pending = asyncio.ensure_future(
            store.import_many(owner, batch, source=source, list_name=list_name)
        )
        batch = []

    def take(items: list[ContactInput | LineError]) -> None:
        nonlocal rows, failed
        for item in items:
            rows += 1
            if isinstance(item, LineError):
                failed += 1
                if len(errors) < MAX_ERRORS:
                    errors.append(item)
            else:
                batch.append(item)

    if list_name is not None and await store.get_list(owner, list_name) is None:
        raise ContactError(f"list: no list {list_name!r}", "list")
    stream = aiter(chunks)
    try:
        while True:
            try:
                data = await anext(stream)
            except StopAsyncIteration:
                break
            except Exception as exc:  # the source failed (a client gone, a read error)
                await settle()
                done = ImportResult(rows, created, updated, failed, tuple(errors))
                raise ImportAborted(done, exc) from exc
            take(parser.feed(data))
            if len(batch) >= CHUNK:
                await flush()
        take(parser.close())
        if batch:
            await flush()
        await settle()
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
    return ImportResult(rows, created, updated, failed, tuple(errors))
