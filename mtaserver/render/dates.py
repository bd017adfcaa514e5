"""SendGrid's ``formatDate`` helper: moment.js-style tokens over an ISO 8601 timestamp.

``{{formatDate timeStamp "MMMM DD, YYYY h:mm A" "-0800"}}``. Everything is computed from
the value given; the current time is never read.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

_TOKENS: Final = re.compile(
    r"\[[^\]]*\]|YYYY|YY|MMMM|MMM|MM|M|DD|D|dddd|ddd|HH|H|hh|h|mm|m|ss|s|SSS|A|a|ZZ|Z"
)
_OFFSET: Final = re.compile(r"^([+-])(\d{2}):?(\d{2})$")
_MONTHS: Final = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_DAYS: Final = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MAX_FORMAT: Final = 200


def parse_offset(text: str) -> timezone | None:
    m = _OFFSET.match(text.strip())
    if not m:
        return None
    hours, minutes = int(m.group(2)), int(m.group(3))
    if hours > 14 or minutes > 59:
        return None
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if m.group(1) == "-" else delta)


def parse_timestamp(value: object) -> datetime | None:
    """An ISO 8601 string, or a number of milliseconds since the epoch (as JavaScript)."""
    if type(value) is str:
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if type(value) in (int, float):
        try:
            return datetime.fromtimestamp(value / 1000, UTC)  # type: ignore[operator]
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _zone(dt: datetime, colon: bool) -> str:
    off = dt.utcoffset() or timedelta(0)
    sign = "-" if off < timedelta(0) else "+"
    minutes = abs(int(off.total_seconds())) // 60
    sep = ":" if colon else ""
    return f"{sign}{minutes // 60:02d}{sep}{minutes % 60:02d}"


def _token(dt: datetime, tok: str) -> str:
    if tok.startswith("["):
        return tok[1:-1]
    hour12 = dt.hour % 12 or 12
    table = {
        "YYYY": f"{dt.year:04d}",
        "YY": f"{dt.year % 100:02d}",
        "MMMM": _MONTHS[dt.month - 1],
        "MMM": _MONTHS[dt.month - 1][:3],
        "MM": f"{dt.month:02d}",
        "M": str(dt.month),
        "DD": f"{dt.day:02d}",
        "D": str(dt.day),
        "dddd": _DAYS[dt.weekday()],
        "ddd": _DAYS[dt.weekday()][:3],
        "HH": f"{dt.hour:02d}",
        "H": str(dt.hour),
        "hh": f"{hour12:02d}",
        "h": str(hour12),
        "mm": f"{dt.minute:02d}",
        "m": str(dt.minute),
        "ss": f"{dt.second:02d}",
        "s": str(dt.second),
        "SSS": f"{dt.microsecond // 1000:03d}",
        "A": "AM" if dt.hour < 12 else "PM",
        "a": "am" if dt.hour < 12 else "pm",
        "ZZ": _zone(dt, colon=False),
        "Z": _zone(dt, colon=True),
    }
    return table[tok]


def format_date(value: object, fmt: object, offset: object = None) -> str:
    """The formatted date, or "" when the timestamp or the offset cannot be read."""
    dt = parse_timestamp(value)
    if dt is None:
        return ""
    if type(offset) is str and offset:
        zone = parse_offset(offset)
        if zone is None:
            return ""
        dt = dt.astimezone(zone)
    else:
        dt = dt.astimezone(UTC)
    pattern = fmt if type(fmt) is str and fmt else "YYYY-MM-DDTHH:mm:ssZ"
    if len(pattern) > _MAX_FORMAT:
        return ""
    return _TOKENS.sub(lambda m: _token(dt, m.group(0)), pattern)
