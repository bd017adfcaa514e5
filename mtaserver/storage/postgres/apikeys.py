"""API keys on PostgreSQL: the only writer of ``api_keys``.

The same keys as :mod:`mtaserver.storage.sqlite.apikeys` (its values, scopes and key
format are reused): one table shared by every node, so a key created on one node sends
through any, and a revoked key stops working on all of them at the next request.
"""

from __future__ import annotations

from typing import Any

from mtaserver.clock import Clock, SystemClock
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.sqlite.apikeys import (
    MAX_KEY_CHARS,
    PREFIX,
    TOUCH_EVERY,
    ApiKeyError,
    ApiKeyInfo,
    key_hash,
    new_key,
)

_COLUMNS = 'id, "user", name, scopes, created_at, last_used_at, revoked_at'


def _info(r: Any) -> ApiKeyInfo:
    return ApiKeyInfo(str(r[0]), str(r[1]), str(r[2]), frozenset(str(r[3]).split()),
                      float(r[4]), r[5], r[6])  # fmt: skip


class PgApiKeyStore:
    def __init__(self, db: PgDatabase, clock: Clock | None = None) -> None:
        self.db = db
        self._clock: Clock = clock or SystemClock()

    async def create(
        self, user: str, scopes: frozenset[str], name: str = "", now: float | None = None
    ) -> tuple[ApiKeyInfo, str]:
        """A new key for ``user``; returns its info and the key text (shown once)."""
        key_id, key = new_key(scopes)
        t = self._clock.now() if now is None else now
        async with self.db.transaction() as conn:
            await conn.execute(
                'INSERT INTO api_keys(id, "user", name, scopes, key_hash, created_at) '
                "VALUES ($1,$2,$3,$4,$5,$6)",
                key_id, user, name, " ".join(sorted(scopes)), key_hash(key), t,
            )  # fmt: skip
        return ApiKeyInfo(key_id, user, name, scopes, t, None, None), key

    async def list(self, user: str | None = None) -> list[ApiKeyInfo]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f'SELECT {_COLUMNS} FROM api_keys WHERE $1::text IS NULL OR "user" = $1 '
                "ORDER BY created_at, id",
                user,
            )
        return [_info(r) for r in rows]

    async def revoke(self, key_id: str, now: float | None = None) -> ApiKeyInfo:
        """Revoke the key with this id; it stops working at the next request on every node."""
        t = self._clock.now() if now is None else now
        wanted = key_id.strip()
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM api_keys WHERE id=$1 FOR UPDATE", wanted
            )
            if row is None:
                raise ApiKeyError(f"no API key with id {wanted!r} (see `mtaserver apikey list`)")
            info = _info(row)
            if info.revoked_at is not None:
                return info
            await conn.execute("UPDATE api_keys SET revoked_at=$1 WHERE id=$2", t, wanted)
        return ApiKeyInfo(info.key_id, info.user, info.name, info.scopes, info.created_at,
                          info.last_used_at, t)  # fmt: skip

    async def verify(self, key: str, now: float | None = None) -> ApiKeyInfo | None:
        """The live key with this text, or None. Touches ``last_used_at`` now and then."""
        if not key.startswith(PREFIX) or len(key) > MAX_KEY_CHARS:
            return None
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash=$1 AND revoked_at IS NULL",
                key_hash(key),
            )
            if row is None:
                return None
            info = _info(row)
            t = self._clock.now() if now is None else now
            if info.last_used_at is None or t - info.last_used_at >= TOUCH_EVERY:
                await conn.execute(
                    "UPDATE api_keys SET last_used_at=$1 WHERE id=$2", t, info.key_id
                )
        return info
