"""Suppression entries: the only writer of ``suppressions`` and ``soft_bounces``.

What the entries mean (scope, reasons, the bounce policy) is described in
:mod:`mtaserver.suppression`; this module stores them and applies the policy to a bounce
inside one transaction, so a soft-bounce count and the suppression it triggers never part.
"""

from __future__ import annotations

import sqlite3

from mtaserver.clock import Clock, SystemClock
from mtaserver.config.inbound import DEFAULT_SUPPRESSION, SuppressionConfig
from mtaserver.storage.sqlite.db import Database
from mtaserver.suppression import Suppression, _scope_key, address_hash, normalize


def hash_entries(conn: sqlite3.Connection, address: str) -> int:
    """Replace the address's entries by hashed ones (same scope, reason, expiry); count."""
    addr = normalize(address)
    hashed = address_hash(addr)
    scopes = [r[0] for r in conn.execute("SELECT scope FROM suppressions WHERE address=?", (addr,))]
    for scope in scopes:
        conn.execute(
            "INSERT INTO suppressions (address, scope, reason, source, created_at, expires_at) "
            "SELECT ?, scope, reason, source, created_at, expires_at FROM suppressions "
            "WHERE address=? AND scope=? ON CONFLICT(address, scope) DO UPDATE SET "
            "expires_at=CASE WHEN suppressions.expires_at IS NULL OR excluded.expires_at IS NULL "
            "THEN NULL ELSE max(suppressions.expires_at, excluded.expires_at) END",
            (hashed, addr, scope),
        )
    conn.execute("DELETE FROM suppressions WHERE address=?", (addr,))
    return len(scopes)


def add_hashed(conn: sqlite3.Connection, address: str, reason: str, now: float) -> None:
    """A permanent global entry for an erased address, unless one exists."""
    conn.execute(
        "INSERT INTO suppressions (address, scope, reason, source, created_at, expires_at) "
        "VALUES (?, '', ?, 'privacy', ?, NULL) ON CONFLICT(address, scope) DO UPDATE SET "
        "expires_at=NULL",
        (address_hash(address), reason, now),
    )


def forget_soft_bounces(conn: sqlite3.Connection, address: str) -> int:
    """Delete the address's soft-bounce counter rows (privacy erase); how many."""
    return conn.execute(
        "DELETE FROM soft_bounces WHERE lower(address)=?", (normalize(address),)
    ).rowcount


def _row(row: tuple[object, ...]) -> Suppression:
    address, scope, reason, source, created, expires, event_id, queue_id = row
    return Suppression(
        address=str(address),
        scope=str(scope) or None,
        reason=str(reason),
        source=str(source),
        created_at=float(created),  # type: ignore[arg-type]
        expires_at=None if expires is None else float(expires),  # type: ignore[arg-type]
        event_id=None if event_id is None else int(event_id),  # type: ignore[call-overload]
        queue_id=None if queue_id is None else str(queue_id),
    )


_COLUMNS = "address, scope, reason, source, created_at, expires_at, event_id, queue_id"


def _upsert(conn: sqlite3.Connection, s: Suppression) -> None:
    # A new entry replaces an older one for the same address and scope, except that a
    # permanent entry is never shortened by a temporary one.
    conn.execute(
        f"INSERT INTO suppressions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?) "
        "ON CONFLICT(address, scope) DO UPDATE SET reason=excluded.reason, "
        "source=excluded.source, created_at=excluded.created_at, event_id=excluded.event_id, "
        "queue_id=excluded.queue_id, expires_at=CASE WHEN suppressions.expires_at IS NULL "
        "THEN NULL ELSE excluded.expires_at END",
        (
            s.address,
            _scope_key(s.scope),
            s.reason,
            s.source,
            s.created_at,
            s.expires_at,
            s.event_id,
            s.queue_id,
        ),
    )


