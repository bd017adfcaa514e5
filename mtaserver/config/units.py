"""Durations, sizes and rates as operators write them in config files."""

from __future__ import annotations

import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
}
_RATE_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}

_NUM = r"(\d+(?:\.\d+)?)"
_SIZE_RE = re.compile(rf"^{_NUM}\s*([a-zA-Z]*)$")
_RATE_RE = re.compile(rf"^{_NUM}\s*/\s*(\d+\s*)?([a-z]+)$")


def parse_duration(text: str) -> float:
    """``"30s"``, ``"5m"``, ``"4h"``, ``"5d"`` (also ``"1h30m"``) → seconds."""
    s = text.strip().lower()
    total = 0.0
    pos = 0
    matched = False
    for m in re.finditer(rf"{_NUM}\s*(ms|s|m|h|d|w)", s):
        if s[pos : m.start()].strip():
            raise ValueError(text)
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
        matched = True
    if not matched or s[pos:].strip():
        raise ValueError(text)
    return total


def parse_size(text: str) -> int:
    """``"25MiB"``, ``"10MB"``, ``"512KiB"``, ``"1000"`` → bytes."""
    m = _SIZE_RE.match(text.strip())
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(text)
    value = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if value != int(value):
        raise ValueError(text)
    return int(value)


def parse_rate(text: str) -> float:
    """``"600/min"``, ``"10/s"``, ``"50000/h"``, ``"100/5m"`` → events per second."""
    m = _RATE_RE.match(text.strip().lower())
    if not m or m.group(3) not in _RATE_UNITS:
        raise ValueError(text)
    count = float(m.group(1))
    mult = float(m.group(2)) if m.group(2) else 1.0
    if mult <= 0:
        raise ValueError(text)
    return count / (mult * _RATE_UNITS[m.group(3)])


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"
