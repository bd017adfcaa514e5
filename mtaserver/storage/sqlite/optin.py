"""Double opt-in bookkeeping: the only writer of ``optin_settings`` and ``optin_sent``.

The confirmation mailer asks :meth:`OptInStore.pending` for unconfirmed memberships whose
mail is not queued yet (the partial index on unconfirmed members keeps that scan to them),
and queues each mail with :func:`mark_sent_in` as the spool's ``also``: the mail and the
mark commit together, so every membership gets its confirmation exactly once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from mtaserver.contacts import check_list_name
from mtaserver.storage.common.optin import OptInSettings, PendingConfirm, pending_confirm
from mtaserver.storage.sqlite.db import Database

__all__ = ["OptInSettings", "OptInStore", "PendingConfirm", "mark_sent_in"]


_PENDING = (
    "SELECT m.list_id, m.contact_id, l.owner, l.name, c.address, s.from_address, s.subject, "
    "s.body FROM list_members m JOIN lists l ON l.id = m.list_id "
    "JOIN contacts c ON c.id = m.contact_id "
    "LEFT JOIN optin_settings s ON s.list_id = m.list_id "
    "WHERE m.status = 'unconfirmed' AND c.consent_status <> 'unsubscribed' "
    "AND NOT EXISTS (SELECT 1 FROM optin_sent x WHERE x.list_id = m.list_id "
    "AND x.contact_id = m.contact_id) AND (m.list_id, m.contact_id) > (?, ?) "
    "ORDER BY m.list_id, m.contact_id LIMIT ?"
)


def mark_sent_in(
    conn: sqlite3.Connection, items: Sequence[tuple[int, int, str]], at: float
) -> None:
    """Inside the enqueue's transaction: (list_id, contact_id, queue_id) have their mail."""
    conn.executemany(
        "INSERT INTO optin_sent (list_id, contact_id, queue_id, sent_at) VALUES (?,?,?,?) "
        "ON CONFLICT (list_id, contact_id) DO NOTHING",
        [(lid, cid, qid, at) for lid, cid, qid in items],
    )


class OptInStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def mark_sent_op(
        self, items: Sequence[tuple[int, int, str]], at: float
    ) -> Callable[[sqlite3.Connection], None]:
        """:func:`mark_sent_in` as the spool's ``also`` (each backend gives its own)."""
        return lambda conn: mark_sent_in(conn, items, at)

    async def pending(
        self, limit: int = 200, after: tuple[int, int] = (0, 0)
    ) -> list[PendingConfirm]:
        """Unconfirmed memberships (of every owner) whose confirmation is not queued, in
        (list, contact) order after ``after`` (keyset: one pass moves past what it skips)."""

        def fn(conn: sqlite3.Connection) -> list[PendingConfirm]:
            return [pending_confirm(r) for r in conn.execute(_PENDING, (*after, limit))]

        return await self.db.read(fn)

    async def settings(self, owner: str, list_name: str) -> OptInSettings | None:
        """The list's settings (defaults when none are stored); None: no such list."""

        def fn(conn: sqlite3.Connection) -> OptInSettings | None:
            row = conn.execute(
                "SELECT l.id, s.from_address, s.subject, s.body FROM lists l "
                "LEFT JOIN optin_settings s ON s.list_id = l.id WHERE l.owner=? AND l.name=?",
                (owner, list_name),
            ).fetchone()
            return None if row is None else OptInSettings(row[1], row[2], row[3])

        return await self.db.read(fn)

    async def set_settings(
        self, owner: str, list_name: str, s: OptInSettings
    ) -> OptInSettings | None:
        """Replace the list's settings; None: no such list."""
        check_list_name(list_name, "name")
        s.check()

        def op(conn: sqlite3.Connection) -> OptInSettings | None:
            row = conn.execute(
                "SELECT id FROM lists WHERE owner=? AND name=?", (owner, list_name)
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "INSERT INTO optin_settings (list_id, from_address, subject, body) "
                "VALUES (?,?,?,?) ON CONFLICT (list_id) DO UPDATE SET "
                "from_address=excluded.from_address, subject=excluded.subject, "
                "body=excluded.body",
                (row[0], s.from_address, s.subject, s.body),
            )
            return s

        return await self.db.write(op)
