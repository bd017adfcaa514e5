"""Lists, memberships and consent of the PostgreSQL contact store (the half of
:class:`~mtaserver.storage.postgres.contacts.PgContactStore` that is about lists).

The same methods and answers as the SQLite store's. Two nodes creating or renaming a list
to one name at once: the unique (owner, name) decides, the loser gets ContactConflict.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from mtaserver.clock import Clock
from mtaserver.contacts import ContactConflict, ContactInput, check_list_name, normalize_address
from mtaserver.storage.postgres.contacts import rows as q
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.sqlite.contacts import CHUNK, PAGE, Contact, ListInfo, Member


class PgLists:
    db: PgDatabase
    _clock: Clock

    async def create_list(self, owner: str, name: str, double_opt_in: bool = False) -> ListInfo:
        check_list_name(name)
        now = self._clock.now()
        async with self.db.transaction() as conn:
            lid = await conn.fetchval(
                "INSERT INTO lists (owner, name, double_opt_in, created_at) VALUES ($1,$2,$3,$4) "
                "ON CONFLICT (owner, name) DO NOTHING RETURNING id",
                owner, name, int(double_opt_in), now,
            )  # fmt: skip
            if lid is None:
                raise ContactConflict(f"name: a list {name!r} exists already", "name")
        return ListInfo(int(lid), owner, name, double_opt_in, now)

    async def get_list(self, owner: str, name: str) -> ListInfo | None:
        async with self.db.connection() as conn:
            return await q.list_row(conn, owner, name, counted=True)

    async def lists(self, owner: str) -> list[ListInfo]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f'{q.LIST}{q.COUNTED} FROM lists WHERE owner = $1 ORDER BY name COLLATE "C"',
                owner,
            )
        return [q.list_info(r) for r in rows]

    async def update_list(
        self, owner: str, name: str, *, new_name: str | None = None,
        double_opt_in: bool | None = None,
    ) -> ListInfo | None:  # fmt: skip
        """Rename a list or change its double opt-in; None when there is no such list."""
        if new_name is not None:
            check_list_name(new_name)
        async with self.db.transaction() as conn:
            lst = await q.list_row(conn, owner, name)
            if lst is None:
                return None
            try:
                async with conn.transaction():  # a savepoint: a taken name is an answer
                    await conn.execute(
                        "UPDATE lists SET name = coalesce($1, name), "
                        "double_opt_in = coalesce($2, double_opt_in) WHERE id = $3",
                        new_name, None if double_opt_in is None else int(double_opt_in), lst.id,
                    )  # fmt: skip
            except asyncpg.UniqueViolationError:
                raise ContactConflict(f"name: a list {new_name!r} exists already", "name") from None
            return await q.list_row(conn, owner, new_name or name, counted=True)

    async def delete_list(self, owner: str, name: str) -> bool:
        """Delete a list and its memberships (the contacts stay)."""
        async with self.db.transaction() as conn:
            done = await conn.execute(
                "DELETE FROM lists WHERE owner = $1 AND name = $2", owner, name
            )
        return q.count_of(done) > 0

    async def add_members(
        self, owner: str, list_name: str, addresses: Sequence[str], status: str | None = None
    ) -> int | None:
        """Put contacts on a list, creating missing contacts (unconfirmed on a double opt-in
        list). Members already on it keep their status. How many joined; None: no list."""
        addrs = list(dict.fromkeys(addresses))
        now = self._clock.now()
        async with self.db.transaction() as conn:
            lst = await q.list_row(conn, owner, list_name)
            if lst is None:
                return None
            consent = "unconfirmed" if lst.double_opt_in else "subscribed"
            for i in range(0, len(addrs), CHUNK):
                part = sorted(ContactInput(a).address for a in addrs[i : i + CHUNK])  # checked
                await conn.execute(
                    "INSERT INTO contacts (owner, address, consent_status, consent_source, "
                    "consent_at, created_at, updated_at) SELECT $1, u.a, $3, 'api', $4, $4, $4 "
                    "FROM unnest($2::text[]) AS u(a) ON CONFLICT (owner, address) DO NOTHING",
                    owner, part, consent, now,
                )  # fmt: skip
            ids = await q.ids_of(conn, owner, addrs)
            return await q.add_members(conn, lst, [ids[a] for a in addrs], status, now)

    async def confirm_member(
        self, owner: str, list_name: str, address: str, ip: str | None = None
    ) -> bool:
        """Double opt-in: the person confirmed. Membership and an unconfirmed contact's
        consent become subscribed (source ``confirm``, time and IP as proof)."""
        addr = normalize_address(address, "address")
        now = self._clock.now()
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                "SELECT m.list_id, c.id FROM list_members m JOIN lists l ON l.id = m.list_id "
                "JOIN contacts c ON c.id = m.contact_id WHERE l.owner = $1 AND l.name = $2 "
                "AND c.owner = $1 AND c.address = $3 AND m.status = 'unconfirmed' "
                "FOR UPDATE OF m",
                owner, list_name, addr,
            )  # fmt: skip
            if row is None:
                return False
            await conn.execute(
                "UPDATE list_members SET status = 'subscribed', confirmed_at = $1 "
                "WHERE list_id = $2 AND contact_id = $3",
                now, row[0], row[1],
            )  # fmt: skip
            await conn.execute(
                "UPDATE contacts SET consent_status = 'subscribed', consent_source = 'confirm', "
                "consent_at = $1, consent_ip = $2, updated_at = $1 "
                "WHERE id = $3 AND consent_status = 'unconfirmed'",
                now, ip, row[1],
            )  # fmt: skip
            return True

    async def remove_member(self, owner: str, list_name: str, address: str) -> bool | None:
        """Take a contact off a list; whether it was on it; None: no such list."""
        addr = normalize_address(address, "address")
        async with self.db.transaction() as conn:
            lst = await q.list_row(conn, owner, list_name)
            if lst is None:
                return None
            done = await conn.execute(
                "DELETE FROM list_members WHERE list_id = $1 AND contact_id = "
                "(SELECT id FROM contacts WHERE owner = $2 AND address = $3)",
                lst.id, owner, addr,
            )  # fmt: skip
            return q.count_of(done) > 0

    async def members(
        self, owner: str, list_name: str, *, after: int = 0, limit: int = 100
    ) -> list[Member] | None:
        """A page of a list's members by contact id after ``after``; None: no such list."""
        async with self.db.connection() as conn:
            lst = await q.list_row(conn, owner, list_name)
            if lst is None:
                return None
            rows = await conn.fetch(
                f"SELECT {q.C_COLUMNS}, m.status, m.added_at, m.confirmed_at FROM list_members m "
                "JOIN contacts c ON c.id = m.contact_id WHERE m.list_id = $1 AND "
                "m.contact_id > $2 ORDER BY m.contact_id LIMIT $3",
                lst.id, after, max(1, min(limit, PAGE)),
            )  # fmt: skip
        return [Member(q.contact(r[:10]), str(r[10]), float(r[11]),
                       None if r[12] is None else float(r[12])) for r in rows]  # fmt: skip

    async def may_receive(self, owner: str, address: str, list_name: str | None = None) -> bool:
        """Whether mail may go to the contact: consent ``subscribed`` and, with
        ``list_name``, a subscribed membership of that list. An unknown contact may not."""
        addr = normalize_address(address, "address")
        async with self.db.connection() as conn:
            if list_name is None:
                row = await conn.fetchval(
                    "SELECT 1 FROM contacts WHERE owner = $1 AND address = $2 "
                    "AND consent_status = 'subscribed'",
                    owner, addr,
                )  # fmt: skip
            else:
                row = await conn.fetchval(
                    "SELECT 1 FROM contacts c JOIN list_members m ON m.contact_id = c.id "
                    "JOIN lists l ON l.id = m.list_id WHERE c.owner = $1 AND c.address = $2 "
                    "AND c.consent_status = 'subscribed' AND l.owner = $1 AND l.name = $3 "
                    "AND m.status = 'subscribed'",
                    owner, addr, list_name,
                )  # fmt: skip
        return row is not None

    async def set_preferences(
        self, owner: str, address: str, wanted: Sequence[str], ip: str | None = None
    ) -> Contact | None:
        """The preferences page's form: subscribed to exactly the ``wanted`` lists (others
        marked unsubscribed); see the SQLite store for the consent rules. None: no contact."""
        addr = normalize_address(address, "address")
        now = self._clock.now()
        want = list(set(wanted))
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                "SELECT id, consent_status FROM contacts WHERE owner = $1 AND address = $2 "
                "FOR UPDATE",
                owner, addr,
            )  # fmt: skip
            if row is None:
                return None
            cid = int(row[0])
            await conn.execute(
                "UPDATE list_members SET status = 'unsubscribed' WHERE contact_id = $1 "
                "AND status <> 'unsubscribed' AND list_id IN (SELECT id FROM lists "
                "WHERE owner = $2 AND NOT (name = ANY($3::text[])))",
                cid, owner, want,
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO list_members (list_id, contact_id, status, added_at, confirmed_at) "
                "SELECT l.id, $1, 'subscribed', $4, $4 FROM lists l WHERE l.owner = $2 "
                "AND l.name = ANY($3::text[]) ORDER BY l.id ON CONFLICT (list_id, contact_id) "
                "DO UPDATE SET status = 'subscribed', "
                "confirmed_at = coalesce(list_members.confirmed_at, $4) "
                "WHERE list_members.status <> 'subscribed'",
                cid, owner, want, now,
            )  # fmt: skip
            if want and row[1] == "unconfirmed":
                await conn.execute(
                    "UPDATE contacts SET consent_status = 'subscribed', consent_source = "
                    "'preferences', consent_at = $1, consent_ip = $2, updated_at = $1 "
                    "WHERE id = $3",
                    now, ip, cid,
                )  # fmt: skip
            full = await conn.fetchrow(f"SELECT {q.COLUMNS} FROM contacts WHERE id = $1", cid)
            return q.contact(full, await q.memberships(conn, cid))

    async def leave_all_lists(self, owner: str, address: str) -> int:
        """After an unsubscribe from everything: every membership marked unsubscribed."""
        addr = normalize_address(address, "address")
        async with self.db.transaction() as conn:
            done = await conn.execute(
                "UPDATE list_members SET status = 'unsubscribed' WHERE status <> 'unsubscribed' "
                "AND contact_id = (SELECT id FROM contacts WHERE owner = $1 AND address = $2)",
                owner, addr,
            )  # fmt: skip
        return q.count_of(done)
