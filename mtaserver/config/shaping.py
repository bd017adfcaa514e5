"""`[shaping]`: per-destination limits, reactive rules, the retry schedule and global caps.

The settings are plain frozen values; ``mtaserver.shaper`` and ``mtaserver.retry`` turn them
into behaviour. Defaults live here so that an empty config file gives a working MTA.
"""

from __future__ import annotations

import importlib.resources
import math
import re
import tomllib
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


def _pick(mine: T | None, theirs: T) -> T:
    return theirs if mine is None else mine


# Actions a reactive rule may take.
SUSPEND = "suspend"  # stop sending to the destination for `duration`, defer what matched
HALVE_RATE = "halve_rate"  # halve the destination's message rate for `duration`
BOUNCE = "bounce"  # fail the matched recipients permanently, even on a 4xx
ACTIONS = (SUSPEND, HALVE_RATE, BOUNCE)

DEFAULT_SCHEDULE = (300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)


@dataclass(frozen=True, slots=True)
class DestinationLimits:
    """How hard mtaserver may push one destination (a domain or a group of them)."""

    max_connections: int = 10
    max_messages_per_connection: int = 100
    max_rate: float | None = None  # messages per second; None = unlimited
    burst: float | None = None  # token bucket depth; None = a tenth of a second's worth, ≥ 1
    tls: str | None = None  # overrides [delivery] tls for this destination
    dead_after: int = 5  # consecutive connection failures before the destination is dead
    dead_backoff: float = 300.0  # first suspension of a dead destination; doubles each time
    dead_backoff_max: float = 14400.0


@dataclass(frozen=True, slots=True)
class LimitOverrides:
    """The keys one `[shaping."<name>"]` table sets; None means "inherit the default"."""

    max_connections: int | None = None
    max_messages_per_connection: int | None = None
    max_rate: float | None = None
    burst: float | None = None
    tls: str | None = None
    dead_after: int | None = None
    dead_backoff: float | None = None
    dead_backoff_max: float | None = None
    unlimited_rate: bool = False  # `max_rate = "unlimited"` clears an inherited rate

    def apply(self, base: DestinationLimits) -> DestinationLimits:
        return DestinationLimits(
            max_connections=_pick(self.max_connections, base.max_connections),
            max_messages_per_connection=_pick(
                self.max_messages_per_connection, base.max_messages_per_connection
            ),
            max_rate=None if self.unlimited_rate else _pick(self.max_rate, base.max_rate),
            burst=_pick(self.burst, base.burst),
            tls=_pick(self.tls, base.tls),
            dead_after=_pick(self.dead_after, base.dead_after),
            dead_backoff=_pick(self.dead_backoff, base.dead_backoff),
            dead_backoff_max=_pick(self.dead_backoff_max, base.dead_backoff_max),
        )

    def merged(self, over: LimitOverrides) -> LimitOverrides:
        """`over` wins key by key (config over shipped data)."""

        return LimitOverrides(
            max_connections=_pick(over.max_connections, self.max_connections),
            max_messages_per_connection=_pick(
                over.max_messages_per_connection, self.max_messages_per_connection
            ),
            max_rate=None if over.unlimited_rate else _pick(over.max_rate, self.max_rate),
            burst=_pick(over.burst, self.burst),
            tls=_pick(over.tls, self.tls),
            dead_after=_pick(over.dead_after, self.dead_after),
            dead_backoff=_pick(over.dead_backoff, self.dead_backoff),
            dead_backoff_max=_pick(over.dead_backoff_max, self.dead_backoff_max),
            unlimited_rate=over.unlimited_rate or (self.unlimited_rate and over.max_rate is None),
        )


