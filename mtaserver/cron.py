"""Five-field cron expressions and their next fire time in an IANA time zone.

Pure: no I/O, no clock. ``parse("0 9 * * MON")`` gives a :class:`Cron`;
``next_fire(cron, after, zone)`` the first instant (unix seconds) strictly after ``after``
at which it fires. Fields are minute, hour, day of month, month, day of week, each ``*``,
a number, a name (``JAN``-``DEC``, ``SUN``-``SAT``; day 0 and 7 are Sunday), a range
``a-b``, a step ``*/n`` / ``a-b/n`` / ``a/n``, or a comma list of those. The macros
``@yearly @annually @monthly @weekly @daily @midnight @hourly`` stand for their usual
expressions. As in Vixie cron, when both day of month and day of week are restricted (neither
starts with ``*``) a day matches if *either* does.

Daylight saving time follows Vixie (ISC) cron, whose rule is the one operators expect:

* A *fixed-time* job (neither minute nor hour starts with ``*``, e.g. ``30 2 * * *``) whose
  local time does not exist that day (spring forward) fires **once, at the first instant after
  the gap** (03:00 local in Europe/Berlin); one whose local time happens twice (fall back)
  fires **once, at the first occurrence**.
* A *wildcard* job (minute or hour starts with ``*``, e.g. ``*/15 * * * *``) runs by the wall
  clock as it passes: the skipped hour has no fires, the repeated hour fires in both passes.

systemd's ``OnCalendar=`` differs for the gap (it shifts the time by the DST offset, 02:30 →
03:30); Vixie's rule is chosen because a missed fixed-time job then runs as soon as possible.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mtaserver.errors import MtaError

MACROS: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# (name, low, high, names mapped to numbers)
_FIELDS: Final[tuple[tuple[str, int, int, dict[str, int]], ...]] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {n: i + 1 for i, n in enumerate(_MONTHS)}),
    ("day-of-week", 0, 7, {n: i for i, n in enumerate(_DAYS)}),
)
_FEB_MAX = 29
_MAX_SHIFT = timedelta(hours=3)  # more than any UTC-offset change of a real zone
_SEARCH_YEARS = 9  # Feb 29 recurs within 8 years (2096 → 2104)


class CronError(MtaError, ValueError):
    """A bad cron expression or time zone; the message names the field to fix."""


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed expression. ``weekdays`` uses 0 = Sunday … 6 = Saturday."""

    source: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    dom_star: bool  # the day-of-month field starts with '*'
    dow_star: bool
    wildcard: bool  # minute or hour starts with '*': runs by the wall clock (see module doc)

    def day_matches(self, year: int, month: int, day: int) -> bool:
        dom = day in self.days
        dow = (calendar.weekday(year, month, day) + 1) % 7 in self.weekdays
        if self.dom_star or self.dow_star:
            return dom and dow
        return dom or dow

    def matches(self, local: datetime) -> bool:
        """Whether the wall-clock minute ``local`` (naive or aware) is one of the expression's."""
        return (
            local.minute in self.minutes
            and local.hour in self.hours
            and local.month in self.months
            and self.day_matches(local.year, local.month, local.day)
        )


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` or a CronError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"time zone: unknown IANA zone {name!r} (e.g. 'Europe/Berlin')") from None


def parse(expr: str) -> Cron:
    """Parse a five-field expression or a macro; CronError names the bad field."""
    text = " ".join(expr.split())
    body = MACROS.get(text.lower(), text)
    if body.startswith("@"):
        raise CronError(f"cron {expr!r}: unknown macro (known: {', '.join(MACROS)})")
    parts = body.split(" ")
    if len(parts) != 5:
        raise CronError(
            f"cron {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(parts)}"
        )
    sets = [_field(expr, p, *spec) for p, spec in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    cron = Cron(text, sets[0], sets[1], sets[2], sets[3], weekdays,
                parts[2].startswith("*"), parts[4].startswith("*"),
                parts[0].startswith("*") or parts[1].startswith("*"))  # fmt: skip
    if not cron.dom_star and cron.dow_star:
        limit = {m: calendar.monthrange(2000, m)[1] for m in range(1, 13)}
        limit[2] = _FEB_MAX
        if not any(d <= limit[m] for m in cron.months for d in cron.days):
            raise CronError(f"cron {expr!r}: day-of-month never occurs in the given months")
    return cron


def _field(
    expr: str, text: str, name: str, low: int, high: int, names: dict[str, int]
) -> frozenset[int]:
    def number(s: str) -> int:
        value = names.get(s.upper())
        if value is None:
            if not s.isdigit():
                raise CronError(f"cron {expr!r}: {name}: {s!r} is not a number or name")
            value = int(s)
        if not low <= value <= high:
            raise CronError(f"cron {expr!r}: {name}: {value} is outside {low}-{high}")
        return value

    out: set[int] = set()
    for item in text.split(","):
        rng, slash, step_s = item.partition("/")
        step = 1
        if slash:
            if not step_s.isdigit() or int(step_s) == 0:
                raise CronError(f"cron {expr!r}: {name}: bad step {step_s!r}")
            step = int(step_s)
        if rng == "*":
            a, b = low, high
        elif "-" in rng:
            sa, _, sb = rng.partition("-")
            a, b = number(sa), number(sb)
            if a > b:
                raise CronError(f"cron {expr!r}: {name}: range {rng!r} runs backwards")
        else:
            a = number(rng)
            b = high if slash else a
        out.update(range(a, b + 1, step))
    return frozenset(out)


def next_fire(cron: Cron, after: float, tz: ZoneInfo) -> float:
    """The first instant strictly after ``after`` (unix seconds) at which ``cron`` fires in
    ``tz``, with the daylight-saving rules of the module docstring."""
    naive = _wall(after, tz).replace(second=0, microsecond=0)
    if not _steady(after, tz):  # a repeated hour's second pass may still be ahead
        naive -= _MAX_SHIFT
    best: float | None = None
    horizon = naive.replace(day=1, year=naive.year + _SEARCH_YEARS)
    while naive < horizon:
        if best is not None and naive > _wall(best, tz) + (
            timedelta(0) if _steady(best, tz) else _MAX_SHIFT
        ):
            break
        found = _next_naive(cron, naive, horizon)
        if found is None:
            break
        for instant in _instants(cron, found, tz):
            if instant > after and (best is None or instant < best):
                best = instant
        naive = found + timedelta(minutes=1)
    if best is None:  # parse() refuses expressions that never fire
        raise CronError(f"cron {cron.source!r}: no fire time within {_SEARCH_YEARS} years")
    return best


def fires_between(cron: Cron, start: float, end: float, tz: ZoneInfo) -> list[float]:
    """Every fire instant in ``(start, end]`` — for tests and previews (bounded by the span)."""
    out: list[float] = []
    t = start
    while (t := next_fire(cron, t, tz)) <= end:
        out.append(t)
    return out


def _steady(instant: float, tz: ZoneInfo) -> bool:
    """No change of UTC offset within ``_MAX_SHIFT`` of ``instant``: wall-clock order and
    instant order agree there."""
    span = _MAX_SHIFT.total_seconds()
    before = datetime.fromtimestamp(instant - span, tz).utcoffset()
    return before == datetime.fromtimestamp(instant + span, tz).utcoffset()


def _wall(instant: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(instant, UTC).astimezone(tz).replace(tzinfo=None)


def _next_naive(cron: Cron, t: datetime, horizon: datetime) -> datetime | None:
    """The first wall-clock minute at or after naive ``t`` that the fields match."""
    while t < horizon:
        if t.month not in cron.months:
            t = datetime(t.year + t.month // 12, t.month % 12 + 1, 1)
        elif not cron.day_matches(t.year, t.month, t.day):
            t = datetime(t.year, t.month, t.day) + timedelta(days=1)
        elif t.hour not in cron.hours:
            t = t.replace(minute=0) + timedelta(hours=1)
        elif t.minute not in cron.minutes:
            t += timedelta(minutes=1)
        else:
            return t
    return None


def _instants(cron: Cron, naive: datetime, tz: ZoneInfo) -> list[float]:
    """The instants at which wall-clock minute ``naive`` fires: one normally; for a gap the
    transition instant (fixed-time jobs) or none (wildcard jobs); for a repeated time the
    first occurrence (fixed) or both (wildcard)."""
    first = naive.replace(tzinfo=tz, fold=0)
    second = naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return [first.timestamp()]
    if _wall(first.timestamp(), tz) == naive:  # exists twice (fall back)
        if cron.wildcard:
            return sorted({first.timestamp(), second.timestamp()})
        return [min(first.timestamp(), second.timestamp())]
    if cron.wildcard:  # in the gap (spring forward)
        return []
    return [_gap_end(naive, tz)]


def _gap_end(naive: datetime, tz: ZoneInfo) -> float:
    """The first instant whose wall-clock time is at or after ``naive`` (which is in a gap):
    the moment the clocks jumped."""
    lo = int(min(naive.replace(tzinfo=tz, fold=f).timestamp() for f in (0, 1)))
    hi = int(max(naive.replace(tzinfo=tz, fold=f).timestamp() for f in (0, 1)))
    while lo < hi:  # invariant: wall(hi) >= naive
        mid = (lo + hi) // 2
        if _wall(mid, tz) >= naive:
            hi = mid
        else:
            lo = mid + 1
    return float(hi)


def local_instant(wall: datetime, tz: ZoneInfo) -> float:
    """The instant of naive wall-clock time ``wall`` in ``tz`` by the fixed-time rules: a
    time in the spring gap is the moment the clocks jump, a repeated one its first pass."""
    return _instants(_FIXED, wall.replace(second=0, microsecond=0), tz)[0]


_FIXED: Final = parse("0 0 * * *")  # any fixed-time job: _instants reads only .wildcard
