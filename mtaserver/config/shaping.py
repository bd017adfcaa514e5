"""``[shaping]``: per-destination limits, reactive rules, the retry schedule.

Layout::

    [shaping]              builtin, retry_schedule, retry_every, max_lifetime, delay_warning,
                           retry_hint_min, retry_hint_max, claim_batch, max_backlog,
                           poll_interval, send_dsn, no_dsn_users
    [shaping.default]      limit keys (below)
    [shaping."<name>"]     limit keys + domains, mx_suffixes
    [[shaping.rule]]       name, action, duration, destinations, codes, enhanced, text

Limit keys: max_connections, max_messages_per_connection, max_rate ("N/unit" or
"unlimited"), burst, tls, dead_after, dead_backoff, dead_backoff_max.

The shipped data file ``mtaserver/data/shaping_rules.toml`` uses ``[destination."<name>"]``
and ``[[rule]]`` with the same keys; config wins key by key. The global connection cap and
the lease length are ``[delivery] max_connections`` and ``[delivery] lease``.
"""

from __future__ import annotations

import importlib.resources
import re
import tomllib
from dataclasses import dataclass, field
from typing import TypeVar

from mtaserver.config.reader import Reader
from mtaserver.errors import ConfigError

T = TypeVar("T")

# Actions a reactive rule may take.
SUSPEND = "suspend"  # stop sending to the destination for `duration`, defer what matched
HALVE_RATE = "halve_rate"  # halve the destination's message rate for `duration`
BOUNCE = "bounce"  # fail the matched recipients permanently, even on a 4xx
ACTIONS = (SUSPEND, HALVE_RATE, BOUNCE)
TLS_MODES = ("opportunistic", "required", "none")

DEFAULT_SCHEDULE = (300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)


def _pick(mine: T | None, theirs: T) -> T:
    return theirs if mine is None else mine


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
    """The keys one table sets; None means "inherit"."""

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

    Empty match fields match anything; a rule has at least one non-empty match field.
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
    poll_interval: float = 0.2  # how often to look for due work when idle
    # statuses that mean "could not talk to any MX host" (dead-destination counting)
    connection_failure_status: tuple[str, ...] = ("4.4.0", "4.4.1", "4.4.2", "4.4.3")


_DEFAULT_LIMITS = DestinationLimits()


