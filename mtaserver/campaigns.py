"""Campaign definitions and their life cycle, as pure checks shared by the CLI and the API.

The store keeps a campaign's status; this module decides what an operator's action turns
it into, so ``mtaserver campaigns start`` and ``POST /v1/campaigns/{name}/start`` cannot
disagree. ``start`` schedules a draft (its first fire: ``send_at``, now, or the cron
expression's next fire in its zone); ``pause`` stops a scheduled or running campaign (the
feeder takes no more batches); ``resume`` puts it back where it was; ``cancel`` ends it for
good. ``done``, ``cancelled`` and ``failed`` (the feeder could not start a run; the reason is
stored) take no action.

A *local-time* campaign (``schedule = 'local'``) sends at a wall-clock time in each
contact's own zone (the ``timezone`` attribute, an IANA name; missing or unknown: the
campaign's ``tz``): once at ``local_at``, or at each fire of its cron expression. A run
stands for one wall time ``W``; it starts (snapshots) when the first zone on Earth reaches
``W`` (UTC+14, :data:`EARLIEST`), and each row is due at ``W`` in its contact's zone
(:class:`LocalDue`), so ``fire_at`` alone says which wall time a run is for.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Final
from zoneinfo import ZoneInfo

from mtaserver.contacts import ContactConflict, ContactError, check_list_name, normalize_address
from mtaserver.cron import local_instant, next_fire, parse, zone

ACTIONS: Final = ("start", "pause", "resume", "cancel")
NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_FROM: Final = {
    "start": ("draft",),
    "pause": ("scheduled", "running"),
    "resume": ("paused",),
    "cancel": ("draft", "scheduled", "running", "paused"),
}
# The statuses each status may be entered from by an operator's action: the store's
# conditional update (compare-and-set), so a racing pause and finish cannot both win.
PRIOR: Final[dict[str, tuple[str, ...]]] = {
    "scheduled": ("draft", "paused"),
    "running": ("paused",),
    "paused": ("scheduled", "running"),
    "done": ("paused",),
    "cancelled": _FROM["cancel"],
    "failed": ("scheduled", "running"),
}
EARLIEST: Final = ZoneInfo("Etc/GMT-14")  # UTC+14 (Kiribati): the first to reach a wall time
TZ_ATTRIBUTE: Final = "timezone"  # the contact attribute a local-time campaign reads
_WALL: Final = "%Y-%m-%dT%H:%M"


class CampaignStateError(ContactConflict):
    """The action does not apply to the campaign's status (answered 409)."""


@dataclass(frozen=True, slots=True)
class Definition:
    """A checked campaign definition, as the store's ``create`` takes it."""

    name: str
    template: str
    from_email: str
    from_name: str | None
    audience_kind: str  # list | segment
    audience: str
    schedule: str  # once | cron | local
    send_at: float | None
    cron: str | None
    tz: str | None  # cron: its zone; local: the fallback for contacts without a valid zone
    local_at: str | None = None  # local, once: the wall time 'YYYY-MM-DDTHH:MM'


def check_name(value: object, field: str = "name") -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise ContactError(
            f"{field}: a campaign name is letters, digits, '_', '.' and '-', up to 64 characters",
            field,
        )
    return value


def parse_when(value: object, field: str = "send_at") -> float:
    """Unix seconds from a number or an ISO 8601 time with an offset (``…Z`` or ``+02:00``)."""
    if isinstance(value, bool):
        raise ContactError(f"{field}: unix seconds or ISO 8601 with an offset", field)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            when = None
        if when is not None and when.tzinfo is not None:
            return when.timestamp()
    raise ContactError(f"{field}: unix seconds or ISO 8601 with an offset, got {value!r}", field)


def parse_local(value: object, day: object = None) -> str:
    """The wall time ``'YYYY-MM-DDTHH:MM'`` of ``local_time`` (``"09:00"`` with ``date``
    ``"2026-12-08"``, or ``"2026-12-08T09:00"``); no offset: it is read in each zone."""
    bad = ContactError(
        "local_time: a wall time without offset, 'HH:MM' with 'date' (YYYY-MM-DD) or "
        f"'YYYY-MM-DDTHH:MM', got {value!r}",
        "local_time",
    )
    if not isinstance(value, str):
        raise bad
    text = value.strip()
    if "T" in text and day is not None:
        raise ContactError("date: not with a local_time that has a date", "date")
    if "T" not in text and not isinstance(day, str):
        raise ContactError("date: 'YYYY-MM-DD' for local_time 'HH:MM'", "date")
    try:
        d = date.fromisoformat(day.strip()) if isinstance(day, str) else None
    except ValueError:
        raise ContactError(f"date: expected YYYY-MM-DD, got {day!r}", "date") from None
    try:
        wall = datetime.fromisoformat(text) if d is None else datetime.combine(
            d, time.fromisoformat(text))  # fmt: skip
    except ValueError:
        raise bad from None
    if wall.tzinfo is not None or wall.second or wall.microsecond:
        raise bad
    return wall.strftime(_WALL)


