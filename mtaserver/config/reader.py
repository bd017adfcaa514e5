"""A typed walk over one TOML table that remembers where it is.

Every getter records the key it read, so :meth:`Reader.finish` can reject unknown keys
(KumoMTA's ``deny_unknown_fields``), and every error names the file and the key path:
``config.toml: shaping."gmail.com".max_rate: expected N/unit, got '100 per min'``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mtaserver.config.units import parse_duration, parse_rate, parse_size
from mtaserver.errors import ConfigError

T = TypeVar("T")
_MISSING: Any = object()
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key_text(key: str) -> str:
    return key if _BARE_KEY.match(key) else f'"{key}"'


class Reader:
    def __init__(
        self, table: dict[str, Any], file: str, path: str = "", base_dir: Path | None = None
    ):
        self._table = table
        self.file = file
        self.keypath = path
        self.base_dir = base_dir or Path(".")
        self._seen: set[str] = set()

    # -- errors --------------------------------------------------------------------------
    def where(self, key: str | None = None) -> str:
        parts = [p for p in (self.keypath, _key_text(key) if key is not None else "") if p]
        return f"{self.file}: {'.'.join(parts)}" if parts else self.file

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {message}")

    # -- raw access ----------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self._table

    def names(self) -> list[str]:
        return list(self._table)

    def _get(self, key: str, default: Any) -> Any:
        self._seen.add(key)
        if key in self._table:
            return self._table[key]
        if default is _MISSING:
            raise self.error(key, "required key is missing")
        return default

    def _typed(self, key: str, default: Any, types: tuple[type, ...], expected: str) -> Any:
        value = self._get(key, default)
        if value is default and key not in self._table:
            return value
        if isinstance(value, bool) and bool not in types:
            raise self.error(key, f"expected {expected}, got {value!r}")
        if not isinstance(value, types):
            raise self.error(key, f"expected {expected}, got {value!r}")
        return value

    # -- scalars -------------------------------------------------------------------------
    def string(self, key: str, default: Any = _MISSING) -> Any:
        return self._typed(key, default, (str,), "a string")

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        return self._typed(key, default, (bool,), "true or false")

    def integer(
        self, key: str, default: Any = _MISSING, *, min: int | None = None, max: int | None = None
    ) -> Any:
        value = self._typed(key, default, (int,), "an integer")
        if isinstance(value, int) and key in self._table:
            if min is not None and value < min:
                raise self.error(key, f"expected an integer >= {min}, got {value}")
            if max is not None and value > max:
                raise self.error(key, f"expected an integer <= {max}, got {value}")
        return value

    def number(self, key: str, default: Any = _MISSING, *, min: float | None = None) -> Any:
        value = self._typed(key, default, (int, float), "a number")
        if key in self._table:
            value = float(value)
            if min is not None and value < min:
                raise self.error(key, f"expected a number >= {min}, got {value:g}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _MISSING) -> Any:
        value = self.string(key, default)
        if key in self._table and value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise self.error(key, f"expected one of {allowed}, got {value!r}")
        return value

    def _unit(self, key: str, default: Any, parse: Callable[[str], T], expected: str) -> Any:
        value = self._get(key, default)
        if key not in self._table:
            return value
        if not isinstance(value, str):
            raise self.error(key, f"expected {expected}, got {value!r}")
        try:
            return parse(value)
        except ValueError:
            raise self.error(key, f"expected {expected}, got {value!r}") from None

    def duration(self, key: str, default: Any = _MISSING) -> Any:
        """A duration like "30s", "5m", "4h", "5d" → seconds (float)."""
        return self._unit(key, default, parse_duration, "a duration like '30s', '5m', '4h', '5d'")

    def size(self, key: str, default: Any = _MISSING) -> Any:
        """A size like "25MiB" → bytes (int)."""
        return self._unit(key, default, parse_size, "a size like '25MiB', '512KiB', '10MB'")

    def rate(self, key: str, default: Any = _MISSING) -> Any:
        """A rate like "600/min" → per second (float)."""
        return self._unit(key, default, parse_rate, "N/unit like '600/min', '10/s', '50000/h'")

    # -- compound ------------------------------------------------------------------------
    def str_list(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if key not in self._table:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def listen(self, key: str, default: Any = _MISSING) -> Any:
        """A listen address "host:port" or "[v6]:port" → (host, port)."""
        value = self.string(key, default)
        if key not in self._table:
            return value
        try:
            return parse_hostport(value, require_port=True)
        except ValueError as exc:
            raise self.error(key, f"expected 'host:port', got {value!r} ({exc})") from None

    def networks(self, key: str, default: Any = _MISSING) -> Any:
        values = self.str_list(key, default)
        if key not in self._table:
            return values
        nets = []
        for v in values:
            try:
                nets.append(ipaddress.ip_network(v, strict=False))
            except ValueError:
                raise self.error(
                    key, f"expected CIDR networks like '10.0.0.0/8', got {v!r}"
                ) from None
        return tuple(nets)

    def path(
        self, key: str, default: Any = _MISSING, *, must_exist: bool = False, readable: bool = False
    ) -> Any:
        """A file path, relative paths resolved against the config file's directory."""
        value = self.string(key, default)
        if key not in self._table:
            return value
        p = Path(value)
        if not p.is_absolute():
            p = (self.base_dir / p).resolve()
        if must_exist and not p.exists():
            raise self.error(key, f"file not found: {p}")
        if readable and not os.access(p, os.R_OK):
            raise self.error(key, f"file not readable: {p}")
        return p

    def table(self, key: str, *, required: bool = False) -> Reader:
        value = self._get(key, _MISSING if required else {})
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {value!r}")
        return Reader(
            value,
            self.file,
            ".".join(p for p in (self.keypath, _key_text(key)) if p),
            self.base_dir,
        )

    def tables(self, key: str) -> list[Reader]:
        """An array of tables ([[key]])."""
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(key, f"expected an array of tables ([[{key}]]), got {value!r}")
        base = ".".join(p for p in (self.keypath, _key_text(key)) if p)
        return [Reader(v, self.file, f"{base}[{i}]", self.base_dir) for i, v in enumerate(value)]

    def finish(self) -> None:
        """Reject keys nobody read: a typo must not silently fall back to a default."""
        unknown = [k for k in self._table if k not in self._seen]
        if unknown:
            raise self.error(unknown[0], "unknown key")


def parse_hostport(
    value: str, *, require_port: bool, default_port: int | None = None
) -> tuple[str, int]:
    """Split "host:port", "[v6]:port", or (when a default is given) a bare host."""
    value = value.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep:
            raise ValueError("unclosed '['")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    else:
        host, port_text = value, ""
    if not host:
        raise ValueError("empty host")
    if not port_text:
        if require_port or default_port is None:
            raise ValueError("missing port")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad port {port_text!r}")
    return host, int(port_text)