@dataclass(frozen=True, slots=True)
class DestinationConfig:
    """One named destination: its limits and which domains share them.

    A destination is named after its main domain (`gmail.com`). Other domains join it when
    listed in `domains`, or when every MX host of theirs ends with one of `mx_suffixes`
    (so a company domain hosted by Google Workspace shares Google's limits).
    """

    name: str
    limits: LimitOverrides = field(default_factory=LimitOverrides)
    domains: tuple[str, ...] = ()
    mx_suffixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ShapingRule:
    """Reactive back-off: a receiver reply pattern and what to do when it is seen.

    Empty match fields match anything; a rule needs at least one non-empty match field.
    `enhanced` entries are prefixes ("4.7." matches "4.7.28"); `text` is a regex searched
    case-insensitively in the reply text.
    """

    name: str
    action: str
    duration: float = 3600.0
    destinations: tuple[str, ...] = ()  # destination names; empty = every destination
    codes: tuple[int, ...] = ()
    enhanced: tuple[str, ...] = ()
    text: str | None = None


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """When to try a deferred recipient again, and when to give up."""

    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    every: float = 14400.0  # interval once the schedule is used up
    max_lifetime: float = 5 * 86400.0  # then bounce with 4.4.7
    delay_warning: float | None = None  # warn the sender once after this long; None = off
    min_hint: float = 30.0  # bounds for "retry in N seconds" hints from receivers
    max_hint: float = 14400.0


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """How the scheduler pulls work from the spool."""

    batch: int = 500  # recipients claimed per spool call
    max_backlog: int = 2000  # claimed jobs held in memory, all destinations together
    lease: float = 600.0  # seconds a claim stays ours
    poll_interval: float = 1.0  # how often to look for due work when idle
    # statuses that mean "could not talk to any MX host" (dead-destination counting)
    connection_failure_status: tuple[str, ...] = ("4.4.1", "4.4.2", "4.4.3", "4.4.0")


@dataclass(frozen=True, slots=True)
class ShapingConfig:
    max_connections: int = 200  # global cap on concurrent deliveries (= worker pool size)
    default: LimitOverrides = field(default_factory=LimitOverrides)
    destinations: tuple[DestinationConfig, ...] = ()
    rules: tuple[ShapingRule, ...] = ()
    builtin: bool = True  # also use the destinations and rules of data/shaping_rules.toml
    retry: RetrySettings = field(default_factory=RetrySettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)


# -- parsing ---------------------------------------------------------------------------------
# `[shaping]` layout:
#   [shaping]            max_connections, builtin, retry_schedule, retry_every, max_lifetime,
#                        delay_warning, retry_hint_min, retry_hint_max, claim_batch,
#                        max_backlog, lease, poll_interval
#   [shaping.default]    limit keys
#   [shaping."<name>"]   limit keys + domains, mx_suffixes
#   [[shaping.rule]]     name, action, duration, destinations, codes, enhanced, text
# The shipped data file uses `[destination."<name>"]` and `[[rule]]` with the same keys.

LIMIT_KEYS = (
    "max_connections",
    "max_messages_per_connection",
    "max_rate",
    "burst",
    "tls",
    "dead_after",
    "dead_backoff",
    "dead_backoff_max",
)
TLS_MODES = ("opportunistic", "required", "none")
_SCALARS = {
    "max_connections",
    "builtin",
    "retry_schedule",
    "retry_every",
    "max_lifetime",
    "delay_warning",
    "retry_hint_min",
    "retry_hint_max",
    "claim_batch",
    "max_backlog",
    "lease",
    "poll_interval",
}


class ShapingError(ValueError):
    """A bad `[shaping]` value; the message names the key path."""


_DUR_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
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


