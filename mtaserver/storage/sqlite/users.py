"""Submission users: the only writer of ``users`` and ``user_domains``.

Names and domains are normalized by :mod:`mtaserver.auth` rules before they are stored; the
password hash arrives already computed (scrypt, off the event loop).
"""

from __future__ import annotations

import sqlite3

from mtaserver.auth import User, UserError, UserRecord, normalize_domain, normalize_name
from mtaserver.clock import Clock, SystemClock
from mtaserver.storage.sqlite.db import Database


class UserStore:
    """The ``users`` and ``user_domains`` tables."""

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self._clock: Clock = clock or SystemClock()

    async def add(self, name: str, password_hash: str, domains: list[str]) -> None:
        name = normalize_name(name)
        doms = sorted({normalize_domain(d) for d in domains})
        if not doms:
            raise UserError("a user needs at least one --domain")
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO users(name, password_hash, created_at, updated_at) "
                    "VALUES (?,?,?,?)",
                    (name, password_hash, now, now),
                )
            except sqlite3.IntegrityError:
                raise UserError(f"user {name!r} already exists") from None
            conn.executemany(
                "INSERT INTO user_domains(user, domain) VALUES (?,?)", [(name, d) for d in doms]
            )

        await self.db.write(op)

    async def set_password(self, name: str, password_hash: str) -> None:
        name = normalize_name(name)

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE users SET password_hash=?, updated_at=? WHERE name=?",
                (password_hash, self._clock.now(), name),
            )
            return cur.rowcount

        if not await self.db.write(op):
            raise UserError(f"no such user {name!r}")

    async def remove(self, name: str) -> None:
        name = normalize_name(name)

        def op(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM user_domains WHERE user=?", (name,))
            return conn.execute("DELETE FROM users WHERE name=?", (name,)).rowcount

        if not await self.db.write(op):
            raise UserError(f"no such user {name!r}")

    async def list(self) -> list[UserRecord]:
        def fn(conn: sqlite3.Connection) -> list[UserRecord]:
            doms: dict[str, list[str]] = {}
            for user, domain in conn.execute(
                "SELECT user, domain FROM user_domains ORDER BY domain"
            ):
                doms.setdefault(user, []).append(domain)
            return [
                UserRecord(name, tuple(doms.get(name, ())), created, updated)
                for name, created, updated in conn.execute(
                    "SELECT name, created_at, updated_at FROM users ORDER BY name"
                )
            ]

        return await self.db.read(fn)

    async def lookup(self, name: str) -> tuple[User, str] | None:
        """The user and its password hash, or None."""

        def fn(conn: sqlite3.Connection) -> tuple[User, str] | None:
            row = conn.execute("SELECT password_hash FROM users WHERE name=?", (name,)).fetchone()
            if row is None:
                return None
            doms = frozenset(
                d for (d,) in conn.execute("SELECT domain FROM user_domains WHERE user=?", (name,))
            )
            return User(name, doms), row[0]

        return await self.db.read(fn)
