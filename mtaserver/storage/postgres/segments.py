"""Saved segments and the filter compiler on PostgreSQL: the only writer of ``segments``.

The same language, limits and answers as :mod:`mtaserver.storage.sqlite.segments`: a
:data:`~mtaserver.segments.Filter` becomes one boolean expression over ``contacts c`` with
bound parameters only. Attribute names reach SQL as ``text[]`` paths bound to ``#>``
(from the checked dotted name), values as parameters, operators and columns from closed
tables here. SQLite's typing rules are kept: a string attribute that reads as a JSON
number (a CSV import stores ``"30"``) compares as that number, strings compare byte-wise
(``COLLATE "C"``) and keyset pages walk the (owner, address COLLATE "C") index.

Date rules are SQLite's ``julianday()`` in plain SQL (:data:`_DAY`): one ``regexp_match``
per row splits the ISO 8601 text SQLite reads, and integer arithmetic (SQLite's
``computeJD``) makes the same millisecond count, so the same text is the same float on
both backends — day 31 of February rolls into March and ``24:30`` is accepted, as SQLite
does, where a ``timestamptz`` cast would fail the whole query. Text SQLite reads as a
Julian day number (``"2460000.5"``) or as ``now`` is read so here too; anything else is
NULL, never an error.

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

import json
import re
from collections.abc import Sequence
from typing import Final

from mtaserver.clock import Clock, SystemClock
from mtaserver.contacts import ContactConflict, attr_path
from mtaserver.segments import (
    JD_EPOCH,
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
from mtaserver.storage.postgres.db import Connection, PgDatabase

__all__ = ["PgSegmentStore", "Segment", "check_segment_name", "select_sql", "where_sql"]

_SQL_OP: Final = {"eq": "=", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_COLUMN: Final = {"email": 'c.address COLLATE "C"', "created_at": "c.created_at",
                  "updated_at": "c.updated_at", "consent_at": "c.consent_at"}  # fmt: skip
# A string that is a JSON number (what SQLite's json_valid + json_type accept).
_JSON_NUMBER = r"^[ \t\n\r]*-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?[ \t\n\r]*$"
# What a jsonb number's text can be (numeric_out: no exponent, no '+').
_NUMBER_TEXT: Final = re.compile(r"-?[0-9]+(\.[0-9]+)?\Z")
_EVENTS = ('c.address IN (SELECT lower(e.recipient) FROM events e JOIN messages m '
           'ON m.id = e.queue_id WHERE m."user" = {} AND e.type = {} '
           "AND e.recipient IS NOT NULL")  # fmt: skip
_MACHINE = ("(e.data::jsonb -> 'machine' = 'true'::jsonb OR (jsonb_typeof(e.data::jsonb -> "
            "'machine') = 'number' AND (e.data::jsonb ->> 'machine')::numeric <> 0))")  # fmt: skip

# -- SQLite's julianday() of a text, in SQL ---------------------------------------------------
_WS = r"[ \t\n\v\f\r]"  # SQLite's isspace (not the locale's: no Unicode spaces)
_SPACES = r"E' \t\n\013\f\r'"
# parseYyyyMmDd + parseHhMmSs + parseTimezone: -YYYY-MM-DD [T ws]* hh:mm[:ss[.f]] [Z|±hh:mm]
_ISO = (rf"^-?[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}[T \t\n\v\f\r]*(?:[0-9]{{2}}:[0-9]{{2}}"
        rf"(?::[0-9]{{2}}(?:\.[0-9]+)?)?{_WS}*(?:[Zz]|[+-][0-9]{{2}}:[0-9]{{2}})?"
        rf"{_WS}*)?$")  # fmt: skip
# sqlite3AtoF: a number (a raw Julian day); exponents of 1-3 digits are exact in numeric
_MANTISSA = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)"
_NUM = rf"^{_WS}*{_MANTISSA}([eE][+-]?0*[0-9]{{1,3}})?{_WS}*$"
_HUGE = rf"^{_WS}*{_MANTISSA}[eE][+-]?0*[1-9][0-9]{{3,}}{_WS}*$"  # ±inf or 0 as a double
# The common shapes without the regex: YYYY-MM-DD, and YYYY-MM-DD[T ]hh:mm:ss[Z] (LIKE and a
# digit test by ltrim cost a tenth of the regex); the others go through _ISO.
_DIGITS = "'0123456789'"
_DATE_ONLY = (f"s LIKE '____-__-__' AND ltrim(left(s, 4) || substr(s, 6, 2) || right(s, 2), "
              f"{_DIGITS}) = ''")  # fmt: skip
_WITH_TIME = ("CASE WHEN s LIKE '____-__-_____:__:__%' AND length(s) <= 20 THEN substr(s, 11, 1) "
              "IN ('T', ' ') AND right(s, length(s) - 19) IN ('', 'Z', 'z') AND ltrim(left(s, 4) "
              "|| substr(s, 6, 2) || substr(s, 9, 2) || substr(s, 12, 2) || substr(s, 15, 2) "
              f"|| substr(s, 18, 2), {_DIGITS}) = '' ELSE FALSE END")  # fmt: skip
_MAX_MS: Final = 464269060799999  # validJulianDay: 9999-12-31 23:59:59.999
# On the split text (y, mo, d as numbers; r: what follows the date, trimmed; n: its length):
_SEC = "substr(r, 6, 1) = ':'"
# the length of the zone at the end of r
_ZONE = ("CASE WHEN substr(r, n - 5, 1) IN ('+', '-') THEN 6 WHEN right(r, 1) IN ('Z', 'z') "
         "THEN 1 ELSE 0 END")  # fmt: skip
_TZ = "substr(r, n - 5, 1) IN ('+', '-')"
# (CASE, not AND/OR: the order of evaluation is kept, so no cast sees a part that is absent)
_OK = ("mo BETWEEN 1 AND 12 AND d BETWEEN 1 AND 31 AND y >= -4713 AND CASE WHEN r = '' "
       "THEN TRUE WHEN substr(r, 1, 2)::int > 24 OR substr(r, 4, 2)::int > 59 THEN FALSE "
       f"WHEN CASE WHEN {_SEC} THEN substr(r, 7, 2)::int > 59 ELSE FALSE END THEN FALSE "
       f"WHEN {_TZ} THEN substr(r, n - 4, 2)::int <= 14 AND substr(r, n - 1, 2)::int <= 59 "
       "ELSE TRUE END")  # fmt: skip


def _days(y: str, mo: str, d: str) -> str:
    """computeJD's X1 + X2 + D + B (days, exact: C's integer division) of year ``y``, month
    ``mo``, day ``d``; January and February count as months 13 and 14 of the year before."""
    yy, mm = f"({y} - ({mo} <= 2)::int)", f"({mo} + 12 * ({mo} <= 2)::int)"
    return (f"(36525 * ({yy} + 4716) / 100 + 306001 * ({mm} + 1) / 10000 + {d} + 2 "
            f"- {yy} / 100 + {yy} / 100 / 4)")  # fmt: skip


_FRACTION = (f"CASE WHEN {_SEC} AND substr(r, 9, 1) = '.' THEN "
             f"('0.' || left(rtrim(substr(r, 10, n - 9 - ({_ZONE})), {_SPACES}), 20))::float8 "
             "ELSE 0 END")  # fmt: skip
# (X1 + X2 + D + B - 1524.5) * 86400000 + h:m:s.f - zone, exact (C's integer division)
_ISO_MS = (f"({_days('y', 'mo', 'd')}::int8 * 86400000 - 131716800000 "
           "+ CASE WHEN r = '' THEN 0 ELSE substr(r, 1, 2)::int8 * 3600000 "
           "+ substr(r, 4, 2)::int8 * 60000 + trunc((CASE WHEN "
           f"{_SEC} THEN substr(r, 7, 2)::int ELSE 0 END + {_FRACTION}) * 1000 + 0.5)::int8 "
           f"- CASE WHEN {_TZ} THEN CASE substr(r, n - 5, 1) WHEN '-' THEN -60000 "
           "ELSE 60000 END * (substr(r, n - 4, 2)::int8 * 60 + substr(r, n - 1, 2)::int8) "
           "ELSE 0 END END)")  # fmt: skip
_NUM_MS = ("CASE WHEN s::numeric < -2.4703282292062328e-324 OR s::numeric >= 5373484.5 "
           "THEN NULL WHEN s::numeric < 1e-300 THEN 0 "
           "ELSE trunc(s::numeric::float8 * 86400000 + 0.5)::int8 END")  # fmt: skip
_HUGE_MS = f"CASE WHEN s ~ '[eE]-' OR s ~ '^{_WS}*[+-]?[0.]*[eE]' THEN 0.0::float8 END"


def julianday_sql(text: str, now: str) -> str:
    """SQLite's ``julianday(text)`` (float8 or NULL) for one row; ``now``: the mark of now
    in milliseconds of Julian days. Each ``OFFSET 0`` level is computed once per row (the
    planner would otherwise copy an expression into each use): the text; a plain
    YYYY-MM-DD is then done at once (LIKE and position), any other text goes down a nested
    subquery: its shape (LIKE for a plain time, else the regex), the split by position,
    integer arithmetic on the parts."""
    y, mo, d = "left(s, 4)::int", "substr(s, 6, 2)::int", "right(s, 2)::int"
    date_only = (f"CASE WHEN {mo} BETWEEN 1 AND 12 AND {d} BETWEEN 1 AND 31 THEN "
                 f"({_days(y, mo, d)}::int8 * 86400000 - 131716800000)::float8 / 86400000 "
                 "END")  # fmt: skip
    o = "(left(s, 1) = '-')::int"
    split = (f"CASE WHEN iso THEN (1 - 2 * {o}) * substr(s, 1 + {o}, 4)::int END AS y, "
             f"CASE WHEN iso THEN substr(s, 6 + {o}, 2)::int END AS mo, "
             f"CASE WHEN iso THEN substr(s, 9 + {o}, 2)::int END AS d, "
             f"CASE WHEN iso THEN rtrim(ltrim(substr(s, 11 + {o}), E'T \\t\\n\\013\\f\\r'), "
             f"{_SPACES}) END AS r")  # fmt: skip
    # one evaluation of the arithmetic for the years no limit is near; the range test
    # (validJulianDay) for the others, and for raw day numbers (rounding near the top)
    iso = (f"CASE WHEN {_OK} THEN CASE WHEN y BETWEEN -4712 AND 9998 THEN {_ISO_MS}::float8 "
           f"/ 86400000 WHEN {_ISO_MS} BETWEEN 0 AND {_MAX_MS} THEN {_ISO_MS}::float8 "
           "/ 86400000 END END")  # fmt: skip
    num = (f"CASE WHEN ({_NUM_MS}) BETWEEN 0 AND {_MAX_MS} THEN ({_NUM_MS})::float8 "
           "/ 86400000 END")  # fmt: skip
    other = (f"(SELECT CASE WHEN iso THEN {iso} WHEN s ~ '{_NUM}' THEN {num} "
             f"WHEN s ~ '{_HUGE}' THEN {_HUGE_MS} "
             f"WHEN length(s) = 3 AND lower(s) = 'now' THEN {now}::float8 / 86400000 END "
             f"FROM (SELECT s, iso, y, mo, d, r, length(r) AS n FROM (SELECT s, iso, {split} "
             f"FROM (SELECT s, {_WITH_TIME} OR s ~ '{_ISO}' AS iso OFFSET 0) b "
             "OFFSET 0) c) e)")  # fmt: skip
    return (f"(SELECT CASE WHEN s IS NULL THEN NULL WHEN {_DATE_ONLY} THEN {date_only} "
            f"ELSE {other} END FROM (SELECT {text} AS s OFFSET 0) a)")  # fmt: skip


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
            day = self.bind(julian_day(v, self.now), "float8")
            now = self.bind(round(self.now * 1000) + round(JD_EPOCH * 86400000), "int8")
            text = f"(CASE WHEN jsonb_typeof({x}) = 'string' THEN {x} #>> '{{}}' END)"
            return f"({julianday_sql(text, now)} {_SQL_OP[n.op]} {day})"
        if isinstance(v, bool):
            want = v if n.op == "eq" else not v
            return f"({x} = '{'true' if want else 'false'}'::jsonb)"
        if isinstance(v, str):
            if n.op == "eq" and not _NUMBER_TEXT.match(v):  # only a string can equal it:
                return f"({x} = {self.bind(json.dumps(v), 'jsonb')})"  # one jsonb compare
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
        return None if row is None else Segment.from_row(tuple(row))

    async def list_all(self, owner: str) -> list[Segment]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f'SELECT {_COLS} FROM segments WHERE owner = $1 ORDER BY name COLLATE "C"', owner
            )
        return [Segment.from_row(tuple(r)) for r in rows]

    async def delete(self, owner: str, name: str) -> bool:
        async with self.db.transaction() as conn:
            status = await conn.execute(
                "DELETE FROM segments WHERE owner = $1 AND name = $2", owner, name
            )
        return str(status) != "DELETE 0"

    async def resolve(self, owner: str, name_or_filter_json: str) -> Filter:
        """A saved segment by name, or a filter from its JSON text."""
        return await resolve_with(name_or_filter_json, lambda name: self.get(owner, name))

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
