"""Saved segments and the filter compiler: the only writer of ``segments``.

A :data:`~mtaserver.segments.Filter` becomes one SQL expression over ``contacts c`` with
bound parameters only: attribute names reach SQL as JSON paths from
:func:`~mtaserver.contacts.attr_path` bound to ``json_extract``, values as parameters,
operators and column names from closed tables here. Every statement is constrained by
``c.owner = ?``, list names are looked up within that owner (another tenant's list name
finds nothing), and engagement reads only the events of messages that owner sent.

Engagement (``opened``/``clicked``/``bounced``) is computed from the event log joined to
the queue's ``messages`` by queue id, ``messages.user`` being the owner, and the event's
recipient address (lower-cased) to the contact's: each such node is one uncorrelated
subquery, materialized once per statement. It sees what retention keeps
(``[retention] events`` and ``records``, 60 days by default).

The interface the campaigns owner uses:

- ``await store.page(owner, flt, after, limit=1000) -> list[tuple[int, str]]``:
  (contact_id, address) of matching contacts ordered by address, after ``after`` (None:
  from the start). Keyset paging on the UNIQUE (owner, address) index: the next page
  starts after the last address of this one, each page is one short read, and a million
  contacts are never held at once. A contact inserted or changed between pages is seen
  if its address sorts after the cursor; none is returned twice.
- ``await store.resolve(owner, name_or_filter_json) -> Filter``: a saved segment's name,
  or a filter's JSON text (it starts with ``{``); SegmentNotFound / SegmentError.
- ``select_sql(owner, flt, now=...) -> (sql, params)``: the same audience as one
  ``SELECT contact_id, address ... ORDER BY address`` to run inside the caller's own
  transaction (a campaign's snapshot: ``INSERT INTO its_table SELECT ...``).
"""

from __future__ import annotations

import sqlite3
from typing import Final

from mtaserver.clock import Clock, SystemClock
from mtaserver.contacts import ContactConflict, attr_path
from mtaserver.segments import (
    MAX_SEGMENTS,
    PAGE,
    And,
    At,
    AttrCmp,
    Bounced,
    Consent,
    DaysAgo,
    Engaged,
    FieldCmp,
    Filter,
    InList,
    Not,
    Or,
    Segment,
    SegmentError,
    canonical,
    check_segment_name,
    julian_day,
    list_names,
    parse,
    resolve_time,
    resolve_with,
)
from mtaserver.storage.sqlite.db import Database

__all__ = ["PAGE", "Segment", "SegmentStore", "check_segment_name", "select_sql", "where_sql"]