def _text(value: object, field: str, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 998:
        raise ContactError(f"{field}: expected a non-empty string", field)
    return value.strip()


def definition(
    name: object, template: object, from_email: object, *, list_name: object = None,
    segment: object = None, send_at: object = None, cron: object = None, tz: object = None,
    from_name: object = None, local_time: object = None, date: object = None,
    local: object = False,
) -> Definition:  # fmt: skip
    """Check everything that needs no database; errors name the field to fix.

    ``local_time`` (with ``date``) or ``cron`` with ``local=True`` make a local-time
    campaign; ``tz`` is then the zone of contacts without a valid ``timezone``.
    """
    if (list_name is None) == (segment is None):
        raise ContactError("audience: give either 'list' or 'segment'", "audience")
    if list_name is not None:
        kind, audience = "list", check_list_name(list_name, "list")
    else:
        kind, audience = "segment", str(_text(segment, "segment"))
    if not isinstance(local, bool):
        raise ContactError("local: true or false", "local")
    given = [f for f, v in (("send_at", send_at), ("cron", cron), ("local_time", local_time))
             if v is not None]  # fmt: skip
    if len(given) > 1:
        raise ContactError(f"schedule: give one of 'send_at', 'cron', 'local_time', not "
                           f"{' and '.join(repr(g) for g in given)}", given[-1])  # fmt: skip
    if local and cron is None:
        raise ContactError("local: only with 'cron' (for one send give 'local_time')", "local")
    if date is not None and local_time is None:
        raise ContactError("date: only with 'local_time'", "date")
    if tz is not None and cron is None and local_time is None:
        raise ContactError("tz: only with 'cron' or 'local_time'", "tz")
    cron_text = None if cron is None else str(_text(cron, "cron"))
    if cron_text is not None:
        parse(cron_text)
    local_at = None if local_time is None else parse_local(local_time, date)
    zone_name = None
    if cron_text is not None or local_at is not None:
        zone_name = str(_text(tz or "UTC", "tz"))
        zone(zone_name)
    schedule = "local" if local or local_at else ("cron" if cron_text else "once")
    return Definition(
        check_name(name), str(_text(template, "template")),
        normalize_address(from_email, "from_email"), _text(from_name, "from_name", False),
        kind, audience, schedule, None if send_at is None else parse_when(send_at), cron_text,
        zone_name, local_at,
    )  # fmt: skip


def wall_of(fire_at: float) -> datetime:
    """The naive wall time a local-time run stands for (see the module doc)."""
    return datetime.fromtimestamp(fire_at, UTC).astimezone(EARLIEST).replace(tzinfo=None)


def local_first(local_at: str) -> float:
    """When a local-time run for wall time ``local_at`` starts: UTC+14 reaching it."""
    return local_instant(datetime.strptime(local_at, _WALL), EARLIEST)


@dataclass(slots=True)
class LocalDue:
    """Each contact's send instant for one local-time run: wall time ``wall`` in the zone
    named by its ``timezone`` attribute, or in ``fallback`` when that is missing, not a
    string or not an IANA zone. DST by zoneinfo with the cron fixed-time rules: a wall time
    in the spring gap is the moment the clocks jump, a repeated one its first pass. One
    computation per distinct zone name (a million contacts have a few hundred)."""

    wall: datetime
    fallback: ZoneInfo
    _cache: dict[str | None, float] = field(default_factory=dict)

    def __call__(self, tz_name: object) -> float:
        key = tz_name if isinstance(tz_name, str) and 0 < len(tz_name) <= 64 else None
        if key in self._cache:
            return self._cache[key]
        tz = self.fallback
        if key is not None:
            with contextlib.suppress(ValueError, OSError):  # unknown: the fallback
                tz = zone(key)
        due = self._cache[key] = local_instant(self.wall, tz)
        return due


def transition(
    action: str, name: str, status: str, *, schedule: str, send_at: float | None,
    cron: str | None, tz: str | None, next_run_at: float | None, paused_run: bool, now: float,
    local_at: str | None = None,
) -> tuple[str, float | None]:  # fmt: skip
    """The ``(status, next_run_at)`` that ``action`` gives; CampaignStateError if none."""
    if action not in _FROM:
        raise ContactError(f"action: one of {', '.join(ACTIONS)}", "action")
    if status not in _FROM[action]:
        allowed = " or ".join(_FROM[action])
        raise CampaignStateError(
            f"campaign {name!r} is {status}; {action} needs it {allowed}", "status"
        )
    if action == "start":
        if schedule == "local":
            if local_at:
                return "scheduled", local_first(local_at)
            return "scheduled", next_fire(parse(cron or ""), now, EARLIEST)
        if schedule == "cron" and cron:
            return "scheduled", next_fire(parse(cron), now, zone(tz or "UTC"))
        return "scheduled", send_at if send_at is not None else now
    if action == "pause":
        return "paused", next_run_at
    if action == "resume":
        if paused_run:
            return "running", next_run_at
        # no run to continue and no fire left: the run finished as it was being paused
        return ("scheduled" if next_run_at is not None else "done"), next_run_at
    return "cancelled", None
