"""Traffic shaping: how hard each destination may be pushed right now (pure policy).

A *destination* is a named set of domains that share limits. Domains are mapped to one:
1. a domain named by a destination, or listed in its `domains`, belongs to it;
2. else, when the domain's MX hosts are known and every one of them ends with one of a
   destination's `mx_suffixes`, it belongs to that destination (KumoMTA derives a "site
   name" from MX hosts the same way: a Google Workspace domain shares gmail.com's limits);
3. else the domain is a destination of its own with the default limits.

Each destination has a connection cap, a token bucket for its message rate
(:class:`mtaserver.ratelimit.TokenBucket`, monotonic clock, injected), a suspension
deadline (wall clock) and a rate factor that reactive rules halve and time restores. The
shaper never sleeps and never does I/O: the scheduler asks, the shaper answers with a permit
or with how long to wait.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mtaserver.clock import Clock
from mtaserver.config.shaping import (
    BOUNCE,
    HALVE_RATE,
    SUSPEND,
    DestinationConfig,
    DestinationLimits,
    ShapingConfig,
    ShapingRule,
)
from mtaserver.model import Disposition, RecipientResult, SmtpReply
from mtaserver.ratelimit import TokenBucket

HALVE_COOLDOWN = 60.0  # one halving per minute at most, however many replies complain
MIN_FACTOR = 1.0 / 64.0
RATE_WINDOW = 60  # seconds of history used to estimate the rate of an unlimited destination
BLOCKED = math.inf  # "wait until a connection is released"
ASSIGNED_LIMIT = 100_000  # domains whose MX-based destination is remembered


def default_burst(rate: float) -> float:
    return max(1.0, rate / 10.0)


@dataclass
class _State:
    limits: DestinationLimits
    active: int = 0
    bucket: TokenBucket | None = None
    suspended_until: float = 0.0  # wall clock
    suspended_by: str = ""
    factor: float = 1.0
    factor_changed: float = -math.inf  # monotonic
    factor_duration: float = 0.0
    baseline: float | None = None  # rate the factor applies to when no max_rate is set
    conn_failures: int = 0
    dead_level: int = 0
    recent: deque[list[int]] = field(default_factory=deque)  # [second, permits]


@dataclass(frozen=True, slots=True)
class Reaction:
    """What the shaper concluded from one attempt's replies."""

    suspended_until: float | None = None  # wall time, set when this attempt suspended
    overrides: tuple[tuple[int, Disposition], ...] = ()  # idx → new disposition
    rules: tuple[str, ...] = ()  # names of the rules that fired (for logs and events)
    dead: bool = False  # the dead-destination rule fired


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    rule: ShapingRule
    text: re.Pattern[str] | None

    def matches(self, destination: str, reply: SmtpReply) -> bool:
        r = self.rule
        if r.destinations and destination not in r.destinations:
            return False
        if r.codes and reply.code not in r.codes:
            return False
        if r.enhanced and not (
            reply.enhanced and any(reply.enhanced.startswith(p) for p in r.enhanced)
        ):
            return False
        return not (self.text is not None and not self.text.search(reply.text))


