"""Stored templates with versions, for the HTTP send API's ``template_id``.

A template has a SendGrid-shaped id (``d-<32 hex>``) and a unique operator-chosen name;
either addresses it. Each put adds a version and makes it active; older versions are kept
so a bad change is undone with one ``activate``. Every part is compiled before it is
stored, so a syntax error is refused at put time (naming the part and line) instead of
failing every send that uses the template.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from dataclasses import dataclass

from mtaserver.clock import Clock, SystemClock
from mtaserver.errors import MtaError
from mtaserver.render import TemplateError, compile_template
from mtaserver.sendapi import StoredTemplate
from mtaserver.storage.sqlite.db import Database

_ID = re.compile(r"d-[0-9a-f]{32}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
PARTS = ("subject", "html", "text")


class TemplateStoreError(MtaError, ValueError):
    """An operator or API-caller mistake about templates (bad name, syntax error, unknown)."""


@dataclass(frozen=True, slots=True)
class TemplateVersion:
    version: int
    subject: str | None
    html: str | None
    text: str | None
    created_at: float

    def stored(self) -> StoredTemplate:
        return StoredTemplate(subject=self.subject, html=self.html, text=self.text)


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    template_id: str
    name: str
    active_version: int
    created_at: float
    updated_at: float
    versions: tuple[int, ...]


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or _ID.fullmatch(name):
        raise TemplateStoreError(
            f"template name {name!r}: use 1-100 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit, and not of the form d-<32 hex> (that is an id)"
        )
    return name


def check_parts(subject: str | None, html: str | None, text: str | None) -> None:
    """Compile each part; a syntax error names the part and the line."""
    if html is None and text is None:
        raise TemplateStoreError("a template needs html or text content (or both)")
    for part, source in zip(PARTS, (subject, html, text), strict=True):
        if source is None:
            continue
        try:
            compile_template(source)
        except TemplateError as exc:
            raise TemplateStoreError(f"template {part}: {exc.message}") from None


_INFO = "id, name, active_version, created_at, updated_at"


def _find(conn: sqlite3.Connection, ref: str) -> tuple[object, ...] | None:
    col = "id" if _ID.fullmatch(ref) else "name"
    row: tuple[object, ...] | None = conn.execute(
        f"SELECT {_INFO} FROM templates WHERE {col}=?", (ref,)
    ).fetchone()
    return row


def _info(conn: sqlite3.Connection, row: tuple[object, ...]) -> TemplateInfo:
    tid, name, active, created, updated = (str(x) for x in row)
    versions = tuple(
        int(v)
        for (v,) in conn.execute(
            "SELECT version FROM template_versions WHERE template_id=? ORDER BY version", (tid,)
        )
    )
    return TemplateInfo(tid, name, int(active), float(created), float(updated), versions)


def _version(v: tuple[object, ...]) -> TemplateVersion:
    version, subject, html, text, created = v
    return TemplateVersion(
        int(str(version)),
        None if subject is None else str(subject),
        None if html is None else str(html),
        None if text is None else str(text),
        float(str(created)),
    )


class TemplateStore:
    """The ``templates`` and ``template_versions`` tables; satisfies the API's source."""

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
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

        def op(conn: sqlite3.Connection) -> TemplateInfo | str:
            row = _find(conn, name)
            if row is not None and only_new:
                return f"template {name!r} exists (add a version to {row[0]} instead)"
            if row is None:
                if is_id or not create:
                    return f"no template {name!r} (see `mtaserver template list`)"
                tid = "d-" + secrets.token_hex(16)
                conn.execute(
                    "INSERT INTO templates(id, name, active_version, created_at, updated_at) "
                    "VALUES (?,?,0,?,?)",
                    (tid, name, t, t),
                )
                version = 1
            else:
                tid = str(row[0])
                (last,) = conn.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM template_versions WHERE template_id=?",
                    (tid,),
                ).fetchone()
                version = int(last) + 1
            conn.execute(
                "INSERT INTO template_versions(template_id, version, subject, html, text, "
                "created_at) VALUES (?,?,?,?,?,?)",
                (tid, version, subject, html, text, t),
            )
            conn.execute(
                "UPDATE templates SET active_version=?, updated_at=? WHERE id=?", (version, t, tid)
            )
            found = _find(conn, tid)
            assert found is not None
            return _info(conn, found)

        info = await self.db.write(op)
        if isinstance(info, str):
            raise TemplateStoreError(info)
        return info

    async def info(self, ref: str) -> TemplateInfo | None:
        def fn(conn: sqlite3.Connection) -> TemplateInfo | None:
            row = _find(conn, ref)
            return None if row is None else _info(conn, row)

        return await self.db.read(fn)

    async def list(self) -> list[TemplateInfo]:
        def fn(conn: sqlite3.Connection) -> list[TemplateInfo]:
            rows = conn.execute(f"SELECT {_INFO} FROM templates ORDER BY name").fetchall()
            return [_info(conn, r) for r in rows]

        return await self.db.read(fn)

    async def version(self, ref: str, version: int | None = None) -> TemplateVersion | None:
        """One version of a template (the active one by default), or None."""

        def fn(conn: sqlite3.Connection) -> TemplateVersion | None:
            row = _find(conn, ref)
            if row is None:
                return None
            want = int(str(row[2])) if version is None else version
            v = conn.execute(
                "SELECT version, subject, html, text, created_at FROM template_versions "
                "WHERE template_id=? AND version=?",
                (row[0], want),
            ).fetchone()
            return None if v is None else _version(v)

        return await self.db.read(fn)

    async def versions(self, ref: str) -> tuple[TemplateInfo, tuple[TemplateVersion, ...]] | None:
        """A template and all its versions (oldest first), or None."""

        def fn(conn: sqlite3.Connection) -> tuple[TemplateInfo, tuple[TemplateVersion, ...]] | None:
            row = _find(conn, ref)
            if row is None:
                return None
            rows = conn.execute(
                "SELECT version, subject, html, text, created_at FROM template_versions "
                "WHERE template_id=? ORDER BY version",
                (row[0],),
            ).fetchall()
            return _info(conn, row), tuple(_version(v) for v in rows)

        return await self.db.read(fn)

    async def get(self, template_id: str) -> StoredTemplate | None:
        """The active version of a template by id or name, or None (the API's source)."""
        v = await self.version(template_id)
        return None if v is None else v.stored()

    async def activate(self, ref: str, version: int) -> TemplateInfo:
        t = self._clock.now()

        def op(conn: sqlite3.Connection) -> TemplateInfo | str:
            row = _find(conn, ref)
            if row is None:
                return f"no template {ref!r} (see `mtaserver template list`)"
            info = _info(conn, row)
            if version not in info.versions:
                return f"template {info.name}: no version {version} (has {list(info.versions)})"
            conn.execute(
                "UPDATE templates SET active_version=?, updated_at=? WHERE id=?",
                (version, t, info.template_id),
            )
            found = _find(conn, info.template_id)
            assert found is not None
            return _info(conn, found)

        out = await self.db.write(op)
        if isinstance(out, str):
            raise TemplateStoreError(out)
        return out

    async def delete(self, ref: str) -> TemplateInfo:
        """Delete a template and all its versions; sends naming it are refused afterwards."""

        def op(conn: sqlite3.Connection) -> TemplateInfo | None:
            row = _find(conn, ref)
            if row is None:
                return None
            info = _info(conn, row)
            conn.execute("DELETE FROM template_versions WHERE template_id=?", (info.template_id,))
            conn.execute("DELETE FROM templates WHERE id=?", (info.template_id,))
            return info

        info = await self.db.write(op)
        if info is None:
            raise TemplateStoreError(f"no template {ref!r} (see `mtaserver template list`)")
        return info
