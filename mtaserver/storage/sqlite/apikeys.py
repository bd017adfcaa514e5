"""API keys for the HTTP send API: bound to a user, scoped, stored only as a SHA-256 hash.

A key looks like SendGrid's (``SG.<id>.<secret>``) so code that checks the prefix keeps
working. The secret carries 256 random bits, so a plain SHA-256 is as good as a slow KDF
and lets each request find its key in one indexed lookup. The key text is shown once, at
creation; a lost key is revoked and replaced. A key sends as its user: the user's domains
bind the sender, the user's rate limit applies.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from mtaserver.clock import Clock, SystemClock
from mtaserver.errors import MtaError
from mtaserver.storage.sqlite.db import Database

PREFIX = "SG."
TOUCH_EVERY = 60.0  # seconds between last_used_at updates of one key
MAX_KEY_CHARS = 200
# SendGrid's scope names for the endpoints mtaserver serves.
SCOPES = (
    "mail.send",
    "mail.batch.create",
    "mail.batch.read",
    "user.scheduled_sends.create",
    "user.scheduled_sends.read",
    "user.scheduled_sends.update",
    "user.scheduled_sends.delete",
    *("contacts.read", "contacts.write"),
)
# Shorthands accepted by `apikey create --scopes`.
SCOPE_GROUPS = {
    "mail.batch": ("mail.batch.create", "mail.batch.read"),
    "user.scheduled_sends": tuple(s for s in SCOPES if s.startswith("user.scheduled_sends.")),
    "all": SCOPES,
}


class ApiKeyError(MtaError, ValueError):
    """An operator mistake about API keys (unknown scope, unknown key)."""


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    key_id: str
    user: str
    name: str
    scopes: frozenset[str]
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def parse_scopes(values: Iterable[str]) -> frozenset[str]:
    """``mail.send,mail.batch`` → the set of scope names; an unknown name is an error."""
    out: set[str] = set()
    for raw in values:
        for word in raw.replace(",", " ").split():
            if word in SCOPE_GROUPS:
                out.update(SCOPE_GROUPS[word])
            elif word in SCOPES:
                out.add(word)
            else:
                known = ", ".join([*SCOPES, *SCOPE_GROUPS])
                raise ApiKeyError(f"--scopes: unknown scope {word!r}; known: {known}")
    if not out:
        raise ApiKeyError("--scopes: give at least one scope, e.g. mail.send")
    return frozenset(out)


_COLUMNS = "id, user, name, scopes, created_at, last_used_at, revoked_at"


def _info(row: tuple[object, ...]) -> ApiKeyInfo:
    key_id, user, name, scopes, created, used, revoked = row
    return ApiKeyInfo(
        str(key_id), str(user), str(name), frozenset(str(scopes).split()),
        float(created),  # type: ignore[arg-type]
        None if used is None else float(used),  # type: ignore[arg-type]
        None if revoked is None else float(revoked),  # type: ignore[arg-type]
    )  # fmt: skip


def new_key_id() -> str:
    """A random key id that never starts with ``-``: the operator passes it to
    ``mtaserver apikey revoke ID``, where a leading dash reads as an option."""
    while True:
        key_id = secrets.token_urlsafe(16)
        if not key_id.startswith("-"):
            return key_id


def new_key(scopes: frozenset[str]) -> tuple[str, str]:
    """A new key's id and text for ``scopes`` (both backends); refuses unknown or no scopes."""
    unknown = scopes - set(SCOPES)
    if unknown or not scopes:
        raise ApiKeyError(f"unknown scopes {sorted(unknown)}" if unknown else "no scopes")
    key_id = new_key_id()
    return key_id, f"{PREFIX}{key_id}.{secrets.token_urlsafe(32)}"


class ApiKeyStore:
    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self._clock: Clock = clock or SystemClock()

    async def create(
        self, user: str, scopes: frozenset[str], name: str = "", now: float | None = None
    ) -> tuple[ApiKeyInfo, str]:
        """A new key for ``user``; returns its info and the key text (shown once)."""
        key_id, key = new_key(scopes)
        t = self._clock.now() if now is None else now
        info = ApiKeyInfo(key_id, user, name, scopes, t, None, None)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO api_keys(id, user, name, scopes, key_hash, created_at) "
                "VALUES (?,?,?,?,?,?)",
                (key_id, user, name, " ".join(sorted(scopes)), key_hash(key), t),
            )

        await self.db.write(op)
        return info, key

    async def list(self, user: str | None = None) -> list[ApiKeyInfo]:
        def fn(conn: sqlite3.Connection) -> list[ApiKeyInfo]:
            if user is None:
                rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")
            else:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM api_keys WHERE user=? ORDER BY created_at, id",
                    (user,),
                )
            return [_info(r) for r in rows]

        return await self.db.read(fn)

    async def revoke(self, key_id: str, now: float | None = None) -> ApiKeyInfo:
        """Revoke the key with this id; it stops working at the next request."""
        t = self._clock.now() if now is None else now
        wanted = key_id.strip()

        def op(conn: sqlite3.Connection) -> ApiKeyInfo | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id=?", (wanted,)).fetchone()
            if row is None:
                return None
            info = _info(row)
            if info.revoked_at is not None:
                return info
            conn.execute("UPDATE api_keys SET revoked_at=? WHERE id=?", (t, wanted))
            return ApiKeyInfo(info.key_id, info.user, info.name, info.scopes, info.created_at,
                              info.last_used_at, t)  # fmt: skip

        found = await self.db.write(op)
        if found is None:
            raise ApiKeyError(f"no API key with id {wanted!r} (see `mtaserver apikey list`)")
        return found

    async def verify(self, key: str, now: float | None = None) -> ApiKeyInfo | None:
        """The live key with this text, or None. Touches ``last_used_at`` now and then."""
        if not key.startswith(PREFIX) or len(key) > MAX_KEY_CHARS:
            return None
        digest = key_hash(key)

        def fn(conn: sqlite3.Connection) -> ApiKeyInfo | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash=? AND revoked_at IS NULL",
                (digest,),
            ).fetchone()
            return None if row is None else _info(row)

        info = await self.db.read(fn)
        if info is None:
            return None
        t = self._clock.now() if now is None else now
        if info.last_used_at is None or t - info.last_used_at >= TOUCH_EVERY:
            await self.db.write(
                lambda conn: conn.execute(
                    "UPDATE api_keys SET last_used_at=? WHERE id=?", (t, info.key_id)
                )
            )
        return info
