"""RFC 4865 future release: ``HOLDFOR``/``HOLDUNTIL`` on MAIL, parsed and bounded (pure).

aiosmtpd answers any MAIL parameter it does not know with ``555`` before a handler sees
it, so the session takes the hold parameters out of the argument first
(:func:`split_hold_params`) and the handler judges them (:func:`parse_hold`). A hold
becomes the message's ``not_before``: the queue keeps it until then, as it does for the
HTTP API's ``send_at``.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass

HOLD_PARAMS = frozenset({"HOLDFOR", "HOLDUNTIL"})
MAX_INTERVAL = 999_999_999  # future-release-integer = 1*9DIGIT

_INTEGER = re.compile(r"^[0-9]{1,9}$")
_DATE_TIME = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))$"
)
_FROM = re.compile(r"^\s*FROM:\s*", re.I)


class HoldError(ValueError):
    """A hold parameter the server refuses; ``reply`` is the whole SMTP reply line."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Hold:
    """What the client asked for: hold ``seconds`` after acceptance, or ``until`` a time."""

    seconds: int | None = None
    until: float | None = None  # unix time

    def release_at(self, received_at: float) -> float | None:
        """The ``not_before`` to queue with; None when the time has already come."""
        at = received_at + self.seconds if self.seconds is not None else self.until
        return at if at is not None and at > received_at else None


def ehlo_keyword(max_interval: float, now: float) -> str:
    """``FUTURERELEASE <max-future-release-interval> <max-future-release-date-time>``."""
    seconds = int(max_interval)
    latest = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(now) + seconds))
    return f"FUTURERELEASE {seconds} {latest}"


def split_hold_params(arg: str) -> tuple[str, tuple[tuple[str, str | None], ...]]:
    """``arg`` of a MAIL command without its hold parameters, and those parameters.

    The reverse-path is skipped with its quoting respected, so only real parameters are
    taken. An argument whose path cannot be found is returned whole, for aiosmtpd to
    answer with its syntax error.
    """
    m = _FROM.match(arg)
    if m is None:
        return arg, ()
    end = _path_end(arg, m.end())
    if end is None:
        return arg, ()
    keep: list[str] = []
    hold: list[tuple[str, str | None]] = []
    for param in arg[end:].split():
        name, eq, value = param.partition("=")
        if name.upper() in HOLD_PARAMS:
            hold.append((name.upper(), value if eq else None))
        else:
            keep.append(param)
    if not hold:
        return arg, ()
    return " ".join([arg[:end], *keep]), tuple(hold)


def _path_end(arg: str, start: int) -> int | None:
    if start >= len(arg):
        return None
    if arg[start] != "<":
        space = re.search(r"\s", arg[start:])
        return len(arg) if space is None else start + space.start()
    i, quoted = start + 1, False
    while i < len(arg):
        c = arg[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i + 1
        i += 1
    return None


def parse_hold(
    params: tuple[tuple[str, str | None], ...], *, max_interval: float, now: float
) -> Hold:
    """The hold asked for; raises HoldError with a 501 (syntax) or 554 (too far) reply."""
    if len(params) > 1:
        raise HoldError("501 5.5.4 Use only one of HOLDFOR and HOLDUNTIL, once")
    name, value = params[0]
    if name == "HOLDFOR":
        if value is None or not _INTEGER.match(value):
            raise HoldError("501 5.5.4 HOLDFOR takes a number of seconds (1 to 9 digits)")
        seconds = int(value)
        if seconds > max_interval:
            raise HoldError(
                f"554 5.3.4 HOLDFOR={seconds} is beyond the maximum future release "
                f"interval of {int(max_interval)} seconds"
            )
        return Hold(seconds=seconds)
    until = parse_date_time(value or "")
    if until is None:
        raise HoldError(
            "501 5.5.4 HOLDUNTIL takes an RFC 3339 date-time, like 2030-01-31T08:00:00Z"
        )
    if until - now > max_interval:
        raise HoldError(
            f"554 5.3.4 HOLDUNTIL={value} is beyond the maximum future release date-time"
        )
    return Hold(until=until)


def parse_date_time(value: str) -> float | None:
    """RFC 3339 ``date-time`` → unix time, or None when it is not one."""
    m = _DATE_TIME.match(value)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if not (1 <= month <= 12 and 1 <= day <= _days(year, month)):
        return None
    if hour > 23 or minute > 59 or second > 60:  # 60: a leap second
        return None
    offset = 0
    if m.group(9):
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            return None
        offset = (oh * 3600 + om * 60) * (1 if m.group(9) == "+" else -1)
    frac = float(m.group(7)) if m.group(7) else 0.0
    stamp = calendar.timegm((year, month, day, hour, minute, min(second, 59), 0, 0, 0))
    return stamp + (1 if second == 60 else 0) + frac - offset


def _days(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1] if year >= 1 else 0
