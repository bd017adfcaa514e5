"""Suppression entries on PostgreSQL: the only writer of ``suppressions`` and ``soft_bounces``.

The same store as :mod:`mtaserver.storage.sqlite.suppressions` (what the entries mean is
:mod:`mtaserver.suppression`'s), shared by every node: a hard bounce node A records is in
the table B checks at its next RCPT or claim — no cache, no propagation delay. Contacts'
consent follows as on SQLite: an entry given ``consent`` unsubscribes the owners' contacts
with the address in the same transaction (``storage.postgres.contacts.unsubscribe_in``).
"""

from __future__ import annotations

import builtins
from typing import Any

from mtaserver.clock import Clock, SystemClock
from mtaserver.config.inbound import DEFAULT_SUPPRESSION, SuppressionConfig
from mtaserver.storage.postgres.contacts.rows import unsubscribe_in
from mtaserver.storage.postgres.db import Connection, PgDatabase
from mtaserver.storage.sqlite.suppressions import _consent_source
from mtaserver.suppression import (
    COUNT,
    GLOBAL,
    NOT_POLICY_SOURCES,
    Suppression,
    SuppressionDecision,
    _scope_key,
    address_hash,
    narrowed,
    normalize,
)

_REPLY_MAX = 1000
_COLUMNS = "address, scope, reason, source, created_at, expires_at, event_id, queue_id, reply"


def _row(r: Any) -> Suppression:
    return Suppression(
        address=r[0], scope=r[1] or None, reason=r[2], source=r[3], created_at=r[4],
        expires_at=r[5], event_id=r[6], queue_id=r[7], reply=r[8],
    )  # fmt: skip


# -- the privacy erase (storage.postgres.privacy runs these inside its transaction) ---------
async def hash_entries(conn: Connection, address: str) -> int:
    """Replace the address's entries by hashed ones (same scope, reason, expiry); count."""
    addr = normalize(address)
    rows = await conn.fetch(
        "INSERT INTO suppressions (address, scope, reason, source, created_at, expires_at) "
        "SELECT $1, scope, reason, source, created_at, expires_at FROM suppressions "
        "WHERE address=$2 ON CONFLICT (address, scope) DO UPDATE SET expires_at = CASE WHEN "
        "suppressions.expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL "
        "ELSE greatest(suppressions.expires_at, excluded.expires_at) END RETURNING scope",
        address_hash(addr), addr,
    )  # fmt: skip
    await conn.execute("DELETE FROM suppressions WHERE address=$1", addr)
    return len(rows)


async def add_hashed(conn: Connection, address: str, reason: str, now: float) -> None:
    """A permanent global entry for an erased address, unless one exists."""
    await conn.execute(
        "INSERT INTO suppressions (address, scope, reason, source, created_at, expires_at) "
        "VALUES ($1, '', $2, 'privacy', $3, NULL) ON CONFLICT (address, scope) DO UPDATE SET "
        "expires_at=NULL",
        address_hash(address), reason, now,
    )  # fmt: skip


async def forget_soft_bounces(conn: Connection, address: str) -> int:
    """Delete the address's soft-bounce counter rows (privacy erase); how many."""
    status = await conn.execute(
        "DELETE FROM soft_bounces WHERE lower(address)=$1", normalize(address)
    )
    return int(status.split()[-1])


