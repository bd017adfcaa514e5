"""Stored templates on PostgreSQL: the only writer of ``templates`` and ``template_versions``.

The same rules as :mod:`mtaserver.storage.sqlite.templates` (names, ids, parts compiled at
put time — its checks and values are reused). Two nodes adding a version to one template
at once: the template row is locked (``FOR UPDATE``) while the next version number is
taken, so versions stay 1, 2, 3 … with no gap and no collision.
"""

from __future__ import annotations

import builtins
import secrets
from typing import Any

from mtaserver.clock import Clock, SystemClock
from mtaserver.sendapi import StoredTemplate
from mtaserver.storage.postgres.db import Connection, PgDatabase
from mtaserver.storage.sqlite.templates import (
    _ID,
    TemplateInfo,
    TemplateStoreError,
    TemplateVersion,
    check_name,
    check_parts,
)

_INFO = "id, name, active_version, created_at, updated_at"
_VERSION = "version, subject, html, text, created_at"


async def _find(conn: Connection, ref: str, *, lock: bool = False) -> Any:
    col = "id" if _ID.fullmatch(ref) else "name"
    tail = " FOR UPDATE" if lock else ""
    return await conn.fetchrow(f"SELECT {_INFO} FROM templates WHERE {col}=$1{tail}", ref)


async def _info(conn: Connection, row: Any) -> TemplateInfo:
    versions = await conn.fetch(
        "SELECT version FROM template_versions WHERE template_id=$1 ORDER BY version", row[0]
    )
    return TemplateInfo(str(row[0]), str(row[1]), int(row[2]), float(row[3]), float(row[4]),
                        tuple(int(v[0]) for v in versions))  # fmt: skip


def _version(v: Any) -> TemplateVersion:
    return TemplateVersion(int(v[0]), v[1], v[2], v[3], float(v[4]))


class PgTemplateStore:
    """The cluster's templates; satisfies the send API's template source."""

    def __init__(self, db: PgDatabase, clock: Clock | None = None) -> None:
        self.db = db
        self._clock: Clock = clock or SystemClock()

    async def put(
        self,
        name: str,
        subject: str | None,
        html: str | None,
        text: str | None,
        create: bool = True,
        only_new: bool = False,
    ) -> TemplateInfo:
        """Add a version to ``name`` (an id or name) and make it active. A new name is
        created when ``create``; with ``only_new`` an existing name is refused."""
        check_parts(subject, html, text)
        is_id = bool(_ID.fullmatch(name))
        if not is_id:
            check_name(name)
        t = self._clock.now()
        async with self.db.transaction() as conn:
            row = await _find(conn, name, lock=True)
            if row is None and not is_id and create:
                # Another node may create the same name meanwhile: the loser finds its row.
                await conn.execute(
                    "INSERT INTO templates(id, name, active_version, created_at, updated_at) "
                    "VALUES ($1,$2,0,$3,$3) ON CONFLICT (name) DO NOTHING",
                    "d-" + secrets.token_hex(16), name, t,
                )  # fmt: skip
                row = await _find(conn, name, lock=True)
                created = row is not None and int(row[2]) == 0
            else:
                created = False
            if row is not None and only_new and not created:
                raise TemplateStoreError(
                    f"template {name!r} exists (add a version to {row[0]} instead)"
                )
            if row is None:
                raise TemplateStoreError(f"no template {name!r} (see `mtaserver template list`)")
            tid = str(row[0])
            last = await conn.fetchval(
                "SELECT coalesce(max(version), 0) FROM template_versions WHERE template_id=$1",
                tid,
            )
            version = int(last) + 1
            await conn.execute(
                f"INSERT INTO template_versions(template_id, {_VERSION}) "
                "VALUES ($1,$2,$3,$4,$5,$6)",
                tid, version, subject, html, text, t,
            )  # fmt: skip
            await conn.execute(
                "UPDATE templates SET active_version=$1, updated_at=$2 WHERE id=$3", version, t, tid
            )
            return await _info(conn, await _find(conn, tid))

    async def info(self, ref: str) -> TemplateInfo | None:
        async with self.db.connection() as conn:
            row = await _find(conn, ref)
            return None if row is None else await _info(conn, row)

    async def list(self) -> builtins.list[TemplateInfo]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(f"SELECT {_INFO} FROM templates ORDER BY name")
            return [await _info(conn, r) for r in rows]

    async def version(self, ref: str, version: int | None = None) -> TemplateVersion | None:
        """One version of a template (the active one by default), or None."""
        async with self.db.connection() as conn:
            row = await _find(conn, ref)
            if row is None:
                return None
            want = int(row[2]) if version is None else version
            v = await conn.fetchrow(
                f"SELECT {_VERSION} FROM template_versions WHERE template_id=$1 AND version=$2",
                row[0], want,
            )  # fmt: skip
        return None if v is None else _version(v)

    async def versions(self, ref: str) -> tuple[TemplateInfo, tuple[TemplateVersion, ...]] | None:
        """A template and all its versions (oldest first), or None."""
        async with self.db.connection() as conn:
            row = await _find(conn, ref)
            if row is None:
                return None
            rows = await conn.fetch(
                f"SELECT {_VERSION} FROM template_versions WHERE template_id=$1 ORDER BY version",
                row[0],
            )
            return await _info(conn, row), tuple(_version(v) for v in rows)

    async def get(self, template_id: str) -> StoredTemplate | None:
        """The active version of a template by id or name, or None (the API's source)."""
        v = await self.version(template_id)
        return None if v is None else v.stored()

    async def activate(self, ref: str, version: int) -> TemplateInfo:
        t = self._clock.now()
        async with self.db.transaction() as conn:
            row = await _find(conn, ref, lock=True)
            if row is None:
                raise TemplateStoreError(f"no template {ref!r} (see `mtaserver template list`)")
            info = await _info(conn, row)
            if version not in info.versions:
                have = builtins.list(info.versions)
                raise TemplateStoreError(f"template {info.name}: no version {version} (has {have})")
            await conn.execute(
                "UPDATE templates SET active_version=$1, updated_at=$2 WHERE id=$3",
                version, t, info.template_id,
            )  # fmt: skip
            return await _info(conn, await _find(conn, info.template_id))

    async def delete(self, ref: str) -> TemplateInfo:
        """Delete a template and all its versions; sends naming it are refused afterwards."""
        async with self.db.transaction() as conn:
            row = await _find(conn, ref, lock=True)
            if row is None:
                raise TemplateStoreError(f"no template {ref!r} (see `mtaserver template list`)")
            info = await _info(conn, row)
            await conn.execute(
                "DELETE FROM template_versions WHERE template_id=$1", info.template_id
            )
            await conn.execute("DELETE FROM templates WHERE id=$1", info.template_id)
        return info
