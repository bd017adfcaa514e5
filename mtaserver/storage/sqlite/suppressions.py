"""Suppression entries: the only writer of ``suppressions`` and ``soft_bounces``.

What the entries mean (scope, reasons, the policy) is described in
:mod:`mtaserver.suppression`; this module stores what :func:`~mtaserver.suppression.decide`
decided about a bounce, complaint or unsubscribe: an entry, or a row in the soft-bounce
counter (kept ``soft_bounce_window``; it never becomes a suppression).
"""

from __future__ import annotations

import builtins
import sqlite3

from mtaserver.clock import Clock, SystemClock
from mtaserver.config.inbound import DEFAULT_SUPPRESSION, SuppressionConfig
from mtaserver.storage.sqlite.contacts import unsubscribe_in
from mtaserver.storage.sqlite.db import Database
from mtaserver.suppression import (
    COUNT,
    GLOBAL,
    NOT_POLICY_SOURCES,
    UNSUBSCRIBE,
    Suppression,
    SuppressionDecision,
    _scope_key,
    address_hash,
    narrowed,
    normalize,
)

_REPLY_MAX = 1000  # a reply longer than this adds nothing to judging it again


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
    address, scope, reason, source, created, expires, event_id, queue_id, reply = row
    return Suppression(
        address=str(address),
        scope=str(scope) or None,
        reason=str(reason),
        source=str(source),
        created_at=float(created),  # type: ignore[arg-type]
        expires_at=None if expires is None else float(expires),  # type: ignore[arg-type]
        event_id=None if event_id is None else int(event_id),  # type: ignore[call-overload]
        queue_id=None if queue_id is None else str(queue_id),
        reply=None if reply is None else str(reply),
    )


_COLUMNS = "address, scope, reason, source, created_at, expires_at, event_id, queue_id, reply"


def _upsert(conn: sqlite3.Connection, s: Suppression) -> None:
    # A new entry replaces an older one for the same address and scope, except that a
    # permanent entry is never shortened by a temporary one.
    conn.execute(
        f"INSERT INTO suppressions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT(address, scope) DO UPDATE SET reason=excluded.reason, "
        "source=excluded.source, created_at=excluded.created_at, event_id=excluded.event_id, "
        "queue_id=excluded.queue_id, reply=excluded.reply, "
        "expires_at=CASE WHEN suppressions.expires_at IS NULL "
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
            s.reply,
        ),
    )


# -- contacts: consent follows the list ----------------------------------------------------
def _consent_source(decision: SuppressionDecision) -> str:
    """Why a policy suppression unsubscribes the contact: a dead address is a bounce, an
    entry for one sending domain a complaint, unless the person unsubscribed."""
    if decision.reason == UNSUBSCRIBE:
        return "unsubscribe"
    return "bounce" if decision.action == GLOBAL else "complaint"