@dataclass(frozen=True, slots=True)
class ShapingConfig:
    default: DestinationLimits = _DEFAULT_LIMITS
    destinations: tuple[DestinationConfig, ...] = ()
    rules: tuple[ShapingRule, ...] = ()
    builtin: bool = True  # also use the destinations and rules of data/shaping_rules.toml
    retry: RetrySettings = field(default_factory=RetrySettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    send_dsn: bool = True  # bounce notices (RFC 3464) to senders at all
    no_dsn_users: tuple[str, ...] = ()  # submitting users whose mail never gets DSNs

    @property
    def domains(self) -> dict[str, DestinationConfig]:
        """Destinations configured by name (shipped ones not included)."""
        return {d.name: d for d in self.destinations}


# -- parsing ---------------------------------------------------------------------------------
_LIMIT_KEYS = (
    "max_connections",
    "max_messages_per_connection",
    "max_rate",
    "burst",
    "tls",
    "dead_after",
    "dead_backoff",
    "dead_backoff_max",
)
_SCALARS = (
    "builtin",
    "retry_schedule",
    "retry_every",
    "max_lifetime",
    "delay_warning",
    "retry_hint_min",
    "retry_hint_max",
    "claim_batch",
    "max_backlog",
    "poll_interval",
    "send_dsn",
    "no_dsn_users",
)


def _limits(r: Reader) -> LimitOverrides:
    unlimited = r.has("max_rate") and r.string("max_rate") == "unlimited"
    burst = r.integer("burst", None, min=1)
    return LimitOverrides(
        max_connections=r.integer("max_connections", None, min=1),
        max_messages_per_connection=r.integer("max_messages_per_connection", None, min=1),
        max_rate=None if unlimited else r.rate("max_rate", None),
        burst=None if burst is None else float(burst),
        tls=r.choice("tls", TLS_MODES, None),
        dead_after=r.integer("dead_after", None, min=1),
        dead_backoff=_positive(r, "dead_backoff"),
        dead_backoff_max=_positive(r, "dead_backoff_max"),
        unlimited_rate=unlimited,
    )


def _positive(r: Reader, key: str) -> float | None:
    value: float | None = r.duration(key, None)
    if value is not None and value <= 0:
        raise r.error(key, f"expected a duration > 0, got {value:g}s")
    return value


def _destination(name: str, r: Reader) -> DestinationConfig:
    limits = _limits(r)
    dest = DestinationConfig(
        name=name.lower().rstrip("."),
        limits=limits,
        domains=tuple(d.lower().rstrip(".") for d in r.str_list("domains", ())),
        mx_suffixes=tuple(s.lower().strip(".") for s in r.str_list("mx_suffixes", ())),
    )
    r.finish()
    return dest


def _rule(r: Reader) -> ShapingRule:
    name = r.string("name")
    action = r.choice("action", ACTIONS)
    codes = r._get("codes", [])
    if isinstance(codes, int) and not isinstance(codes, bool):
        codes = [codes]
    if not isinstance(codes, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and 200 <= c <= 599 for c in codes
    ):
        raise r.error("codes", f"expected a list of SMTP reply codes, got {codes!r}")
    enhanced = r.str_list("enhanced", ())
    for e in enhanced:
        if not re.fullmatch(r"[245](\.\d{1,3}){0,2}\.?", e):
            raise r.error("enhanced", f"expected status prefixes like '4.7.', got {e!r}")
    text = r.string("text", None)
    if text is not None:
        try:
            re.compile(text)
        except re.error as exc:
            raise r.error("text", f"bad regular expression: {exc}") from None
    if not codes and not enhanced and text is None:
        raise r.error(None, "a rule needs codes, enhanced or text to match")
    duration = r.duration("duration", 3600.0)
    if action != BOUNCE and duration <= 0:
        raise r.error("duration", "expected a duration > 0")
    rule = ShapingRule(
        name=name,
        action=action,
        duration=duration,
        destinations=tuple(d.lower() for d in r.str_list("destinations", ())),
        codes=tuple(codes),
        enhanced=tuple(enhanced),
        text=text,
    )
    r.finish()
    return rule


def parse(r: Reader) -> ShapingConfig:
    default_r = r.table("default")
    default = _limits(default_r).apply(_DEFAULT_LIMITS)
    default_r.finish()
    rules = tuple(_rule(t) for t in r.tables("rule"))
    destinations = tuple(
        _destination(key, r.table(key))
        for key in r.names()
        if key not in ("default", "rule", *_SCALARS)
    )
    sched_raw = r._get("retry_schedule", None)
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    if sched_raw is not None:
        if not isinstance(sched_raw, list) or not sched_raw:
            raise r.error("retry_schedule", "expected a non-empty list of durations")
        keypath = f"{r.keypath}.retry_schedule" if r.keypath else "retry_schedule"
        sub = Reader({str(i): v for i, v in enumerate(sched_raw)}, r.file, keypath)
        schedule = tuple(_need_positive(sub, str(i)) for i in range(len(sched_raw)))
    warn_raw = r._get("delay_warning", None)
    delay_warning = None
    if warn_raw not in (None, False, "off"):
        delay_warning = _positive(r, "delay_warning")
    retry = RetrySettings(
        schedule=schedule,
        every=_positive(r, "retry_every") or 14400.0,
        max_lifetime=_positive(r, "max_lifetime") or 5 * 86400.0,
        delay_warning=delay_warning,
        min_hint=r.duration("retry_hint_min", 30.0),
        max_hint=_positive(r, "retry_hint_max") or 14400.0,
    )
    sched = SchedulerSettings(
        batch=r.integer("claim_batch", 500, min=1),
        max_backlog=r.integer("max_backlog", 2000, min=1),
        poll_interval=_positive(r, "poll_interval") or 0.2,
    )
    cfg = ShapingConfig(
        default=default,
        destinations=destinations,
        rules=rules,
        builtin=r.boolean("builtin", True),
        retry=retry,
        scheduler=sched,
        send_dsn=r.boolean("send_dsn", True),
        no_dsn_users=tuple(u.lower() for u in r.str_list("no_dsn_users", ())),
    )
    r.finish()
    return cfg


def _need_positive(r: Reader, key: str) -> float:
    value = _positive(r, key)
    assert value is not None
    return value


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
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"shaping_rules.toml: not valid TOML: {exc}") from None
    root = Reader(data, "shaping_rules.toml")
    dests_r = root.table("destination")
    dests = tuple(_destination(name, dests_r.table(name)) for name in dests_r.names())
    dests_r.finish()
    rules = tuple(_rule(t) for t in root.tables("rule"))
    root.finish()
    return dests, rules
