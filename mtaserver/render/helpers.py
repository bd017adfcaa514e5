"""The helpers a template may call: Handlebars' built-ins and SendGrid's additions.

Each helper is a pure function of JSON values. Predicates (``if``, ``equals``, ``and`` …)
answer a bool: used as a block they choose the main or the ``{{else}}`` branch, used inline
or as a sub-expression they give ``true``/``false``. Inline helpers return a value that is
rendered (and escaped) like a variable. The set is closed: a template naming any other
helper is refused when it is compiled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

from mtaserver.render.dates import format_date
from mtaserver.render.values import MAPPINGS, MISSING, SEQUENCES, child, to_text, truthy

Args = Sequence[object]
Hash = Mapping[str, object]


def _arg(args: Args, i: int) -> object:
    return args[i] if i < len(args) else MISSING


def _number(value: object) -> float | None:
    """JavaScript's numeric view of a value, for comparisons (None when it has none)."""
    t = type(value)
    if t is bool:
        return 1.0 if value else 0.0
    if t is int or t is float:
        return float(value)  # type: ignore[arg-type]
    if t is str:
        text = value.strip()  # type: ignore[attr-defined]
        if text == "":
            return 0.0
        try:
            return float(text)
        except ValueError:
            return None
    if value is None:
        return 0.0
    return None


def loose_equals(a: object, b: object) -> bool:
    """JavaScript's ``==`` on JSON values (``12345 == "12345"``, ``null == undefined``)."""
    absent = (None, MISSING)
    if a in absent or b in absent:
        return a in absent and b in absent
    ta, tb = type(a), type(b)
    if ta is str and tb is str:
        return a == b
    if ta in MAPPINGS or ta in SEQUENCES or tb in MAPPINGS or tb in SEQUENCES:
        return a is b
    na, nb = _number(a), _number(b)
    return na is not None and nb is not None and na == nb


def _compare(args: Args, op: Callable[[float, float], bool]) -> bool:
    a, b = _arg(args, 0), _arg(args, 1)
    if type(a) is str and type(b) is str:
        try:
            return op(float(a), float(b))
        except ValueError:
            return op(a, b)  # type: ignore[arg-type]
    na, nb = _number(a), _number(b)
    return na is not None and nb is not None and op(na, nb)


def _if(args: Args, h: Hash) -> bool:
    return truthy(_arg(args, 0), include_zero=truthy(h.get("includeZero", False)))


def _unless(args: Args, h: Hash) -> bool:
    return not _if(args, h)


PREDICATES: Final[Mapping[str, Callable[[Args, Hash], bool]]] = {
    "if": _if,
    "unless": _unless,
    "equals": lambda a, h: loose_equals(_arg(a, 0), _arg(a, 1)),
    "notEquals": lambda a, h: not loose_equals(_arg(a, 0), _arg(a, 1)),
    "greaterThan": lambda a, h: _compare(a, lambda x, y: x > y),
    "lessThan": lambda a, h: _compare(a, lambda x, y: x < y),
    "and": lambda a, h: bool(a) and all(truthy(v) for v in a),
    "or": lambda a, h: any(truthy(v) for v in a),
}


def _length(args: Args, h: Hash) -> object:
    value = _arg(args, 0)
    t = type(value)
    if t is str or t in SEQUENCES or t in MAPPINGS:
        return len(value)  # type: ignore[arg-type]
    return 0


def _insert(args: Args, h: Hash) -> object:
    """``{{insert name "default=Customer"}}``: the value, or the default when it is empty."""
    value = _arg(args, 0)
    if truthy(value, include_zero=True):
        return value
    default = h.get("default", MISSING)
    for extra in args[1:]:
        if type(extra) is str and extra.startswith("default="):
            default = extra[len("default=") :]
    return default


def _format_date(args: Args, h: Hash) -> object:
    return format_date(_arg(args, 0), _arg(args, 1), _arg(args, 2))


def _lookup(args: Args, h: Hash) -> object:
    return child(_arg(args, 0), to_text(_arg(args, 1)))


INLINE: Final[Mapping[str, Callable[[Args, Hash], object]]] = {
    "length": _length,
    "insert": _insert,
    "formatDate": _format_date,
    "lookup": _lookup,
}

# Block helpers with their own semantics (implemented by the interpreter).
STRUCTURAL: Final = frozenset({"each", "with"})
ALL: Final = frozenset(PREDICATES) | frozenset(INLINE) | STRUCTURAL