def _duration(value: object, path: str) -> float:
    if isinstance(value, bool):
        raise ShapingError(f"{path}: expected a duration like '5m', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ShapingError(f"{path}: expected a duration ≥ 0, got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        for unit in sorted(_DUR_UNITS, key=len, reverse=True):
            if text.endswith(unit):
                num = text[: -len(unit)].strip()
                try:
                    n = float(num)
                except ValueError:
                    break
                if n < 0 or not math.isfinite(n):
                    break
                return n * _DUR_UNITS[unit]
    raise ShapingError(f"{path}: expected a duration like '5m', got {value!r}")


def _rate(value: object, path: str) -> float | None:
    if value == "unlimited":
        return None
    if isinstance(value, str) and "/" in value:
        num, _, unit = value.partition("/")
        try:
            n = float(num.strip())
        except ValueError:
            n = -1.0
        per = _RATE_UNITS.get(unit.strip().lower())
        if per is not None and n > 0 and math.isfinite(n):
            return n / per
    raise ShapingError(f"{path}: expected N/unit, got {value!r}")


def _int(value: object, path: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ShapingError(f"{path}: expected an integer ≥ {minimum}, got {value!r}")
    return value


def _strs(value: object, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ShapingError(f"{path}: expected a list of strings, got {value!r}")


def _table(value: object, path: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ShapingError(f"{path}: expected a table, got {value!r}")
    return value


def parse_limits(
    table: dict[str, object], path: str, extra: tuple[str, ...] = ()
) -> LimitOverrides:
    for key in table:
        if key not in LIMIT_KEYS and key not in extra:
            raise ShapingError(f"{path}.{key}: unknown key")
    kw: dict[str, object] = {}
    for key in ("max_connections", "max_messages_per_connection", "dead_after"):
        if key in table:
            kw[key] = _int(table[key], f"{path}.{key}")
    if "max_rate" in table:
        rate = _rate(table["max_rate"], f"{path}.max_rate")
        if rate is None:
            kw["unlimited_rate"] = True
        else:
            kw["max_rate"] = rate
    if "burst" in table:
        kw["burst"] = float(_int(table["burst"], f"{path}.burst"))
    if "tls" in table:
        tls = table["tls"]
        if tls not in TLS_MODES:
            raise ShapingError(f"{path}.tls: expected one of {', '.join(TLS_MODES)}, got {tls!r}")
        kw["tls"] = tls
    for key in ("dead_backoff", "dead_backoff_max"):
        if key in table:
            kw[key] = _duration(table[key], f"{path}.{key}")
    return LimitOverrides(**kw)  # type: ignore[arg-type]


def parse_destination(name: str, table: dict[str, object], path: str) -> DestinationConfig:
    limits = parse_limits(table, path, extra=("domains", "mx_suffixes"))
    domains = _strs(table.get("domains", []), f"{path}.domains")
    suffixes = _strs(table.get("mx_suffixes", []), f"{path}.mx_suffixes")
    return DestinationConfig(
        name=name.lower(),
        limits=limits,
        domains=tuple(d.lower() for d in domains),
        mx_suffixes=tuple(s.lower().lstrip(".") for s in suffixes),
    )


_RULE_KEYS = ("name", "action", "duration", "destinations", "codes", "enhanced", "text")


def parse_rule(table: dict[str, object], path: str) -> ShapingRule:
    for key in table:
        if key not in _RULE_KEYS:
            raise ShapingError(f"{path}.{key}: unknown key")
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ShapingError(f"{path}.name: expected a rule name")
    action = table.get("action")
    if action not in ACTIONS:
        raise ShapingError(f"{path}.action: expected one of {', '.join(ACTIONS)}, got {action!r}")
    codes_raw = table.get("codes", [])
    if isinstance(codes_raw, int) and not isinstance(codes_raw, bool):
        codes_raw = [codes_raw]
    if not isinstance(codes_raw, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and 200 <= c <= 599 for c in codes_raw
    ):
        raise ShapingError(f"{path}.codes: expected SMTP reply codes, got {codes_raw!r}")
    enhanced = _strs(table.get("enhanced", []), f"{path}.enhanced")
    for e in enhanced:
        if not re.fullmatch(r"[245](\.\d{1,3}){0,2}\.?", e):
            raise ShapingError(f"{path}.enhanced: expected a status prefix like 4.7., got {e!r}")
    text = table.get("text")
    if text is not None:
        if not isinstance(text, str):
            raise ShapingError(f"{path}.text: expected a regular expression")
        try:
            re.compile(text)
        except re.error as exc:
            raise ShapingError(f"{path}.text: bad regular expression: {exc}") from None
    if not codes_raw and not enhanced and text is None:
        raise ShapingError(f"{path}: a rule needs codes, enhanced or text to match")
    duration = _duration(table.get("duration", "1h"), f"{path}.duration")
    if action != BOUNCE and duration <= 0:
        raise ShapingError(f"{path}.duration: expected a duration > 0")
    return ShapingRule(
        name=name,
        action=str(action),
        duration=duration,
        destinations=tuple(
            d.lower() for d in _strs(table.get("destinations", []), f"{path}.destinations")
        ),
        codes=tuple(codes_raw),
        enhanced=enhanced,
        text=text,
    )


def parse_rules(value: object, path: str) -> tuple[ShapingRule, ...]:
    if not isinstance(value, list):
        raise ShapingError(f"{path}: expected an array of tables ([[...]])")
    return tuple(parse_rule(_table(v, f"{path}[{i}]"), f"{path}[{i}]") for i, v in enumerate(value))


def parse_shaping(table: dict[str, object], path: str = "shaping") -> ShapingConfig:
    """Build a ShapingConfig from the `[shaping]` table of the config file."""
    kw: dict[str, object] = {}
    retry_kw: dict[str, object] = {}
    sched_kw: dict[str, object] = {}
    destinations: list[DestinationConfig] = []
    for key, value in table.items():
        p = f'{path}."{key}"' if "." in key else f"{path}.{key}"
        if key == "default":
            kw["default"] = parse_limits(_table(value, p), p)
        elif key == "rule":
            kw["rules"] = parse_rules(value, p)
        elif isinstance(value, dict):
            destinations.append(parse_destination(key, value, p))
        elif key not in _SCALARS:
            raise ShapingError(f"{p}: unknown key")
        elif key == "max_connections":
            kw["max_connections"] = _int(value, p)
        elif key == "builtin":
            if not isinstance(value, bool):
                raise ShapingError(f"{p}: expected true or false, got {value!r}")
            kw["builtin"] = value
        elif key == "retry_schedule":
            if not isinstance(value, list) or not value:
                raise ShapingError(f"{p}: expected a non-empty list of durations")
            sched = tuple(_duration(v, f"{p}[{i}]") for i, v in enumerate(value))
            if any(s <= 0 for s in sched):
                raise ShapingError(f"{p}: every delay must be > 0")
            retry_kw["schedule"] = sched
        elif key == "retry_every":
            retry_kw["every"] = _positive(value, p)
        elif key == "max_lifetime":
            retry_kw["max_lifetime"] = _positive(value, p)
        elif key == "delay_warning":
            retry_kw["delay_warning"] = None if value in (False, 0, "off") else _positive(value, p)
        elif key == "retry_hint_min":
            retry_kw["min_hint"] = _duration(value, p)
        elif key == "retry_hint_max":
            retry_kw["max_hint"] = _positive(value, p)
        elif key == "claim_batch":
            sched_kw["batch"] = _int(value, p)
        elif key == "max_backlog":
            sched_kw["max_backlog"] = _int(value, p)
        elif key == "lease":
            sched_kw["lease"] = _positive(value, p)
        elif key == "poll_interval":
            sched_kw["poll_interval"] = _positive(value, p)
    kw["destinations"] = tuple(destinations)
    kw["retry"] = RetrySettings(**retry_kw)  # type: ignore[arg-type]
    kw["scheduler"] = SchedulerSettings(**sched_kw)  # type: ignore[arg-type]
    return ShapingConfig(**kw)  # type: ignore[arg-type]


def _positive(value: object, path: str) -> float:
    d = _duration(value, path)
    if d <= 0:
        raise ShapingError(f"{path}: expected a duration > 0, got {value!r}")
    return d


def load_builtin(
    text: str | None = None,
) -> tuple[tuple[DestinationConfig, ...], tuple[ShapingRule, ...]]:
    """The destinations and rules shipped in `mtaserver/data/shaping_rules.toml`."""
    if text is None:
        text = (
            importlib.resources.files("mtaserver")
            .joinpath("data/shaping_rules.toml")
            .read_text(encoding="utf-8")
        )
    data = tomllib.loads(text)
    dests: list[DestinationConfig] = []
    for key in data:
        if key not in ("destination", "rule"):
            raise ShapingError(f"shaping_rules.toml: {key}: unknown key")
    for name, value in _table(data.get("destination", {}), "destination").items():
        p = f'destination."{name}"'
        dests.append(parse_destination(name, _table(value, p), p))
    rules = parse_rules(data.get("rule", []), "rule")
    return tuple(dests), rules
