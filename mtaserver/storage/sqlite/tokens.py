"""Admin API bearer tokens: created once, stored only as a SHA-256 hash, revocable.

A token carries 256 random bits, so a plain SHA-256 of it is as good as a slow KDF (nobody
can enumerate the input space) and lets the API find the token by its hash in one indexed
lookup. The token text is shown once, at creation; it cannot be read back.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from dataclasses import dataclass

from mtaserver.clock import Clock, SystemClock
from mtaserver.errors import MtaError
from mtaserver.storage.sqlite.db import Database

PREFIX = "mta_"
TOUCH_EVERY = 60.0  # seconds between last_used_at updates of one token
MAX_NAME = 64


class TokenError(MtaError, ValueError):
    """An operator mistake about tokens (bad name, unknown token, duplicate name)."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: int
    name: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or name.isdigit():
        raise TokenError(
            f"token name must be 1-{MAX_NAME} characters and not all digits, got {name!r}"
        )
    if not all(c.isalnum() or c in "-_.@" for c in name):
        raise TokenError(f"token name may use letters, digits and - _ . @, got {name!r}")
    return name


_COLUMNS = "id, name, created_at, last_used_at, revoked_at"


class TokenStore:
    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self._clock: Clock = clock or SystemClock()

    async def create(self, name: str, now: float | None = None) -> tuple[TokenInfo, str]:
        """A new token named ``name``; returns its info and the token text (shown once)."""
        name = check_name(name)
        token = new_token()
        t = self._clock.now() if now is None else now

        def op(conn: sqlite3.Connection) -> int:
            try:
                cur = conn.execute(
                    "INSERT INTO admin_tokens(name, token_hash, created_at) VALUES (?,?,?)",
                    (name, token_hash(token), t),
                )
            except sqlite3.IntegrityError:
                raise TokenError(
                    f"a live token named {name!r} exists; revoke it first or pick another name"
                ) from None
            return int(cur.lastrowid or 0)

        token_id = await self.db.write(op)
        return TokenInfo(token_id, name, t, None, None), token

    async def list(self, *, include_revoked: bool = True) -> list[TokenInfo]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"

        def fn(conn: sqlite3.Connection) -> list[TokenInfo]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM admin_tokens{where} ORDER BY id")
            return [TokenInfo(*r) for r in rows]

        return await self.db.read(fn)

    async def revoke(self, name_or_id: str, now: float | None = None) -> TokenInfo:
        """Revoke the live token with this name, or the token with this numeric id."""
        t = self._clock.now() if now is None else now
        key = name_or_id.strip()

        def op(conn: sqlite3.Connection) -> TokenInfo | None:
            if key.isdigit():
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM admin_tokens WHERE id=?", (int(key),)
                ).fetchone()
            else:
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM admin_tokens WHERE name=? AND revoked_at IS NULL",
                    (key,),
                ).fetchone()
            if row is None:
                return None
            info = TokenInfo(*row)
            if info.revoked_at is not None:
                return info
            conn.execute("UPDATE admin_tokens SET revoked_at=? WHERE id=?", (t, info.id))
            return TokenInfo(info.id, info.name, info.created_at, info.last_used_at, t)

        found = await self.db.write(op)
        if found is None:
            raise TokenError(f"no live token named {key!r}" if not key.isdigit()
                             else f"no token with id {key}")  # fmt: skip
        return found

    async def verify(self, token: str, now: float | None = None) -> TokenInfo | None:
        """The live token with this text, or None. Touches ``last_used_at`` now and then."""
        if not token.startswith(PREFIX) or len(token) > 200:
            return None
        digest = token_hash(token)

        def fn(conn: sqlite3.Connection) -> TokenInfo | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM admin_tokens WHERE token_hash=? AND revoked_at IS NULL",
                (digest,),
            ).fetchone()
            return None if row is None else TokenInfo(*row)

        info = await self.db.read(fn)
        if info is None:
            return None
        t = self._clock.now() if now is None else now
        if info.last_used_at is None or t - info.last_used_at >= TOUCH_EVERY:
            await self.db.write(
                lambda conn: conn.execute(
                    "UPDATE admin_tokens SET last_used_at=? WHERE id=?", (t, info.id)
                )
            )
        return info