_SQL_OP: Final = {"eq": "=", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_COLUMN: Final = {"email": "c.address", "created_at": "c.created_at",
                  "updated_at": "c.updated_at", "consent_at": "c.consent_at"}  # fmt: skip
_TYPE = "json_type(c.attributes, ?)"
_VAL = "json_extract(c.attributes, ?)"
# The attribute as text (strings, and numbers as their text), as a number (JSON numbers, and
# strings that are JSON numbers: a CSV import stores "30"), as a date (ISO text).
_TEXT = f"(CASE WHEN {_TYPE} IN ('text','integer','real') THEN CAST({_VAL} AS TEXT) END)"
_NUM = (f"(CASE {_TYPE} WHEN 'integer' THEN {_VAL} WHEN 'real' THEN {_VAL} "
        f"WHEN 'text' THEN CASE WHEN json_valid({_VAL}) AND json_type({_VAL}) IN "
        f"('integer','real') THEN json_extract({_VAL}, '$') END END)")  # fmt: skip
_DATE = f"julianday(CASE WHEN {_TYPE} = 'text' THEN {_VAL} END)"
_N_TEXT, _N_NUM, _N_DATE = 2, 6, 2  # how many times each binds the path
# Engagement: events of the owner's messages. ``+c.address``: the page walks the
# (owner, address) index in order instead of driving from the subquery's set.
_EVENTS = ("+c.address IN (SELECT lower(e.recipient) FROM events e JOIN messages m "
           "ON m.id = e.queue_id WHERE m.user = ? AND e.type = ? "
           "AND e.recipient IS NOT NULL")  # fmt: skip


def _marks(n: int) -> str:
    return ",".join("?" * n)


class _Compiler:
    """One filter → one SQL boolean expression over ``contacts c`` and its parameters."""

    def __init__(self, owner: str, now: float) -> None:
        self.owner = owner
        self.now = now
        self.params: list[object] = []

    def expr(self, n: Filter) -> str:
        if isinstance(n, And):
            return "(" + " AND ".join(self.expr(x) for x in n.items) + ")" if n.items else "1"
        if isinstance(n, Or):
            return "(" + " OR ".join(self.expr(x) for x in n.items) + ")"
        if isinstance(n, Not):  # NULL (a missing attribute) is false, so its negation is true
            return f"(NOT coalesce({self.expr(n.item)}, 0))"
        if isinstance(n, AttrCmp):
            return self._attr(n)
        if isinstance(n, FieldCmp):
            return self._field(n)
        if isinstance(n, Consent):
            self.params += n.statuses
            return f"c.consent_status IN ({_marks(len(n.statuses))})"
        if isinstance(n, InList):
            self.params += [self.owner, n.name, *n.statuses]
            status = f" AND m.status IN ({_marks(len(n.statuses))})" if n.statuses else ""
            return ("EXISTS (SELECT 1 FROM list_members m WHERE m.contact_id = c.id AND "
                    "m.list_id = (SELECT l.id FROM lists l WHERE l.owner = ? AND l.name = ?)"
                    f"{status})")  # fmt: skip
        if isinstance(n, Engaged):
            self.params += [self.owner, n.event]
            sql = _EVENTS + self._since(n.days)
            if n.human:
                sql += " AND NOT coalesce(e.data ->> '$.machine', 0)"
            return sql + ")"
        assert isinstance(n, Bounced)
        self.params += [self.owner, "bounced"]
        sql = _EVENTS + self._since(n.days)
        if n.kind != "any":
            sql += " AND e.data ->> '$.kind' = ?"
            self.params.append(n.kind)
        return sql + ")"

    def _since(self, days: int | None) -> str:
        if days is None:
            return ""
        self.params.append(self.now - days * 86400.0)
        return " AND e.at >= ?"

    def _attr(self, n: AttrCmp) -> str:
        path = attr_path(n.name)
        v = n.value
        p = self.params
        if n.op == "exists":
            p.append(path)
            return f"{_TYPE} IS {'NOT ' if v else ''}NULL"
        if n.op == "in":
            assert isinstance(v, tuple)
            texts = [x for x in v if isinstance(x, str)]
            nums = [x for x in v if not isinstance(x, str)]
            parts = []
            if texts:
                p += [*([path] * _N_TEXT), *texts]
                parts.append(f"{_TEXT} IN ({_marks(len(texts))})")
            if nums:
                p += [*([path] * _N_NUM), *nums]
                parts.append(f"{_NUM} IN ({_marks(len(nums))})")
            return "(" + " OR ".join(parts) + ")"
        if n.op == "contains":  # an element of an array, else a substring
            p += [path, path, v, path, path, v]
            return (f"(CASE WHEN {_TYPE} = 'array' THEN EXISTS (SELECT 1 FROM "
                    "json_each(c.attributes, ?) j WHERE j.type IN ('text','integer','real') "
                    f"AND CAST(j.value AS TEXT) = ?) ELSE instr({_TEXT}, ?) > 0 END)")  # fmt: skip
        if n.op in ("starts_with", "ends_with"):
            p += [path] * _N_TEXT
            return self._affix(_TEXT, n.op, v)
        if isinstance(v, DaysAgo | At):
            p += [path] * _N_DATE + [julian_day(v, self.now)]
            return f"{_DATE} {_SQL_OP[n.op]} ?"
        if isinstance(v, bool):
            p.append(path)
            want, other = ("true", "false") if v else ("false", "true")
            return f"{_TYPE} = '{want if n.op == 'eq' else other}'"
        if isinstance(v, str):
            p += [path] * _N_TEXT + [v]
            return f"{_TEXT} {_SQL_OP[n.op]} ?"
        p += [path] * _N_NUM + [v]
        return f"{_NUM} {_SQL_OP[n.op]} ?"

    def _affix(self, sql: str, op: str, v: object) -> str:
        assert isinstance(v, str)
        self.params += [len(v), v]
        if op == "starts_with":
            return f"(substr({sql}, 1, ?) = ?)"
        return f"(substr({sql}, -?) = ?)"

    def _field(self, n: FieldCmp) -> str:
        col = _COLUMN[n.field]
        v = n.value
        if isinstance(v, DaysAgo | At):
            self.params.append(resolve_time(v, self.now))
            return f"{col} {_SQL_OP[n.op]} ?"
        if n.op == "in":
            assert isinstance(v, tuple)
            self.params += v
            return f"{col} IN ({_marks(len(v))})"
        if n.op == "contains":
            self.params.append(v)
            return f"instr({col}, ?) > 0"
        if n.op in ("starts_with", "ends_with"):
            return self._affix(col, n.op, v)
        self.params.append(v)
        return f"{col} {_SQL_OP[n.op]} ?"


def where_sql(owner: str, flt: Filter, now: float) -> tuple[str, list[object]]:
    """``c.owner = ? AND (…)`` for ``flt`` and its parameters (``contacts c`` in FROM)."""
    comp = _Compiler(owner, now)
    comp.params.append(owner)
    body = comp.expr(flt)
    return f"c.owner = ? AND {body}", comp.params


def select_sql(
    owner: str, flt: Filter, *, now: float | None = None
) -> tuple[str, tuple[object, ...]]:
    """``SELECT contact_id, address`` of ``owner``'s contacts matching ``flt``, by address:
    for the campaigns owner to run inside its own transaction. ``now`` anchors date
    arithmetic (default: the system clock)."""
    at = SystemClock().now() if now is None else now
    where, params = where_sql(owner, flt, at)
    sql = f"SELECT c.id AS contact_id, c.address FROM contacts c WHERE {where} ORDER BY c.address"
    return sql, tuple(params)


_COLS = "id, owner, name, filter, created_at, updated_at"


def _missing_lists(conn: sqlite3.Connection, owner: str, flt: Filter) -> None:
    for node in list_names(flt):
        row = conn.execute(
            "SELECT 1 FROM lists WHERE owner = ? AND name = ?", (owner, node.name)
        ).fetchone()
        if row is None:
            raise SegmentError(f"{node.where}: no list {node.name!r}", node.where)


class SegmentStore:
    """Saved segments of each owner, and counting and paging any filter over contacts."""

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self._clock: Clock = clock or SystemClock()

    # -- saved segments ----------------------------------------------------------------------
    async def save(
        self, owner: str, name: str, document: object, *, create: bool = False
    ) -> tuple[Segment, bool]:
        """Create or replace a segment (``create``: only create; ContactConflict if it
        exists). The filter is checked first, and the lists it names must be ``owner``'s.
        The stored segment and whether it was created."""
        check_segment_name(name)
        flt = parse(document)
        text = canonical(document)
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> tuple[Segment, bool]:
            _missing_lists(conn, owner, flt)
            row = conn.execute(
                f"SELECT {_COLS} FROM segments WHERE owner = ? AND name = ?", (owner, name)
            ).fetchone()
            if row is not None:
                if create:
                    raise ContactConflict(f"name: a segment {name!r} exists already", "name")
                conn.execute(
                    "UPDATE segments SET filter = ?, updated_at = ? WHERE id = ?",
                    (text, now, row[0]),
                )
                return Segment(int(row[0]), owner, name, text, float(row[4]), now), False
            n = conn.execute("SELECT count(*) FROM segments WHERE owner = ?", (owner,))
            if int(n.fetchone()[0]) >= MAX_SEGMENTS:
                raise SegmentError(f"name: at most {MAX_SEGMENTS} segments per user", "name")
            cur = conn.execute(
                "INSERT INTO segments (owner, name, filter, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (owner, name, text, now, now),
            )
            return Segment(int(cur.lastrowid or 0), owner, name, text, now, now), True

        return await self.db.write(op)

    async def get(self, owner: str, name: str) -> Segment | None:
        def fn(conn: sqlite3.Connection) -> Segment | None:
            row = conn.execute(
                f"SELECT {_COLS} FROM segments WHERE owner = ? AND name = ?", (owner, name)
            ).fetchone()
            return None if row is None else Segment.from_row(row)

        return await self.db.read(fn)

    async def list_all(self, owner: str) -> list[Segment]:
        def fn(conn: sqlite3.Connection) -> list[Segment]:
            return [
                Segment.from_row(r)
                for r in conn.execute(
                    f"SELECT {_COLS} FROM segments WHERE owner = ? ORDER BY name", (owner,)
                )
            ]

        return await self.db.read(fn)

    async def delete(self, owner: str, name: str) -> bool:
        n = await self.db.write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM segments WHERE owner = ? AND name = ?", (owner, name)
                ).rowcount
            )
        )
        return bool(n)

    async def resolve(self, owner: str, name_or_filter_json: str) -> Filter:
        """A saved segment by name, or a filter from its JSON text."""
        return await resolve_with(name_or_filter_json, lambda name: self.get(owner, name))

    # -- audiences ---------------------------------------------------------------------------
    async def check(self, owner: str, flt: Filter) -> None:
        """SegmentError naming the node of the first list ``owner`` does not have."""
        await self.db.read(lambda conn: _missing_lists(conn, owner, flt))

    async def count(self, owner: str, flt: Filter) -> int:
        where, params = where_sql(owner, flt, self._clock.now())
        sql = f"SELECT count(*) FROM contacts c WHERE {where}"
        return int(await self.db.read(lambda conn: conn.execute(sql, params).fetchone()[0]))

    async def page(
        self, owner: str, flt: Filter, after: str | None, limit: int = PAGE
    ) -> list[tuple[int, str]]:
        """(contact_id, address) of the next ``limit`` matches after address ``after``."""
        where, params = where_sql(owner, flt, self._clock.now())
        sql = (f"SELECT c.id, c.address FROM contacts c WHERE {where} AND c.address > ? "
               "ORDER BY c.address LIMIT ?")  # fmt: skip
        args = (*params, after or "", max(1, min(int(limit), 10 * PAGE)))

        def fn(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            return [(int(i), str(a)) for i, a in conn.execute(sql, args)]

        return await self.db.read(fn)
