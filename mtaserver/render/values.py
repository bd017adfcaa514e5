"""How template data is read: JSON values only, the way Handlebars.js sees them.

The sandbox lives here. A lookup only ever descends into ``dict``/``MappingProxyType`` keys,
``list``/``tuple`` indexes and the ``length`` of a string or array; any other Python object
is treated as missing, so no attribute, method or dunder of a Python object is ever reached.
Strings, truthiness and HTML escaping follow Handlebars.js (JavaScript) rules.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Final

MAPPINGS: Final = (dict, MappingProxyType)
SEQUENCES: Final = (list, tuple)
_SCALARS: Final = (str, bool, int, float, type(None))

# Handlebars.js escapes exactly these seven characters.
_ESCAPES: Final = (
    ("&", "&amp;"),
    ("<", "&lt;"),
    (">", "&gt;"),
    ('"', "&quot;"),
    ("'", "&#x27;"),
    ("`", "&#x60;"),
    ("=", "&#x3D;"),
)
_ESCAPE_CHARS: Final = frozenset("&<>\"'`=")

# Nested arrays are joined like JavaScript's Array.prototype.toString, to this depth.
_MAX_JOIN_DEPTH: Final = 8


class Missing:
    """JavaScript's ``undefined``: a lookup that found nothing (renders as "")."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = Missing()


def is_json(value: object) -> bool:
    """True for the value types a template may see."""
    return isinstance(value, _SCALARS) or type(value) in MAPPINGS or type(value) in SEQUENCES


def child(value: object, key: str) -> object:
    """``value[key]`` for JSON containers, ``MISSING`` for everything else.

    Only exact JSON types are entered (``type(x) is dict``, never a subclass), and values
    of other types are opaque: the other functions here render them as "" and never call
    their methods."""
    t = type(value)
    if t is dict or t is MappingProxyType:
        return value.get(key, MISSING)  # type: ignore[attr-defined]
    if t is list or t is tuple:
        if key == "length":
            return len(value)  # type: ignore[arg-type]
        if key.isdigit() and int(key) < len(value):  # type: ignore[arg-type]
            return value[int(key)]  # type: ignore[index]
        return MISSING
    if t is str and key == "length":
        return len(value)  # type: ignore[arg-type]
    return MISSING


def truthy(value: object, include_zero: bool = False) -> bool:
    """Handlebars' ``if``: false, undefined, null, "", 0, NaN and [] are falsy; {} is not."""
    if value is MISSING or value is None or value is False:
        return False
    t = type(value)
    if t is str:
        return value != ""
    if t is int or t is float:
        if include_zero:
            return not (t is float and math.isnan(value))  # type: ignore[arg-type]
        return value != 0 and not (t is float and math.isnan(value))  # type: ignore[arg-type]
    if t is list or t is tuple:
        return len(value) > 0  # type: ignore[arg-type]
    return True


def number_text(value: float) -> str:
    """A float as JavaScript prints it: 3.0 → "3", 0.5 → "0.5"."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


def to_text(value: object, depth: int = 0) -> str:
    """The string JavaScript would give the value (objects print as ``[object Object]``)."""
    t = type(value)
    if t is str:
        return value  # type: ignore[return-value]
    if value is None or value is MISSING:
        return ""
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if t is float:
        return number_text(value)  # type: ignore[arg-type]
    if t is list or t is tuple:
        if depth >= _MAX_JOIN_DEPTH:
            return ""
        return ",".join(
            "" if item is None else to_text(item, depth + 1)
            for item in value  # type: ignore[attr-defined]
        )
    if t is dict or t is MappingProxyType:
        return "[object Object]"
    return ""


def escape_html(text: str) -> str:
    """Handlebars.js ``escapeExpression``."""
    if _ESCAPE_CHARS.isdisjoint(text):
        return text
    for char, entity in _ESCAPES:
        text = text.replace(char, entity)
    return text


def freeze(value: object, max_depth: int = 64) -> object:
    """A read-only copy of decoded JSON: dicts become mapping proxies, lists tuples.

    Raises ``ValueError`` for a non-JSON value or nesting deeper than ``max_depth``.
    """
    if isinstance(value, _SCALARS):
        if type(value) is float and not math.isfinite(value):
            raise ValueError("numbers must be finite")
        return value
    if max_depth <= 0:
        raise ValueError("nested too deeply")
    t = type(value)
    if t is dict or t is MappingProxyType:
        out = {}
        for k, v in value.items():  # type: ignore[attr-defined]
            if type(k) is not str:
                raise ValueError("object keys must be strings")
            out[k] = freeze(v, max_depth - 1)
        return MappingProxyType(out)
    if t is list or t is tuple:
        return tuple(freeze(v, max_depth - 1) for v in value)  # type: ignore[attr-defined]
    raise ValueError(f"not a JSON value: {type(value).__name__}")
