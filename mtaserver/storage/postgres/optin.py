"""Double opt-in bookkeeping on PostgreSQL: the only writer of ``optin_settings`` and
``optin_sent``.

The same store as :mod:`mtaserver.storage.sqlite.optin`. Each node may run the
confirmation mailer: :meth:`PgOptInStore.mark_sent_op` runs in the transaction that
queues the mail and inserts the ``optin_sent`` mark; when two nodes queue the same
membership's mail at once, the second insert waits on the first's key and then finds it,
and the op raises :class:`AlreadySent` — its transaction, the duplicate mail included,
rolls back. So each membership gets one confirmation across the cluster.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from mtaserver.contacts import check_list_name
from mtaserver.errors import MtaError
from mtaserver.storage.common.optin import OptInSettings, PendingConfirm, pending_confirm
from mtaserver.storage.postgres.db import Connection, PgDatabase

_PENDING = (
    "SELECT m.list_id, m.contact_id, l.owner, l.name, c.address, s.from_address, s.subject, "
    "s.body FROM list_members m JOIN lists l ON l.id = m.list_id "
    "JOIN contacts c ON c.id = m.contact_id "
    "LEFT JOIN optin_settings s ON s.list_id = m.list_id "
    "WHERE m.status = 'unconfirmed' AND c.consent_status <> 'unsubscribed' "
    "AND NOT EXISTS (SELECT 1 FROM optin_sent x WHERE x.list_id = m.list_id "
    "AND x.contact_id = m.contact_id) AND (m.list_id, m.contact_id) > ($1, $2) "
    "ORDER BY m.list_id, m.contact_id LIMIT $3"
)


class AlreadySent(MtaError):
    """Another node queued this confirmation first: the batch is rolled back, not sent."""


def mark_sent_op(
    items: Sequence[tuple[int, int, str]], at: float
) -> Callable[[Connection], Awaitable[None]]:
    """Inside the enqueue's transaction: (list_id, contact_id, queue_id) have their mail."""
    lists = [i[0] for i in items]
    contacts = [i[1] for i in items]
    queue_ids = [i[2] for i in items]

    async def op(conn: Connection) -> None:
        rows = await conn.fetch(
            "INSERT INTO optin_sent (list_id, contact_id, queue_id, sent_at) "
            "SELECT l, c, q, $4 FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS u(l, c, q) "
            "ON CONFLICT (list_id, contact_id) DO NOTHING RETURNING list_id",
            lists, contacts, queue_ids, at,
        )  # fmt: skip
        if len(rows) != len({(lid, cid) for lid, cid, _ in items}):
            raise AlreadySent("a confirmation of this batch was queued by another node")

    return op


class PgOptInStore:
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    def mark_sent_op(
        self, items: Sequence[tuple[int, int, str]], at: float
    ) -> Callable[[Connection], Awaitable[None]]:
        return mark_sent_op(items, at)

    async def pending(
        self, limit: int = 200, after: tuple[int, int] = (0, 0)
    ) -> list[PendingConfirm]:
        """Unconfirmed memberships (of every owner) whose confirmation is not queued, in
        (list, contact) order after ``after``."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(_PENDING, after[0], after[1], limit)
        return [pending_confirm(r) for r in rows]

    async def settings(self, owner: str, list_name: str) -> OptInSettings | None:
        """The list's settings (defaults when none are stored); None: no such list."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT l.id, s.from_address, s.subject, s.body FROM lists l "
                "LEFT JOIN optin_settings s ON s.list_id = l.id WHERE l.owner=$1 AND l.name=$2",
                owner, list_name,
            )  # fmt: skip
        return None if row is None else OptInSettings(row[1], row[2], row[3])

    async def set_settings(
        self, owner: str, list_name: str, s: OptInSettings
    ) -> OptInSettings | None:
        """Replace the list's settings; None: no such list."""
        check_list_name(list_name, "name")
        s.check()
        async with self.db.transaction() as conn:
            list_id = await conn.fetchval(
                "SELECT id FROM lists WHERE owner=$1 AND name=$2", owner, list_name
            )
            if list_id is None:
                return None
            await conn.execute(
                "INSERT INTO optin_settings (list_id, from_address, subject, body) "
                "VALUES ($1,$2,$3,$4) ON CONFLICT (list_id) DO UPDATE SET "
                "from_address=excluded.from_address, subject=excluded.subject, "
                "body=excluded.body",
                list_id, s.from_address, s.subject, s.body,
            )  # fmt: skip
        return s