def _norm(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _suffix_match(host: str, suffix: str) -> bool:
    return host == suffix or host.endswith("." + suffix)


class Shaper:
    def __init__(
        self,
        config: ShapingConfig,
        clock: Clock,
        *,
        max_connections: int = 200,
        builtin_destinations: Sequence[DestinationConfig] = (),
        builtin_rules: Sequence[ShapingRule] = (),
    ) -> None:
        """`max_connections` is the global cap ([delivery] max_connections)."""
        self._clock = clock
        self._states: dict[str, _State] = {}
        self._assigned: OrderedDict[str, str] = OrderedDict()  # domain → by its MX hosts
        self._active_total = 0
        self.reconfigure(
            config,
            max_connections=max_connections,
            builtin_destinations=builtin_destinations,
            builtin_rules=builtin_rules,
        )

    def reconfigure(
        self,
        config: ShapingConfig,
        *,
        max_connections: int,
        builtin_destinations: Sequence[DestinationConfig] = (),
        builtin_rules: Sequence[ShapingRule] = (),
    ) -> None:
        """Take new limits and rules (SIGHUP); counters, buckets and suspensions carry on."""
        self._config = config
        self._max_total = max_connections
        merged: dict[str, DestinationConfig] = {}
        shipped = builtin_destinations if config.builtin else ()
        for dest in (*shipped, *config.destinations):
            name = _norm(dest.name)
            prev = merged.get(name)
            if prev is None:
                merged[name] = DestinationConfig(
                    name=name,
                    limits=dest.limits,
                    domains=tuple(_norm(d) for d in dest.domains),
                    mx_suffixes=tuple(_norm(s).lstrip(".") for s in dest.mx_suffixes),
                )
            else:
                merged[name] = DestinationConfig(
                    name=name,
                    limits=prev.limits.merged(dest.limits),
                    domains=tuple(dict.fromkeys((*prev.domains, *map(_norm, dest.domains)))),
                    mx_suffixes=tuple(
                        dict.fromkeys(
                            (*prev.mx_suffixes, *(_norm(s).lstrip(".") for s in dest.mx_suffixes))
                        )
                    ),
                )
        self._destinations = merged
        self._by_domain: dict[str, str] = {}
        for name, dest in merged.items():
            self._by_domain.setdefault(name, name)
            for d in dest.domains:
                self._by_domain.setdefault(d, name)
        self._suffixes = [(s, name) for name, dest in merged.items() for s in dest.mx_suffixes]
        self._default = config.default
        rules = (*config.rules, *(builtin_rules if config.builtin else ()))
        self._rules = tuple(
            _CompiledRule(r, re.compile(r.text, re.IGNORECASE) if r.text else None) for r in rules
        )
        for name, st in self._states.items():
            st.limits = self.limits(name)

    # -- mapping domains to destinations -------------------------------------------------
    def static_destination(self, domain: str) -> str | None:
        """The destination a domain belongs to by name alone, if any."""
        return self._by_domain.get(_norm(domain))

    def wants_mx(self, domain: str) -> bool:
        """Whether the domain's MX hosts could change its destination."""
        return bool(self._suffixes) and self.static_destination(domain) is None

    def destination(self, domain: str, mx_hosts: Iterable[str] = ()) -> str:
        domain = _norm(domain)
        static = self._by_domain.get(domain)
        if static is not None:
            self._assigned.pop(domain, None)
            return static
        name = domain
        hosts = [_norm(h) for h in mx_hosts]
        if hosts:
            for suffix, dest in self._suffixes:
                if all(_suffix_match(h, suffix) for h in hosts):
                    name = dest
                    break
        if not self._suffixes:
            self._assigned.pop(domain, None)
        else:  # remembered: the answer depended on the MX hosts given
            self._assigned[domain] = name
            self._assigned.move_to_end(domain)
            while len(self._assigned) > ASSIGNED_LIMIT:
                self._assigned.popitem(last=False)
        return name

    def assigned(self, domain: str) -> str:
        """The destination ``domain`` was last mapped to, as the scheduler filed its work:
        a later stage (the delivery agent's connection leases) sees the same one without
        the MX hosts the scheduler looked up (the scheduler caches that answer across a
        reload, so this one does too)."""
        domain = _norm(domain)
        got = self._assigned.get(domain)
        return got if got is not None else self._by_domain.get(domain, domain)

    def limits(self, destination: str) -> DestinationLimits:
        dest = self._destinations.get(destination)
        if dest is None:
            return self._default
        return dest.limits.apply(self._default)

    # -- permits --------------------------------------------------------------------------
    def _state(self, destination: str) -> _State:
        st = self._states.get(destination)
        if st is None:
            st = _State(limits=self.limits(destination))
            self._states[destination] = st
        return st

    def _effective_rate(self, st: _State) -> float | None:
        base = st.limits.max_rate if st.limits.max_rate is not None else st.baseline
        if base is None:
            return None
        return max(base * st.factor, 1.0 / 3600.0)

    def _recover(self, st: _State, mono: float) -> None:
        while st.factor < 1.0 and mono >= st.factor_changed + st.factor_duration:
            st.factor = min(1.0, st.factor * 2.0)
            st.factor_changed += st.factor_duration
        if st.factor >= 1.0 and st.baseline is not None:
            st.baseline = None  # back to "unlimited"
        self._sync_bucket(st, mono)

    def _sync_bucket(self, st: _State, mono: float) -> None:
        rate = self._effective_rate(st)
        if rate is None:
            st.bucket = None
            return
        burst = st.limits.burst if st.limits.burst is not None else default_burst(rate)
        if st.factor < 1.0:
            burst = min(burst, default_burst(rate))
        if st.bucket is None:
            st.bucket = TokenBucket(rate, burst, mono)
        elif st.bucket.rate != rate or st.bucket.burst != max(1.0, burst):
            st.bucket.set_rate(rate, burst, mono)

    def acquire(self, destination: str) -> float | None:
        """Take a connection slot and a rate token for one message, or say how long to wait.

        Returns None when granted (the caller must `release` afterwards), else the number
        of seconds after which asking again may succeed; `BLOCKED` (infinity) means a
        connection slot must be released first.
        """
        st = self._state(destination)
        now = self._clock.now()
        if st.suspended_until > now:
            return st.suspended_until - now
        if st.active >= st.limits.max_connections:
            return BLOCKED
        if self._active_total >= self._max_total:
            return BLOCKED
        mono = self._clock.monotonic()
        self._recover(st, mono)
        if st.bucket is not None:
            wait = st.bucket.wait(mono)
            if wait > 0:
                return wait
            st.bucket.take(mono)
        st.active += 1
        self._active_total += 1
        self._count(st, mono)
        return None

    def release(self, destination: str) -> None:
        st = self._state(destination)
        st.active = max(0, st.active - 1)
        self._active_total = max(0, self._active_total - 1)

    def destinations(self) -> tuple[str, ...]:
        """Destinations the shaper holds state for (seen since start), for metrics."""
        return tuple(self._states)

    def active(self, destination: str | None = None) -> int:
        if destination is None:
            return self._active_total
        st = self._states.get(destination)
        return st.active if st else 0

    def suspended_until(self, destination: str) -> float | None:
        st = self._states.get(destination)
        if st is None or st.suspended_until <= self._clock.now():
            return None
        return st.suspended_until

    def rate(self, destination: str) -> float | None:
        """Current effective message rate (per second), None when unlimited."""
        st = self._state(destination)
        self._recover(st, self._clock.monotonic())
        return self._effective_rate(st)

    def suspend(self, destination: str, until: float, reason: str) -> None:
        st = self._state(destination)
        if until > st.suspended_until:
            st.suspended_until = until
            st.suspended_by = reason

    def _count(self, st: _State, mono: float) -> None:
        sec = int(mono)
        if st.recent and st.recent[-1][0] == sec:
            st.recent[-1][1] += 1
        else:
            st.recent.append([sec, 1])
        while st.recent and st.recent[0][0] <= sec - RATE_WINDOW:
            st.recent.popleft()

    def _observed_rate(self, st: _State, mono: float) -> float:
        sec = int(mono)
        total = sum(n for s, n in st.recent if s > sec - RATE_WINDOW)
        return max(total / RATE_WINDOW, 1.0 / 60.0)

    # -- reacting to replies --------------------------------------------------------------
    def match(self, destination: str, reply: SmtpReply) -> ShapingRule | None:
        for rule in self._rules:
            if rule.matches(destination, reply):
                return rule.rule
        return None

    def observe(
        self,
        destination: str,
        results: Sequence[RecipientResult],
        connection_failed: bool,
    ) -> Reaction:
        """Apply the reactive rules and the dead-destination rule to one attempt."""
        st = self._state(destination)
        now = self._clock.now()
        mono = self._clock.monotonic()
        fired: list[str] = []
        overrides: list[tuple[int, Disposition]] = []
        suspended: float | None = None
        halved = False
        for res in results:
            if res.disposition is Disposition.DELIVERED:
                continue
            rule = self.match(destination, res.reply)
            if rule is None:
                continue
            if rule.name not in fired:
                fired.append(rule.name)
            if rule.action == SUSPEND:
                until = now + rule.duration
                self.suspend(destination, until, rule.name)
                suspended = max(suspended or 0.0, until)
                if res.disposition is Disposition.BOUNCED:
                    overrides.append((res.idx, Disposition.DEFERRED))
            elif rule.action == HALVE_RATE:
                if not halved:
                    halved = True
                    self._halve(st, mono, rule.duration)
            elif rule.action == BOUNCE and res.disposition is not Disposition.BOUNCED:
                overrides.append((res.idx, Disposition.BOUNCED))
        dead = False
        if connection_failed:
            st.conn_failures += 1
            if st.conn_failures >= st.limits.dead_after:
                backoff = min(
                    st.limits.dead_backoff * (2.0**st.dead_level), st.limits.dead_backoff_max
                )
                st.dead_level += 1
                st.conn_failures = 0
                until = now + backoff
                self.suspend(destination, until, "dead-destination")
                suspended = max(suspended or 0.0, until)
                dead = True
                fired.append("dead-destination")
        elif results:
            st.conn_failures = 0
            st.dead_level = 0
        return Reaction(
            suspended_until=suspended,
            overrides=tuple(overrides),
            rules=tuple(fired),
            dead=dead,
        )

    def _halve(self, st: _State, mono: float, duration: float) -> None:
        if mono - st.factor_changed < HALVE_COOLDOWN and st.factor < 1.0:
            st.factor_duration = max(st.factor_duration, duration)
            return
        self._recover(st, mono)
        if st.limits.max_rate is None and st.baseline is None:
            st.baseline = self._observed_rate(st, mono)
        st.factor = max(MIN_FACTOR, st.factor / 2.0)
        st.factor_changed = mono
        st.factor_duration = duration
        self._sync_bucket(st, mono)