class PgSuppressionStore:
    """Suppression entries in the cluster's database."""

    def __init__(
        self,
        db: PgDatabase,
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
        """Upsert an entry; a permanent entry is never shortened by a temporary one.
        ``consent`` (bounce | complaint | unsubscribe): also unsubscribe the owners' contacts
        with this address, in the same transaction (a global entry every owner's, a scoped
        one the sending domain's owners')."""
        s = Suppression(
            address=normalize(address), scope=_scope_key(scope) or None, reason=reason,
            source=source, created_at=self.clock.now(), expires_at=expires_at,
            event_id=event_id, queue_id=queue_id, reply=reply[:_REPLY_MAX] if reply else None,
        )  # fmt: skip
        async with self.db.transaction() as conn:
            await conn.execute(
                f"INSERT INTO suppressions ({_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) "
                "ON CONFLICT (address, scope) DO UPDATE SET reason=excluded.reason, "
                "source=excluded.source, created_at=excluded.created_at, "
                "event_id=excluded.event_id, queue_id=excluded.queue_id, reply=excluded.reply, "
                "expires_at=CASE WHEN suppressions.expires_at IS NULL "
                "THEN NULL ELSE excluded.expires_at END",
                s.address, _scope_key(s.scope), s.reason, s.source, s.created_at, s.expires_at,
                s.event_id, s.queue_id, s.reply,
            )  # fmt: skip
            if consent is not None:
                await unsubscribe_in(conn, s.address, consent, s.created_at, sender_domain=s.scope)
        return s

    async def remove(
        self, address: str, scope: str | None = None, *, all_scopes: bool = False
    ) -> int:
        addr = normalize(address)
        hashed = address_hash(addr)
        async with self.db.transaction() as conn:
            if all_scopes:
                status = await conn.execute(
                    "DELETE FROM suppressions WHERE address IN ($1, $2)", addr, hashed
                )
                await conn.execute("DELETE FROM soft_bounces WHERE address=$1", addr)
            else:
                status = await conn.execute(
                    "DELETE FROM suppressions WHERE address IN ($1, $2) AND scope=$3",
                    addr, hashed, _scope_key(scope),
                )  # fmt: skip
        return int(status.split()[-1])

    async def check(self, address: str, sender_domain: str | None) -> Suppression | None:
        """The entry that stops mail from ``sender_domain`` to ``address``, if any."""
        addr = normalize(address)
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM suppressions WHERE address IN ($1, $2) "
                "AND scope IN ('', $3) AND (expires_at IS NULL OR expires_at > $4) "
                "ORDER BY scope = '' DESC LIMIT 1",
                addr, address_hash(addr), _scope_key(sender_domain), self.clock.now(),
            )  # fmt: skip
        return _row(row) if row is not None else None

    async def list(
        self, address: str | None = None, *, limit: int = 1000, include_expired: bool = False
    ) -> builtins.list[Suppression]:
        where: builtins.list[str] = ["TRUE"]
        params: builtins.list[object] = []
        if address:
            where.append("address IN ($1, $2)")
            params.extend((normalize(address), address_hash(address)))
        if not include_expired:
            where.append(f"(expires_at IS NULL OR expires_at > ${len(params) + 1})")
            params.append(self.clock.now())
        params.append(limit)
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM suppressions WHERE {' AND '.join(where)} "
                f"ORDER BY created_at DESC, address LIMIT ${len(params)}",
                *params,
            )
        return [_row(r) for r in rows]

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
        """Act on one bounce, complaint or unsubscribe (same policy as the SQLite store)."""
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
        addr = normalize(address)
        p = self.policy
        now = self.clock.now()
        if decision.action != COUNT:
            return await self.add(
                addr, decision.reason,
                scope=None if decision.action == GLOBAL else decision.scope, source=source,
                expires_at=now + p.hard_suppress_for if p.hard_suppress_for else None,
                event_id=event_id, queue_id=queue_id, reply=reply,
                consent=_consent_source(decision),
            )  # fmt: skip
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO soft_bounces(address, at, category, queue_id) VALUES ($1,$2,$3,$4)",
                addr, now, decision.reason, queue_id,
            )  # fmt: skip
            await conn.execute(
                "DELETE FROM soft_bounces WHERE address=$1 AND at <= $2",
                addr, now - p.soft_bounce_window,
            )  # fmt: skip
        return None

    async def soft_bounces(self, address: str) -> builtins.list[tuple[float, str]]:
        since = self.clock.now() - self.policy.soft_bounce_window
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT at, category FROM soft_bounces WHERE address=$1 AND at > $2 ORDER BY at",
                normalize(address), since,
            )  # fmt: skip
        return [(float(r[0]), str(r[1])) for r in rows]

    async def purge_expired(self) -> int:
        async with self.db.transaction() as conn:
            status = await conn.execute(
                "DELETE FROM suppressions WHERE expires_at IS NOT NULL AND expires_at <= $1",
                self.clock.now(),
            )
        return int(status.split()[-1])

    async def made_by_policy(self) -> builtins.list[Suppression]:
        """Every entry a bounce or complaint made, expired ones too (for ``suppression
        review``), oldest first."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM suppressions WHERE NOT (source = ANY($1::text[])) "
                "ORDER BY created_at, address",
                list(NOT_POLICY_SOURCES),
            )
        return [_row(r) for r in rows]

    async def lift(self, entries: builtins.list[Suppression]) -> builtins.list[Suppression]:
        """Remove these entries, each only if unchanged since it was read (another node's
        newer bounce may have replaced it); the ones removed."""
        gone: builtins.list[Suppression] = []
        async with self.db.transaction() as conn:
            for e in entries:
                status = await conn.execute(
                    "DELETE FROM suppressions WHERE address=$1 AND scope=$2 AND created_at=$3 "
                    "AND reason=$4",
                    e.address, _scope_key(e.scope), e.created_at, e.reason,
                )  # fmt: skip
                if int(status.split()[-1]):
                    gone.append(e)
        return gone
