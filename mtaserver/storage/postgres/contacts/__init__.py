"""Contacts, lists and list memberships on PostgreSQL: the only writer of ``contacts``,
``lists`` and ``list_members`` (this package).

The same public methods, limits and answers as
:class:`mtaserver.storage.sqlite.contacts.ContactStore` (its dataclasses are returned), so
the /v1 routes and the CLI take either. Every query is scoped by ``owner``. An import is
cut into chunks of ``CHUNK`` rows, each one transaction of two ``unnest`` statements
(:mod:`.rows`), so a 100,000-row import is 100 short transactions, never one long lock;
one chunk commits while the next is parsed. Reads page by keyset on (owner, address
COLLATE "C"), byte order like SQLite's, so a million contacts are never held at once.
Attributes are jsonb: their key order in answers is PostgreSQL's, not the order given.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Sequence

from mtaserver.clock import Clock, SystemClock
from mtaserver.contacts import (
    ContactError,
    ContactInput,
    ImportParser,
    attr_path,
    check_list_name,
    check_status,
    normalize_address,
)
from mtaserver.storage.postgres.contacts import rows as q
from mtaserver.storage.postgres.contacts.lists import PgLists
from mtaserver.storage.postgres.contacts.rows import (
    contacts_of,
    erase_contacts_in,
    unsubscribe_in,
)
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.sqlite.contacts import (
    CHUNK,
    MAX_FILTERS,
    PAGE,
    Contact,
    ImportResult,
    Upserted,
    _typed,
    stream_import,
)

__all__ = ["PgContactStore", "contacts_of", "erase_contacts_in", "unsubscribe_in"]


def _equals(x: str, value: str, bind: list[object]) -> str:
    """SQLite's ``json_extract(attributes, path) IN (value, typed(value))``: the string, and a
    value that reads as a JSON number or boolean also the number (true = 1, false = 0)."""
    bind.append(json.dumps(value))
    cond = f"{x} = ${len(bind)}::jsonb"
    typed = _typed(value)
    if isinstance(typed, int | float) and not isinstance(typed, bool):
        bind.append(str(typed))
        n = f"${len(bind)}::numeric"
        cond += (f" OR (jsonb_typeof({x}) = 'number' AND ({x} #>> '{{}}')::numeric = {n})"
                 f" OR (jsonb_typeof({x}) = 'boolean' AND "
                 f"(CASE WHEN {x} = 'true'::jsonb THEN 1 ELSE 0 END) = {n})")  # fmt: skip
    return f"({cond})"


class PgContactStore(PgLists):
    """Contacts and lists of each owner, in the cluster's database."""

    def __init__(self, db: PgDatabase, clock: Clock | None = None) -> None:
        self.db = db
        self._clock: Clock = clock or SystemClock()

    # -- contacts ----------------------------------------------------------------------------
    async def upsert(
        self, owner: str, c: ContactInput, source: str = "api"
    ) -> tuple[Contact, bool]:
        """Create or update one contact (attributes merged); it and whether it was created."""
        now = self._clock.now()
        async with self.db.transaction() as conn:
            counts = await q.upsert_rows(conn, owner, [c], source, now)
            row = await conn.fetchrow(
                f"SELECT {q.COLUMNS} FROM contacts WHERE owner = $1 AND address = $2",
                owner, c.address,
            )  # fmt: skip
            return q.contact(row, await q.memberships(conn, int(row[0]))), counts.created == 1

    async def upsert_many(
        self, owner: str, rows: Sequence[ContactInput], source: str = "api"
    ) -> Upserted:
        """Create or update ``rows`` in one transaction (all or none)."""
        now = self._clock.now()
        async with self.db.transaction() as conn:
            return await q.upsert_rows(conn, owner, rows, source, now)

    async def get(self, owner: str, address: str) -> Contact | None:
        addr = normalize_address(address, "address")
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {q.COLUMNS} FROM contacts WHERE owner = $1 AND address = $2", owner, addr
            )
            return None if row is None else q.contact(row, await q.memberships(conn, int(row[0])))

    async def delete(self, owner: str, address: str) -> bool:
        """Delete the contact and its memberships; whether it existed."""
        addr = normalize_address(address, "address")
        async with self.db.transaction() as conn:
            done = await conn.execute(
                "DELETE FROM contacts WHERE owner = $1 AND address = $2", owner, addr
            )
        return q.count_of(done) > 0

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
        """Contacts whose attributes equal the given values, by address after ``after``
        (keyset); names are checked and reach SQL only as bound ``text[]`` paths."""
        if len(equals) > MAX_FILTERS:
            raise ContactError(f"at most {MAX_FILTERS} attribute filters", "attr")
        bind: list[object] = [owner, after]
        where = ["c.owner = $1", 'c.address COLLATE "C" > $2::text']
        for name, value in equals:
            attr_path(name)
            bind.append(name.split("."))
            where.append(_equals(f"(c.attributes #> ${len(bind)}::text[])", value, bind))
        if status is not None:
            bind.append(check_status(status, "status"))
            where.append(f"c.consent_status = ${len(bind)}")
        if list_name is not None:
            bind.append(check_list_name(list_name, "list"))
            where.append(
                "EXISTS (SELECT 1 FROM list_members m WHERE m.list_id = (SELECT l.id FROM "
                f"lists l WHERE l.owner = $1 AND l.name = ${len(bind)}) AND m.contact_id = c.id)"
            )
        bind.append(max(1, min(limit, PAGE)))
        sql = (f"SELECT {q.C_COLUMNS} FROM contacts c WHERE {' AND '.join(where)} "
               f'ORDER BY c.address COLLATE "C" LIMIT ${len(bind)}')  # fmt: skip
        async with self.db.connection() as conn:
            rows = await conn.fetch(sql, *bind)
        return [q.contact(r) for r in rows]

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
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                'SELECT DISTINCT j.key COLLATE "C" FROM contacts c, '
                "jsonb_object_keys(c.attributes) j(key) WHERE c.owner = $1 ORDER BY 1 LIMIT $2",
                owner, limit,
            )  # fmt: skip
        return [str(r[0]) for r in rows]

    async def count(self, owner: str) -> int:
        async with self.db.connection() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM contacts WHERE owner = $1", owner))

    # -- imports -----------------------------------------------------------------------------
    async def import_many(
        self,
        owner: str,
        rows: Sequence[ContactInput],
        *,
        source: str = "import",
        list_name: str | None = None,
    ) -> Upserted:
        """Upsert ``rows`` in chunks of ``CHUNK``, each its own transaction (durable when
        this returns); with ``list_name`` (which must exist) they also join that list."""
        created = updated = 0
        for i in range(0, len(rows), CHUNK):
            chunk = rows[i : i + CHUNK]
            now = self._clock.now()
            async with self.db.transaction() as conn:
                got = await q.upsert_rows(conn, owner, chunk, source, now)
                if list_name is not None:
                    lst = await q.list_row(conn, owner, list_name)
                    if lst is None:
                        raise ContactError(f"list: no list {list_name!r}", "list")
                    ids = await q.ids_of(conn, owner, list(dict.fromkeys(c.address for c in chunk)))
                    await q.add_members(conn, lst, list(ids.values()), None, now)
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
        """Parse and store an import as its bytes arrive (the SQLite owner's loop)."""
        return await stream_import(self, owner, chunks, parser, source, list_name)
