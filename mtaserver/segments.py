"""Segments as values: a small JSON filter language over contacts, parsed into frozen nodes.

Pure: no I/O. The storage owners (:mod:`mtaserver.storage.sqlite.segments` and its
PostgreSQL twin) compile a :data:`Filter` to SQL with bound parameters only; this module
makes sure nothing but known shapes reaches them, and holds what both owners share (the
saved :class:`Segment`, its name rule, :func:`resolve_with`, the Julian day of a date
operand). Attribute names go through :func:`mtaserver.contacts.attr_path` (the one
pattern that may become a JSON path), operators are a closed set, and every value is a
checked JSON scalar. Each error names the JSON path of the bad node (``filter.and[2].attr``),
so an API caller or an operator sees exactly what to fix.

The language (one JSON object per node)::

    {"and": [F, ...]}  {"or": [F, ...]}  {"not": F}         ({"and": []} matches everyone)
    {"attr": "plan", "eq": "pro"}        ops: eq ne lt lte gt gte contains starts_with
                                         ends_with in exists
    {"attr": "last_order", "gt": {"days_ago": 30}}   dates: days_ago, days_from_now, date
    {"field": "created_at", "gte": "2026-01-01"}     fields: email created_at updated_at
                                                     consent_at
    {"consent": "subscribed"}  {"consent": ["subscribed", "unconfirmed"]}
    {"in_list": "news"}  {"in_list": "news", "status": "subscribed"}
    {"opened": {"days": 30}}  {"opened": true}  {"opened": false}  (also "clicked";
                              "human": true leaves out machine opens such as mail proxies)
    {"bounced": true}  {"bounced": {"kind": "hard" | "soft" | "any", "days": 90}}
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from mtaserver.contacts import (
    LIST_NAME,
    ContactError,
    attr_path,
    check_list_name,
    check_status,
    iso,
)

MAX_JSON: Final = 64 * 1024  # bytes of one filter document
MAX_DEPTH: Final = 12  # nesting of and/or/not
MAX_NODES: Final = 200  # nodes of one filter
MAX_IN: Final = 1000  # values of one `in`
MAX_STRING: Final = 1000  # characters of one compared string
MAX_ENGAGEMENT: Final = 10  # opened/clicked/bounced nodes (each reads the event log once)
MAX_DAYS: Final = 36_500
PAGE: Final = 1000  # matches a store's page returns by default (at most 10x that)
MAX_SEGMENTS: Final = 1000  # saved segments per owner
JD_EPOCH: Final = 2440587.5  # julianday('1970-01-01'): date rules compare SQLite's days
_INT64: Final = 2**63 - 1

COMPARE: Final = ("eq", "ne", "lt", "lte", "gt", "gte")
TEXT_OPS: Final = ("contains", "starts_with", "ends_with")
OPS: Final = (*COMPARE, *TEXT_OPS, "in", "exists")
ORDER_OPS: Final = ("lt", "lte", "gt", "gte")
FIELDS: Final = ("email", "created_at", "updated_at", "consent_at")
TIME_FIELDS: Final = ("created_at", "updated_at", "consent_at")
BOUNCE_KINDS: Final = ("hard", "soft", "any")
_NODE_KEYS = ("and", "or", "not", "attr", "field", "consent", "in_list", "opened", "clicked",
              "bounced")  # fmt: skip


class SegmentError(ContactError):
    """A filter or segment the caller must fix; ``field`` is the JSON path of the bad node."""


class SegmentNotFound(SegmentError):
    """No saved segment of that name (for this owner)."""


Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class DaysAgo:
    """A time relative to when the filter runs (negative: in the future)."""

    days: float


@dataclass(frozen=True, slots=True)
class At:
    """A fixed time, seconds since the epoch (an ISO 8601 date or time, UTC if no offset)."""

    at: float


Operand = Scalar | tuple[str | int | float, ...] | DaysAgo | At


@dataclass(frozen=True, slots=True)
class AttrCmp:
    name: str  # a checked attribute name; the store binds ``attr_path(name)``
    op: str
    value: Operand


@dataclass(frozen=True, slots=True)
class FieldCmp:
    field: str  # one of FIELDS
    op: str
    value: Operand


@dataclass(frozen=True, slots=True)
class Consent:
    statuses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InList:
    name: str
    statuses: tuple[str, ...] = ()  # empty: any membership status
    where: str = field(default="filter", compare=False)  # for "no such list" errors


@dataclass(frozen=True, slots=True)
class Engaged:
    event: str  # "open" | "click"
    days: int | None = None  # None: ever
    human: bool = False  # leave out hits marked machine (mail proxies, link scanners)


@dataclass(frozen=True, slots=True)
class Bounced:
    kind: str = "hard"  # one of BOUNCE_KINDS
    days: int | None = None


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Filter


Filter = And | Or | Not | AttrCmp | FieldCmp | Consent | InList | Engaged | Bounced


def _err(where: str, message: str) -> SegmentError:
    return SegmentError(f"{where}: {message}", where)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_text(text: str | bytes, where: str = "filter") -> Filter:
    """A filter from its JSON text (at most ``MAX_JSON`` bytes)."""
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > MAX_JSON:
        raise _err(where, f"larger than {MAX_JSON} bytes")
    try:
        obj = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise _err(where, f"not JSON: {str(exc)[:120]}") from None
    return parse(obj, where)


def parse(obj: object, where: str = "filter") -> Filter:
    """A filter from its decoded JSON; SegmentError naming the path of the first bad node."""
    try:
        return _Parser().node(obj, where, 0)
    except SegmentError:
        raise
    except ContactError as exc:  # a list name or status checked by the contacts rules
        raise SegmentError(str(exc), exc.field) from None


def list_names(flt: Filter) -> list[InList]:
    """Every list membership node of ``flt``, in order (the store checks they exist)."""
    out: list[InList] = []
    stack: list[Filter] = [flt]
    while stack:
        n = stack.pop()
        if isinstance(n, And | Or):
            stack.extend(reversed(n.items))
        elif isinstance(n, Not):
            stack.append(n.item)
        elif isinstance(n, InList):
            out.append(n)
    return out


def canonical(obj: object) -> str:
    """The stored text of a filter document (checked by :func:`parse` first)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class _Parser:
    """One parse: counts nodes and engagement nodes against the limits."""

    def __init__(self) -> None:
        self.nodes = 0
        self.engagement = 0

    def node(self, obj: object, where: str, depth: int) -> Filter:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _err(where, f"a filter has at most {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise _err(where, f"nested deeper than {MAX_DEPTH} levels")
        if not isinstance(obj, dict):
            raise _err(where, "expected a JSON object (a filter node)")
        kinds = [k for k in _NODE_KEYS if k in obj]
        if len(kinds) != 1:
            raise _err(where, f"a node names exactly one of {', '.join(_NODE_KEYS)}")
        kind = kinds[0]
        if kind in ("and", "or"):
            self._only(obj, where, (kind,))
            items = obj[kind]
            if not isinstance(items, list) or (kind == "or" and not items):
                raise _err(f"{where}.{kind}", "expected a list of filters"
                           + (" (at least one)" if kind == "or" else ""))  # fmt: skip
            parsed = tuple(
                self.node(x, f"{where}.{kind}[{i}]", depth + 1) for i, x in enumerate(items)
            )
            return And(parsed) if kind == "and" else Or(parsed)
        if kind == "not":
            self._only(obj, where, ("not",))
            return Not(self.node(obj["not"], f"{where}.not", depth + 1))
        if kind == "attr":
            return self._attr(obj, where)
        if kind == "field":
            return self._field(obj, where)
        if kind == "consent":
            self._only(obj, where, ("consent",))
            return Consent(_statuses(obj["consent"], f"{where}.consent"))
        if kind == "in_list":
            self._only(obj, where, ("in_list", "status"))
            name = check_list_name(obj["in_list"], f"{where}.in_list")
            st = obj.get("status")
            statuses = () if st is None else _statuses(st, f"{where}.status")
            return InList(name, statuses, f"{where}.in_list")
        self.engagement += 1
        if self.engagement > MAX_ENGAGEMENT:
            raise _err(where, f"at most {MAX_ENGAGEMENT} opened/clicked/bounced nodes")
        if kind == "bounced":
            return self._bounced(obj, where)
        return self._engaged(obj, kind, where)

    @staticmethod
    def _only(obj: dict[str, object], where: str, known: tuple[str, ...]) -> None:
        extra = sorted(set(obj) - set(known))
        if extra:
            name = str(extra[0])[:64]
            raise _err(f"{where}.{name}", f"unknown key here (known: {', '.join(known)})")

    def _op(self, obj: dict[str, object], where: str, head: str) -> str:
        ops = [k for k in obj if k != head]
        if len(ops) != 1 or ops[0] not in OPS:
            bad = next((k for k in ops if k not in OPS), None)
            at = f"{where}.{str(bad)[:64]}" if bad is not None else where
            raise _err(at, f"give exactly one operator of {', '.join(OPS)}")
        return ops[0]

    def _attr(self, obj: dict[str, object], where: str) -> AttrCmp:
        name = obj["attr"]
        if not isinstance(name, str):
            raise _err(f"{where}.attr", "expected an attribute name")
        try:
            attr_path(name, f"{where}.attr")
        except ContactError as exc:
            raise SegmentError(str(exc), exc.field) from None
        op = self._op(obj, where, "attr")
        return AttrCmp(name, op, _operand(op, obj[op], f"{where}.{op}", dates=True))

    def _field(self, obj: dict[str, object], where: str) -> FieldCmp:
        name = obj["field"]
        if name not in FIELDS:
            raise _err(f"{where}.field", f"one of {', '.join(FIELDS)}")
        assert isinstance(name, str)
        op = self._op(obj, where, "field")
        at = f"{where}.{op}"
        if name in TIME_FIELDS:
            if op not in ORDER_OPS:
                raise _err(at, f"{name} is compared with lt, lte, gt or gte")
            raw = obj[op]
            value: Operand = _date_operand(raw, at) if isinstance(raw, dict) else _iso(raw, at)
            return FieldCmp(name, op, value)
        if op == "exists":
            raise _err(at, "every contact has an email")
        value = _operand(op, obj[op], at, dates=False)
        if isinstance(value, str):
            value = value.lower()  # addresses are stored lower-case
        elif isinstance(value, tuple):
            if not all(isinstance(v, str) for v in value):
                raise _err(at, "email is compared with strings")
            value = tuple(str(v).lower() for v in value)
        else:
            raise _err(at, "email is compared with strings")
        return FieldCmp(name, op, value)

    def _engaged(self, obj: dict[str, object], kind: str, where: str) -> Filter:
        self._only(obj, where, (kind,))
        event = "open" if kind == "opened" else "click"
        spec = obj[kind]
        at = f"{where}.{kind}"
        if isinstance(spec, bool):
            return Engaged(event) if spec else Not(Engaged(event))
        if not isinstance(spec, dict):
            raise _err(at, 'true, false or {"days": N, "human": true}')
        self._only(spec, at, ("days", "human"))
        human = spec.get("human", False)
        if not isinstance(human, bool):
            raise _err(f"{at}.human", "true or false")
        return Engaged(event, _days(spec.get("days"), f"{at}.days"), human)

    def _bounced(self, obj: dict[str, object], where: str) -> Filter:
        self._only(obj, where, ("bounced",))
        spec = obj["bounced"]
        at = f"{where}.bounced"
        if isinstance(spec, bool):
            return Bounced() if spec else Not(Bounced())
        if not isinstance(spec, dict):
            raise _err(at, 'true, false or {"kind": "hard", "days": N}')
        self._only(spec, at, ("kind", "days"))
        kind = spec.get("kind", "hard")
        if kind not in BOUNCE_KINDS:
            raise _err(f"{at}.kind", f"one of {', '.join(BOUNCE_KINDS)}")
        assert isinstance(kind, str)
        return Bounced(kind, _days(spec.get("days"), f"{at}.days"))


def _statuses(value: object, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _err(where, "at least one status")
    return tuple(check_status(v, f"{where}[{i}]" if isinstance(value, list) else where)
                 for i, v in enumerate(items))  # fmt: skip


def _days(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DAYS:
        raise _err(where, f"a whole number of days from 1 to {MAX_DAYS}")
    return value


def _scalar(value: object, where: str, *, bools: bool = True) -> Scalar:
    if isinstance(value, bool):
        if not bools:
            raise _err(where, "a string or a number")
        return value
    if isinstance(value, int):
        if abs(value) > _INT64:
            raise _err(where, "a number within 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _err(where, "a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise _err(where, f"at most {MAX_STRING} characters")
        return value
    if value is None:
        raise _err(where, 'null is not compared; use {"exists": false}')
    raise _err(where, "a string, a number or true/false")


def _operand(op: str, value: object, where: str, *, dates: bool) -> Operand:
    if op == "exists":
        if not isinstance(value, bool):
            raise _err(where, "true or false")
        return value
    if op == "in":
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_IN:
            raise _err(where, f"a list of 1 to {MAX_IN} strings or numbers")
        out = []
        for i, v in enumerate(value):
            s = _scalar(v, f"{where}[{i}]", bools=False)
            assert not isinstance(s, bool)
            out.append(s)
        return tuple(out)
    if op in TEXT_OPS:
        if not isinstance(value, str) or not value:
            raise _err(where, "a non-empty string")
        return _scalar(value, where)
    if isinstance(value, dict):
        if not dates:
            raise _err(where, "a string or a number")
        if op not in ORDER_OPS:
            raise _err(where, "dates are compared with lt, lte, gt or gte")
        return _date_operand(value, where)
    s = _scalar(value, where)
    if isinstance(s, bool) and op not in ("eq", "ne"):
        raise _err(where, "true/false is compared with eq or ne")
    return s


def _date_operand(value: dict[str, object], where: str) -> DaysAgo | At:
    if len(value) != 1 or next(iter(value)) not in ("days_ago", "days_from_now", "date"):
        raise _err(where, 'one of {"days_ago": N}, {"days_from_now": N}, {"date": "ISO 8601"}')
    ((key, raw),) = value.items()
    if key == "date":
        return _iso(raw, f"{where}.date")
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw <= MAX_DAYS:
        raise _err(f"{where}.{key}", f"a number of days from 0 to {MAX_DAYS}")
    return DaysAgo(float(raw) if key == "days_ago" else -float(raw))


def _iso(raw: object, where: str) -> At:
    if not isinstance(raw, str) or len(raw) > 40:
        raise _err(where, "an ISO 8601 date or time (2026-01-31, 2026-01-31T09:00:00Z)")
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise _err(where, f"not an ISO 8601 date or time: {raw!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return At(dt.timestamp())


def resolve_time(value: DaysAgo | At, now: float) -> float:
    """The epoch seconds a date operand stands for when the filter runs at ``now``."""
    return value.at if isinstance(value, At) else now - value.days * 86400.0


def julian_day(value: DaysAgo | At, now: float) -> float:
    """The operand as SQLite's ``julianday()`` number, what both backends compare a date
    attribute against (the same float on both, so a boundary falls the same way)."""
    return resolve_time(value, now) / 86400.0 + JD_EPOCH


def check_segment_name(name: object, field: str = "name") -> str:
    if not isinstance(name, str) or not LIST_NAME.match(name):
        raise SegmentError(
            f"{field}: a segment name is letters, digits, '_', '.' and '-', up to 64 characters",
            field,
        )
    return name


@dataclass(frozen=True, slots=True)
class Segment:
    """A saved segment, as either backend's owner stores it."""

    id: int
    owner: str
    name: str
    filter: str  # the JSON document as given (canonical text)
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Sequence[object]) -> Segment:
        """From ``id, owner, name, filter, created_at, updated_at`` (either driver's row)."""
        sid, owner, name, text, created, updated = row
        return cls(int(sid), str(owner), str(name), str(text), float(created), float(updated))  # type: ignore[call-overload, arg-type]

    def parsed(self) -> Filter:
        return parse_text(self.filter)

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "filter": json.loads(self.filter),
                "created_at": iso(self.created_at),
                "updated_at": iso(self.updated_at)}  # fmt: skip


async def resolve_with(
    name_or_filter_json: str, get: Callable[[str], Awaitable[Segment | None]]
) -> Filter:
    """A filter from its JSON text (it starts with ``{``), else the saved segment of that
    name found by ``get``; SegmentNotFound / SegmentError name the ``segment`` field."""
    text = name_or_filter_json.strip()
    if text.startswith("{"):
        return parse_text(text)
    name = check_segment_name(text, "segment")
    seg = await get(name)
    if seg is None:
        raise SegmentNotFound(f"segment: no segment {name!r}", "segment")
    return seg.parsed()