def _with_consent(conn: sqlite3.Connection, s: Suppression, consent: str | None) -> None:
    """The entry, and with ``consent`` the contacts' unsubscribe, in one transaction: a
    global entry reaches every owner's contact, a scoped one the sending domain's owners'."""
    _upsert(conn, s)
    if consent is not None:
        unsubscribe_in(conn, s.address, consent, s.created_at, sender_domain=s.scope)


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
        reply: str | None = None,
        consent: str | None = None,
    ) -> Suppression:
        """``consent`` (bounce | complaint | unsubscribe): also unsubscribe the owners'
        contacts with this address, in the same transaction (see :func:`_with_consent`)."""
        s = Suppression(
            address=normalize(address),
            scope=_scope_key(scope) or None,
            reason=reason,
            source=source,
            created_at=self.clock.now(),
            expires_at=expires_at,
            event_id=event_id,
            queue_id=queue_id,
            reply=reply[:_REPLY_MAX] if reply else None,
        )
        await self.db.write(lambda conn: _with_consent(conn, s, consent))
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

        return await self.db.read_quick(fn)  # at RCPT, per recipient: no thread hop

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
        reason: str,
        *,
        sender_domain: str | None,
        source: str,
        kind: str | None = None,
        reply: str | None = None,
        queue_id: str | None = None,
        event_id: int | None = None,
    ) -> Suppression | None:
        """Act on one bounce, complaint or unsubscribe through :func:`decide`; the entry
        made, if any. ``reason`` is a taxonomy reason (a category name is read as its
        reason); ``kind`` defaults to the reason's kind in the classify table. The
        operator's ``[inbound.suppression.policy]`` may only narrow the decision."""
        decision = narrowed(reason, kind, sender_domain, self.policy)
        if decision is None:
            return None
        return await self.record(
            address, decision, source=source, reply=reply, queue_id=queue_id, event_id=event_id
        )

    async def record(
        self,
        address: str,
        decision: SuppressionDecision,
        *,
        source: str,
        reply: str | None = None,
        queue_id: str | None = None,
        event_id: int | None = None,
    ) -> Suppression | None:
        """Store a decision: an entry (global or for its sending domain), or one row in the
        soft-bounce counter, which is only ever counted."""
        addr = normalize(address)
        p = self.policy
        now = self.clock.now()
        if decision.action != COUNT:
            expires = now + p.hard_suppress_for if p.hard_suppress_for else None
            return await self.add(
                addr,
                decision.reason,
                scope=None if decision.action == GLOBAL else decision.scope,
                source=source,
                expires_at=expires,
                event_id=event_id,
                queue_id=queue_id,
                reply=reply,
                consent=_consent_source(decision),
            )

        def count(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO soft_bounces(address, at, category, queue_id) VALUES (?,?,?,?)",
                (addr, now, decision.reason, queue_id),
            )
            conn.execute(
                "DELETE FROM soft_bounces WHERE address=? AND at <= ?",
                (addr, now - p.soft_bounce_window),
            )

        await self.db.write(count)
        return None

    async def soft_bounces(self, address: str) -> builtins.list[tuple[float, str]]:
        """(at, reason) of the address's counted bounces within the window, oldest first."""
        since = self.clock.now() - self.policy.soft_bounce_window

        def fn(conn: sqlite3.Connection) -> builtins.list[tuple[float, str]]:
            return [
                (float(at), str(reason))
                for at, reason in conn.execute(
                    "SELECT at, category FROM soft_bounces WHERE address=? AND at > ? ORDER BY at",
                    (normalize(address), since),
                )
            ]

        return await self.db.read(fn)

    async def made_by_policy(self) -> builtins.list[Suppression]:
        """Every entry a bounce or complaint made, expired ones too (for review), oldest
        first."""
        marks = ",".join("?" * len(NOT_POLICY_SOURCES))

        def fn(conn: sqlite3.Connection) -> list[Suppression]:
            return [
                _row(r)
                for r in conn.execute(
                    f"SELECT {_COLUMNS} FROM suppressions WHERE source NOT IN ({marks}) "
                    "ORDER BY created_at, address",
                    NOT_POLICY_SOURCES,
                )
            ]

        return await self.db.read(fn)

    async def lift(self, entries: builtins.list[Suppression]) -> builtins.list[Suppression]:
        """Remove these entries, each only if unchanged since it was read (a newer bounce
        may have replaced it); the ones removed."""

        def op(conn: sqlite3.Connection) -> list[Suppression]:
            gone = []
            for s in entries:
                cur = conn.execute(
                    "DELETE FROM suppressions WHERE address=? AND scope=? AND created_at=? "
                    "AND reason=?",
                    (s.address, _scope_key(s.scope), s.created_at, s.reason),
                )
                if cur.rowcount:
                    gone.append(s)
            return gone

        return await self.db.write(op)

    async def purge_expired(self) -> int:
        """Drop entries past their expiry (kept until then for ``list --all``)."""
        now = self.clock.now()

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM suppressions WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            ).rowcount

        return await self.db.write(op)
