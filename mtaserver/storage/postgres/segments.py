"""Saved segments and the filter compiler on PostgreSQL: the only writer of ``segments``.

The same language, limits and answers as :mod:`mtaserver.storage.sqlite.segments`: a
:data:`~mtaserver.segments.Filter` becomes one boolean expression over ``contacts c`` with
bound parameters only. Attribute names reach SQL as ``text[]`` paths bound to ``#>``
(from the checked dotted name), values as parameters, operators and columns from closed
tables here. SQLite's typing rules are kept: a string attribute that reads as a JSON
number (a CSV import stores ``"30"``) compares as that number, dates are SQLite's
``julianday`` (``mta_julianday``, migration 0130), strings compare byte-wise (``COLLATE
"C"``) and keyset pages walk the (owner, address COLLATE "C") index.

The interface the campaigns owner uses (the SQLite module's, plus where numbering starts):

- ``await store.page(owner, flt, after, limit=1000) -> list[tuple[int, str]]``
- ``await store.resolve(owner, name_or_filter_json) -> Filter``
- ``select_sql(owner, flt, now=..., start=1) -> (sql, params)``: one ``SELECT contact_id,
  address ... ORDER BY address`` with placeholders ``$start`` … ``$start+len(params)-1``,
  for ``INSERT INTO its_table SELECT ...`` in the caller's own transaction: bind the
  caller's own values after them (``$%d`` % (start + len(params))) or pass ``start`` past
  its own. ``where_sql`` is the bare ``WHERE`` body over ``contacts c``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from mtaserver.clock import Clock, SystemClock
from mtaserver.contacts import ContactConflict, attr_path
from mtaserver.segments import (
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
    SegmentError,
    SegmentNotFound,
    canonical,
    list_names,
    parse,
    parse_text,
    resolve_time,
)
from mtaserver.storage.postgres.db import Connection, PgDatabase
from mtaserver.storage.sqlite.segments import (
    _JD_EPOCH,
    MAX_SEGMENTS,
    PAGE,
    Segment,
    _segment,
    check_segment_name,
)

__all__ = ["PgSegmentStore", "Segment", "check_segment_name", "select_sql", "where_sql"]

_SQL_OP: Final = {"eq": "=", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_COLUMN: Final = {"email": 'c.address COLLATE "C"', "created_at": "c.created_at",
                  "updated_at": "c.updated_at", "consent_at": "c.consent_at"}  # fmt: skip
# A string that is a JSON number (what SQLite's json_valid + json_type accept).
_JSON_NUMBER = r"^[ \t\n\r]*-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?[ \t\n\r]*$"
_EVENTS = ('c.address IN (SELECT lower(e.recipient) FROM events e JOIN messages m '
           'ON m.id = e.queue_id WHERE m."user" = {} AND e.type = {} '
           "AND e.recipient IS NOT NULL")  # fmt: skip
_MACHINE = ("(e.data::jsonb -> 'machine' = 'true'::jsonb OR (jsonb_typeof(e.data::jsonb -> "
            "'machine') = 'number' AND (e.data::jsonb ->> 'machine')::numeric <> 0))")  # fmt: skip


class _Compiler:
    """One filter → one SQL boolean expression over ``contacts c`` and its parameters."""

    def __init__(self, owner: str, now: float, start: int) -> None:
        self.owner = owner
        self.now = now
        self.start = start
        self.params: list[object] = []

    def bind(self, value: object, cast: str = "") -> str:
        self.params.append(value)
        mark = f"${self.start + len(self.params) - 1}"
        return f"{mark}::{cast}" if cast else mark

    def expr(self, n: Filter) -> str:
        if isinstance(n, And):
            return "(" + " AND ".join(self.expr(x) for x in n.items) + ")" if n.items else "TRUE"
        if isinstance(n, Or):
            return "(" + " OR ".join(self.expr(x) for x in n.items) + ")"
        if isinstance(n, Not):  # NULL (a missing attribute) is false, so its negation is true
            return f"(NOT coalesce({self.expr(n.item)}, FALSE))"
        if isinstance(n, AttrCmp):
            return self._attr(n)
        if isinstance(n, FieldCmp):
            return self._field(n)
        if isinstance(n, Consent):
            return f"c.consent_status = ANY({self.bind(list(n.statuses), 'text[]')})"
        if isinstance(n, InList):
            owner, name = self.bind(self.owner, "text"), self.bind(n.name, "text")
            status = (f" AND m.status = ANY({self.bind(list(n.statuses), 'text[]')})"
                      if n.statuses else "")  # fmt: skip
            return ("EXISTS (SELECT 1 FROM list_members m WHERE m.contact_id = c.id AND "
                    f"m.list_id = (SELECT l.id FROM lists l WHERE l.owner = {owner} AND "
                    f"l.name = {name}){status})")  # fmt: skip
        if isinstance(n, Engaged):
            sql = _EVENTS.format(self.bind(self.owner, "text"), self.bind(n.event, "text"))
            sql += self._since(n.days)
            if n.human:
                sql += f" AND NOT coalesce({_MACHINE}, FALSE)"
            return sql + ")"
        assert isinstance(n, Bounced)
        sql = _EVENTS.format(self.bind(self.owner, "text"), self.bind("bounced", "text"))
        sql += self._since(n.days)
        if n.kind != "any":
            sql += f" AND e.data::jsonb ->> 'kind' = {self.bind(n.kind, 'text')}"
        return sql + ")"

    def _since(self, days: int | None) -> str:
        if days is None:
            return ""
        return f" AND e.at >= {self.bind(self.now - days * 86400.0, 'float8')}"

    def _attr(self, n: AttrCmp) -> str:
        attr_path(n.name)  # the one check of the name (the path below is its segments)
        x = f"(c.attributes #> {self.bind(n.name.split('.'), 'text[]')})"
        text = f"(CASE WHEN jsonb_typeof({x}) IN ('string', 'number') THEN {x} #>> '{{}}' END)"
        num = (f"(CASE jsonb_typeof({x}) WHEN 'number' THEN ({x} #>> '{{}}')::numeric "
               f"WHEN 'string' THEN CASE WHEN {x} #>> '{{}}' ~ '{_JSON_NUMBER}' "
               f"THEN ({x} #>> '{{}}')::numeric END END)")  # fmt: skip
        v = n.value
        if n.op == "exists":
            return f"({x} IS {'NOT ' if v else ''}NULL)"
        if n.op == "in":
            assert isinstance(v, tuple)
            texts = [t for t in v if isinstance(t, str)]
            nums = [str(t) for t in v if not isinstance(t, str)]
            parts = []
            if texts:
                parts.append(f"{text} = ANY({self.bind(texts, 'text[]')})")
            if nums:
                parts.append(f"{num} = ANY({self.bind(nums, 'numeric[]')})")
            return "(" + " OR ".join(parts) + ")"
        if n.op == "contains":  # an element of an array, else a substring
            s = self.bind(v, "text")
            return (f"(CASE WHEN jsonb_typeof({x}) = 'array' THEN EXISTS (SELECT 1 FROM "
                    f"jsonb_array_elements({x}) j(v) WHERE jsonb_typeof(j.v) IN "
                    f"('string', 'number') AND j.v #>> '{{}}' = {s}) "
                    f"ELSE strpos({text}, {s}) > 0 END)")  # fmt: skip
        if n.op in ("starts_with", "ends_with"):
            return self._affix(text, n.op, v)
        if isinstance(v, DaysAgo | At):
            day = self.bind(resolve_time(v, self.now) / 86400.0 + _JD_EPOCH, "float8")
            date = f"mta_julianday(CASE WHEN jsonb_typeof({x}) = 'string' THEN {x} #>> '{{}}' END)"
            return f"({date} {_SQL_OP[n.op]} {day})"
        if isinstance(v, bool):
            want = v if n.op == "eq" else not v
            return f"({x} = '{'true' if want else 'false'}'::jsonb)"
        if isinstance(v, str):
            return f'({text} COLLATE "C" {_SQL_OP[n.op]} {self.bind(v, "text")})'
        return f"({num} {_SQL_OP[n.op]} {self.bind(str(v), 'numeric')})"

    def _affix(self, sql: str, op: str, v: object) -> str:
        assert isinstance(v, str)
        fn = "left" if op == "starts_with" else "right"
        return f"({fn}({sql}, {self.bind(len(v), 'int4')}) = {self.bind(v, 'text')})"

    def _field(self, n: FieldCmp) -> str:
        col = _COLUMN[n.field]
        v = n.value
        if isinstance(v, DaysAgo | At):
            return f"({col} {_SQL_OP[n.op]} {self.bind(resolve_time(v, self.now), 'float8')})"
        if n.op == "in":
            assert isinstance(v, tuple)
            return f"(c.address = ANY({self.bind([str(x) for x in v], 'text[]')}))"
        if n.op == "contains":
            return f"(strpos(c.address, {self.bind(v, 'text')}) > 0)"
        if n.op in ("starts_with", "ends_with"):
            return self._affix("c.address", n.op, v)
        return f"({col} {_SQL_OP[n.op]} {self.bind(v, 'text')})"


def where_sql(owner: str, flt: Filter, now: float, start: int = 1) -> tuple[str, list[object]]:
    """``c.owner = $start AND (…)`` for ``flt`` and its parameters (``contacts c`` in FROM)."""
    comp = _Compiler(owner, now, start)
    head = comp.bind(owner, "text")
    body = comp.expr(flt)
    return f"c.owner = {head} AND {body}", comp.params


def select_sql(
    owner: str, flt: Filter, *, now: float | None = None, start: int = 1
) -> tuple[str, tuple[object, ...]]:
    """``SELECT contact_id, address`` of ``owner``'s contacts matching ``flt``, by address
    (byte order, as SQLite): for the campaigns owner to run inside its own transaction.
    ``now`` anchors date arithmetic (default: the system clock); placeholders are numbered
    from ``$start``."""
    at = SystemClock().now() if now is None else now
    where, params = where_sql(owner, flt, at, start)
    sql = (f"SELECT c.id AS contact_id, c.address FROM contacts c WHERE {where} "
           'ORDER BY c.address COLLATE "C"')  # fmt: skip
    return sql, tuple(params)


_COLS = "id, owner, name, filter, created_at, updated_at"


async def _missing_lists(conn: Connection, owner: str, flt: Filter) -> None:
    for node in list_names(flt):
        found = await conn.fetchval(
            "SELECT 1 FROM lists WHERE owner = $1 AND name = $2", owner, node.name
        )
        if found is None:
            raise SegmentError(f"{node.where}: no list {node.name!r}", node.where)


class PgSegmentStore:
    """Saved segments of each owner, and counting and paging any filter over contacts."""

    def __init__(self, db: PgDatabase, clock: Clock | None = None) -> None:
        self.db = db
        self._clock: Clock = clock or SystemClock()

    async def save(
        self, owner: str, name: str, document: object, *, create: bool = False
    ) -> tuple[Segment, bool]:
        """Create or replace a segment (``create``: only create; ContactConflict if it
        exists); the lists it names must be ``owner``'s. The segment and whether created."""
        check_segment_name(name)
        flt = parse(document)
        text = canonical(document)
        now = self._clock.now()
        async with self.db.transaction() as conn:
            await _missing_lists(conn, owner, flt)
            for _ in range(2):  # a second pass only when another node inserted it meanwhile
                row = await conn.fetchrow(
                    f"SELECT {_COLS} FROM segments WHERE owner = $1 AND name = $2 FOR UPDATE",
                    owner, name,
                )  # fmt: skip
                if row is not None:
                    if create:
                        raise ContactConflict(f"name: a segment {name!r} exists already", "name")
                    await conn.execute(
                        "UPDATE segments SET filter = $1, updated_at = $2 WHERE id = $3",
                        text, now, row[0],
                    )  # fmt: skip
                    return Segment(int(row[0]), owner, name, text, float(row[4]), now), False
                n = await conn.fetchval("SELECT count(*) FROM segments WHERE owner = $1", owner)
                if int(n) >= MAX_SEGMENTS:
                    raise SegmentError(f"name: at most {MAX_SEGMENTS} segments per user", "name")
                sid = await conn.fetchval(
                    "INSERT INTO segments (owner, name, filter, created_at, updated_at) "
                    "VALUES ($1, $2, $3, $4, $4) ON CONFLICT (owner, name) DO NOTHING "
                    "RETURNING id",
                    owner, name, text, now,
                )  # fmt: skip
                if sid is not None:
                    return Segment(int(sid), owner, name, text, now, now), True
        raise ContactConflict(f"name: a segment {name!r} changed meanwhile; retry", "name")

    async def get(self, owner: str, name: str) -> Segment | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLS} FROM segments WHERE owner = $1 AND name = $2", owner, name
            )
        return None if row is None else _segment(tuple(row))

    async def list_all(self, owner: str) -> list[Segment]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f'SELECT {_COLS} FROM segments WHERE owner = $1 ORDER BY name COLLATE "C"', owner
            )
        return [_segment(tuple(r)) for r in rows]

    async def delete(self, owner: str, name: str) -> bool:
        async with self.db.transaction() as conn:
            status = await conn.execute(
                "DELETE FROM segments WHERE owner = $1 AND name = $2", owner, name
            )
        return str(status) != "DELETE 0"

    async def resolve(self, owner: str, name_or_filter_json: str) -> Filter:
        """A saved segment by name, or a filter from its JSON text."""
        text = name_or_filter_json.strip()
        if text.startswith("{"):
            return parse_text(text)
        name = check_segment_name(text, "segment")
        seg = await self.get(owner, name)
        if seg is None:
            raise SegmentNotFound(f"segment: no segment {name!r}", "segment")
        return seg.parsed()

    async def check(self, owner: str, flt: Filter) -> None:
        """SegmentError naming the node of the first list ``owner`` does not have."""
        async with self.db.connection() as conn:
            await _missing_lists(conn, owner, flt)

    async def count(self, owner: str, flt: Filter) -> int:
        where, params = where_sql(owner, flt, self._clock.now())
        async with self.db.connection() as conn:
            return int(
                await conn.fetchval(f"SELECT count(*) FROM contacts c WHERE {where}", *params)
            )

    async def page(
        self, owner: str, flt: Filter, after: str | None, limit: int = PAGE
    ) -> list[tuple[int, str]]:
        """(contact_id, address) of the next ``limit`` matches after address ``after``."""
        where, params = where_sql(owner, flt, self._clock.now())
        k = len(params)
        sql = (f'SELECT c.id, c.address FROM contacts c WHERE {where} AND c.address COLLATE "C" '
               f'> ${k + 1}::text ORDER BY c.address COLLATE "C" LIMIT ${k + 2}::int8')  # fmt: skip
        args: Sequence[object] = (*params, after or "", max(1, min(int(limit), 10 * PAGE)))
        async with self.db.connection() as conn:
            rows = await conn.fetch(sql, *args)
        return [(int(r[0]), str(r[1])) for r in rows]