class SuppressionStore:
    """Suppression entries in the shared database (written through group commit)."""

    def __init__(
        self,
        db: Database,
        clock: Clock | None = None,
        policy: SuppressionConfig = DEFAULT_SUPPRESSION,
    ) -> None:
        self.db = db
        self.clock = clock or SystemClock()
        self.policy = policy

    async def add(
        self,
        address: str,
        reason: str,
        *,
        scope: str | None = None,
        source: str = "manual",
        expires_at: float | None = None,
        event_id: int | None = None,
        queue_id: str | None = None,
    ) -> Suppression:
        s = Suppression(
            address=normalize(address),
            scope=_scope_key(scope) or None,
            reason=reason,
            source=source,
            created_at=self.clock.now(),
            expires_at=expires_at,
            event_id=event_id,
            queue_id=queue_id,
        )
        await self.db.write(lambda conn: _upsert(conn, s))
        return s

    async def remove(
        self, address: str, scope: str | None = None, *, all_scopes: bool = False
    ) -> int:
        """Delete entries; with ``all_scopes`` every scope of the address, else just ``scope``."""
        addr = normalize(address)

        def op(conn: sqlite3.Connection) -> int:
            hashed = address_hash(addr)  # an erased address is kept hashed
            if all_scopes:
                cur = conn.execute(
                    "DELETE FROM suppressions WHERE address IN (?, ?)", (addr, hashed)
                )
                conn.execute("DELETE FROM soft_bounces WHERE address=?", (addr,))
            else:
                cur = conn.execute(
                    "DELETE FROM suppressions WHERE address IN (?, ?) AND scope=?",
                    (addr, hashed, _scope_key(scope)),
                )
            return cur.rowcount

        return await self.db.write(op)

    async def check(self, address: str, sender_domain: str | None) -> Suppression | None:
        """The entry that stops mail from ``sender_domain`` to ``address``, if any."""
        addr = normalize(address)
        scope = _scope_key(sender_domain)
        now = self.clock.now()

        def fn(conn: sqlite3.Connection) -> Suppression | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM suppressions WHERE address IN (?, ?) "
                "AND scope IN ('', ?) AND (expires_at IS NULL OR expires_at > ?) "
                "ORDER BY scope='' DESC LIMIT 1",
                (addr, address_hash(addr), scope, now),
            ).fetchone()
            return _row(row) if row else None

        return await self.db.read(fn)

    async def list(
        self, address: str | None = None, *, limit: int = 1000, include_expired: bool = False
    ) -> list[Suppression]:
        now = self.clock.now()
        where = []
        params: list[object] = []
        if address:
            where.append("address IN (?, ?)")
            params.extend((normalize(address), address_hash(address)))
        if not include_expired:
            where.append("(expires_at IS NULL OR expires_at > ?)")
            params.append(now)
        sql = f"SELECT {_COLUMNS} FROM suppressions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, address LIMIT ?"
        params.append(limit)

        def fn(conn: sqlite3.Connection) -> list[Suppression]:
            return [_row(r) for r in conn.execute(sql, params).fetchall()]

        return await self.db.read(fn)

    async def apply(
        self,
        address: str,
        category: str,
        *,
        sender_domain: str | None,
        source: str,
        queue_id: str | None = None,
        event_id: int | None = None,
    ) -> Suppression | None:
        """Act on one bounce or complaint per the policy table; the entry made, if any."""
        action = self.policy.action(category)
        now = self.clock.now()
        addr = normalize(address)
        p = self.policy
        if action == "ignore":
            return None
        if action in ("suppress", "suppress-sender"):
            scope = sender_domain if action == "suppress-sender" else None
            expires = now + p.hard_suppress_for if p.hard_suppress_for else None
            return await self.add(
                addr,
                category,
                scope=scope,
                source=source,
                expires_at=expires,
                event_id=event_id,
                queue_id=queue_id,
            )

        def count(conn: sqlite3.Connection) -> Suppression | None:
            conn.execute(
                "INSERT INTO soft_bounces(address, at, category, queue_id) VALUES (?,?,?,?)",
                (addr, now, category, queue_id),
            )
            conn.execute(
                "DELETE FROM soft_bounces WHERE address=? AND at <= ?",
                (addr, now - p.soft_bounce_window),
            )
            (n,) = conn.execute(
                "SELECT count(*) FROM soft_bounces WHERE address=? AND at > ?",
                (addr, now - p.soft_bounce_window),
            ).fetchone()
            if n < p.soft_bounce_threshold:
                return None
            s = Suppression(
                address=addr,
                scope=None,
                reason=f"soft-bounces:{category}",
                source=source,
                created_at=now,
                expires_at=now + p.soft_suppress_for,
                event_id=event_id,
                queue_id=queue_id,
            )
            existing = conn.execute(
                "SELECT expires_at FROM suppressions WHERE address=? AND scope=''", (addr,)
            ).fetchone()
            if existing is not None and (existing[0] is None or existing[0] > s.expires_at):
                return None  # already suppressed for longer
            _upsert(conn, s)
            conn.execute("DELETE FROM soft_bounces WHERE address=?", (addr,))
            return s

        return await self.db.write(count)

    async def purge_expired(self) -> int:
        """Drop entries past their expiry (kept until then for ``list --all``)."""
        now = self.clock.now()

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM suppressions WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            ).rowcount

        return await self.db.write(op)
