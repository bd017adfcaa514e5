"""Submission users on PostgreSQL: the only writer of ``users`` and ``user_domains``.

Shared by every node, so a user added on one node can log in on any (``mtaserver user``
with ``backend = "postgresql"`` writes here).
"""

from __future__ import annotations

import asyncpg

from mtaserver.auth import User, UserError, UserRecord, normalize_domain, normalize_name
from mtaserver.clock import Clock, SystemClock
from mtaserver.storage.postgres.db import PgDatabase


class PgUserStore:
    def __init__(self, db: PgDatabase, clock: Clock | None = None) -> None:
        self.db = db
        self._clock: Clock = clock or SystemClock()

    async def add(self, name: str, password_hash: str, domains: list[str]) -> None:
        name = normalize_name(name)
        doms = sorted({normalize_domain(d) for d in domains})
        if not doms:
            raise UserError("a user needs at least one --domain")
        now = self._clock.now()
        async with self.db.transaction() as conn:
            try:
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO users(name, password_hash, created_at, updated_at) "
                        "VALUES ($1,$2,$3,$3)",
                        name, password_hash, now,
                    )  # fmt: skip
            except asyncpg.UniqueViolationError:
                raise UserError(f"user {name!r} already exists") from None
            await conn.executemany(
                'INSERT INTO user_domains("user", domain) VALUES ($1,$2)', [(name, d) for d in doms]
            )

    async def set_password(self, name: str, password_hash: str) -> None:
        name = normalize_name(name)
        async with self.db.transaction() as conn:
            status = await conn.execute(
                "UPDATE users SET password_hash=$1, updated_at=$2 WHERE name=$3",
                password_hash, self._clock.now(), name,
            )  # fmt: skip
        if status.endswith(" 0"):
            raise UserError(f"no such user {name!r}")

    async def remove(self, name: str) -> None:
        name = normalize_name(name)
        async with self.db.transaction() as conn:
            await conn.execute('DELETE FROM user_domains WHERE "user"=$1', name)
            status = await conn.execute("DELETE FROM users WHERE name=$1", name)
        if status.endswith(" 0"):
            raise UserError(f"no such user {name!r}")

    async def list(self) -> list[UserRecord]:
        async with self.db.connection() as conn:
            doms: dict[str, list[str]] = {}
            for r in await conn.fetch('SELECT "user", domain FROM user_domains ORDER BY domain'):
                doms.setdefault(r[0], []).append(r[1])
            users = await conn.fetch("SELECT name, created_at, updated_at FROM users ORDER BY name")
        return [UserRecord(r[0], tuple(doms.get(r[0], ())), r[1], r[2]) for r in users]

    async def lookup(self, name: str) -> tuple[User, str] | None:
        """The user and its password hash, or None."""
        async with self.db.connection() as conn:
            row = await conn.fetchval("SELECT password_hash FROM users WHERE name=$1", name)
            if row is None:
                return None
            doms = await conn.fetch('SELECT domain FROM user_domains WHERE "user"=$1', name)
        return User(name, frozenset(r[0] for r in doms)), str(row)
