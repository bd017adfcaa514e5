"""Admin API bearer tokens on PostgreSQL: the only writer of ``admin_tokens``.

The same tokens as :mod:`mtaserver.storage.sqlite.tokens` (its values and name rules are
reused), shared by every node: a token created on one node opens the admin API of any, so
the operator's tools can ask whichever node answers; a revoked one is refused by all.
"""

from __future__ import annotations

import builtins
from typing import Any

from mtaserver.clock import Clock, SystemClock
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.sqlite.tokens import (
    PREFIX,
    TOUCH_EVERY,
    TokenError,
    TokenInfo,
    check_name,
    new_token,
    token_hash,
)

_COLUMNS = "id, name, created_at, last_used_at, revoked_at"


def _info(r: Any) -> TokenInfo:
    return TokenInfo(int(r[0]), str(r[1]), float(r[2]), r[3], r[4])


class PgTokenStore:
    def __init__(self, db: PgDatabase, clock: Clock | None = None) -> None:
        self.db = db
        self._clock: Clock = clock or SystemClock()

    async def create(self, name: str, now: float | None = None) -> tuple[TokenInfo, str]:
        """A new token named ``name``; returns its info and the token text (shown once)."""
        name = check_name(name)
        token = new_token()
        t = self._clock.now() if now is None else now
        async with self.db.transaction() as conn:
            token_id = await conn.fetchval(
                "INSERT INTO admin_tokens(name, token_hash, created_at) VALUES ($1,$2,$3) "
                "ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING RETURNING id",
                name, token_hash(token), t,
            )  # fmt: skip
        if token_id is None:
            raise TokenError(
                f"a live token named {name!r} exists; revoke it first or pick another name"
            )
        return TokenInfo(int(token_id), name, t, None, None), token

    async def list(self, *, include_revoked: bool = True) -> builtins.list[TokenInfo]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        async with self.db.connection() as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM admin_tokens{where} ORDER BY id")
        return [_info(r) for r in rows]

    async def revoke(self, name_or_id: str, now: float | None = None) -> TokenInfo:
        """Revoke the live token with this name, or the token with this numeric id."""
        t = self._clock.now() if now is None else now
        key = name_or_id.strip()
        async with self.db.transaction() as conn:
            if key.isdigit():
                row = await conn.fetchrow(
                    f"SELECT {_COLUMNS} FROM admin_tokens WHERE id=$1 FOR UPDATE", int(key)
                )
            else:
                row = await conn.fetchrow(
                    f"SELECT {_COLUMNS} FROM admin_tokens WHERE name=$1 AND revoked_at IS NULL "
                    "FOR UPDATE",
                    key,
                )
            if row is None:
                raise TokenError(f"no live token named {key!r}" if not key.isdigit()
                                 else f"no token with id {key}")  # fmt: skip
            info = _info(row)
            if info.revoked_at is not None:
                return info
            await conn.execute("UPDATE admin_tokens SET revoked_at=$1 WHERE id=$2", t, info.id)
        return TokenInfo(info.id, info.name, info.created_at, info.last_used_at, t)

    async def verify(self, token: str, now: float | None = None) -> TokenInfo | None:
        """The live token with this text, or None. Touches ``last_used_at`` now and then."""
        if not token.startswith(PREFIX) or len(token) > 200:
            return None
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM admin_tokens WHERE token_hash=$1 AND revoked_at IS NULL",
                token_hash(token),
            )
            if row is None:
                return None
            info = _info(row)
            t = self._clock.now() if now is None else now
            if info.last_used_at is None or t - info.last_used_at >= TOUCH_EVERY:
                await conn.execute(
                    "UPDATE admin_tokens SET last_used_at=$1 WHERE id=$2", t, info.id
                )
        return info
