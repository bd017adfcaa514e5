"""Triggers as data: on event E (optionally where its properties match), send a sequence.

A trigger is a JSON document, validated here before it is stored::

    {"name": "welcome", "event": "signup",
     "match": {"plan": "pro"},                  # optional: property equals value
     "steps": [{"wait": "0s", "template": "welcome"},
               {"wait": "3d", "template": "tips"}],   # wait: after the previous step
     "cancel": ["purchase"],                    # optional: these events stop what is pending
     "once_per": "30d",                         # optional: at most once per contact per
                                                # window; absent = once per contact, ever
     "from": {"email": "hello@example.com", "name": "Example"},
     "enabled": true}

Pure: no I/O. :func:`plan` answers, for one event and the triggers of its owner, which
sequences start (their steps' due times) and which triggers it cancels; the storage owner
applies that in the event's transaction. Errors name the field to fix.

Events (``POST /v1/events``) are validated here too (:func:`events_input`).
One event is ``{"contact": "a@x", "event": "signup", "properties": {...},
"occurred_at": "2026-12-07T08:00:00Z" | 1796630400}``; a batch is ``{"events": [...]}`` of
at most :data:`MAX_BATCH`. ``occurred_at`` defaults to the time of receipt; it may lie at
most :data:`MAX_FUTURE` ahead (clock skew) and :data:`MAX_AGE` back, because a sequence
is timed from it and a year-old event would start one that is long overdue.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from mtaserver.contacts import ContactError, normalize_address
from mtaserver.errors import MtaError

MAX_STEPS: Final = 20
MAX_WAIT: Final = 366 * 86400.0
MAX_CANCEL: Final = 20
MAX_MATCH: Final = 20
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d{1,7})([smhdw])")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
_FIELDS: Final = ("name", "event", "match", "steps", "cancel", "once_per", "from", "enabled")


class TriggerError(MtaError, ValueError):
    """A trigger or event definition that cannot be used; names the field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Step:
    wait: float  # seconds after the previous step (the first: after the event)
    template: str  # stored template id or name

    def as_json(self) -> dict[str, object]:
        return {"wait": format_duration(self.wait), "template": self.template}


@dataclass(frozen=True, slots=True)
class Trigger:
    name: str
    event: str
    steps: tuple[Step, ...]
    from_email: str
    from_name: str | None = None
    match: tuple[tuple[str, str | int | float | bool | None], ...] = ()
    cancel: tuple[str, ...] = ()
    once_per: float | None = None  # None: once per contact, ever
    enabled: bool = True

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "event": self.event,
            "match": dict(self.match),
            "steps": [s.as_json() for s in self.steps],
            "cancel": list(self.cancel),
            "once_per": None if self.once_per is None else format_duration(self.once_per),
            "from": {"email": self.from_email}
            | ({"name": self.from_name} if self.from_name else {}),
            "enabled": self.enabled,
        }
        return out

    def matches(self, properties: Mapping[str, object]) -> bool:
        return all(k in properties and properties[k] == v for k, v in self.match)

    def due_times(self, start: float) -> tuple[float, ...]:
        """Each step's due time for a sequence that starts at ``start``."""
        out, t = [], start
        for s in self.steps:
            t += s.wait
            out.append(t)
        return tuple(out)


def parse_duration(value: object, field: str) -> float:
    """``0s``, ``90m``, ``1h``, ``3d``, ``2w`` (or a number of seconds) → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
        seconds = float(int(m.group(1)) * _UNITS[m.group(2)])
    else:
        raise TriggerError(f"{field}: a duration like 0s, 30m, 1h, 3d or 2w, got {value!r}", field)
    if not 0 <= seconds <= MAX_WAIT:
        raise TriggerError(f"{field}: from 0s to 366d, got {value!r}", field)
    return seconds


def format_duration(seconds: float) -> str:
    s = int(seconds)
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def check_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise TriggerError(
            f"{field}: 1-100 letters, digits, '.', '_', ':' or '-', starting with a letter "
            f"or digit, got {value!r}",
            field,
        )
    return value


def _steps(value: object) -> tuple[Step, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_STEPS:
        raise TriggerError(f"steps: a list of 1 to {MAX_STEPS} steps", "steps")
    out = []
    for i, s in enumerate(value):
        at = f"steps[{i}]"
        if not isinstance(s, dict) or set(s) - {"wait", "template"}:
            raise TriggerError(f'{at}: an object {{"wait": "1h", "template": "name"}}', at)
        tpl = s.get("template")
        if not isinstance(tpl, str) or not tpl or len(tpl) > 100:
            raise TriggerError(f"{at}.template: the stored template's name or id", at)
        out.append(Step(parse_duration(s.get("wait", "0s"), f"{at}.wait"), tpl))
    return tuple(out)


def _match(value: object) -> tuple[tuple[str, str | int | float | bool | None], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_MATCH:
        raise TriggerError(f"match: an object of at most {MAX_MATCH} property: value", "match")
    out: list[tuple[str, str | int | float | bool | None]] = []
    for k, v in value.items():
        if not isinstance(v, str | int | float | bool) and v is not None:
            raise TriggerError(f"match.{k}: a string, number, boolean or null", f"match.{k}")
        out.append((str(k), v))
    return tuple(sorted(out, key=lambda kv: kv[0]))


def _from(value: object) -> tuple[str, str | None]:
    if isinstance(value, str):
        value = {"email": value}
    if not isinstance(value, dict) or not isinstance(value.get("email"), str):
        raise TriggerError('from: {"email": "you@your-domain", "name": "..."}', "from")
    email = value["email"].strip()
    if "@" not in email or len(email) > 320 or not email.isprintable() or " " in email:
        raise TriggerError(f"from.email: an address, got {email!r}", "from.email")
    name = value.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise TriggerError("from.name: a string of at most 200 characters", "from.name")
    return email, name or None


def trigger_from_json(obj: object, name: str | None = None) -> Trigger:
    """Validate a trigger document; ``name`` (from the URL) wins over the body's."""
    if not isinstance(obj, dict):
        raise TriggerError("trigger: expected a JSON object", "body")
    extra = sorted(set(obj) - set(_FIELDS))
    if extra:
        raise TriggerError(f"{extra[0]}: unknown field (known: {', '.join(_FIELDS)})", extra[0])
    tname = check_name(name if name is not None else obj.get("name"), "name")
    event = check_name(obj.get("event"), "event")
    cancel = obj.get("cancel") or []
    if not isinstance(cancel, list) or len(cancel) > MAX_CANCEL:
        raise TriggerError(f"cancel: a list of at most {MAX_CANCEL} event names", "cancel")
    cancels = tuple(check_name(c, f"cancel[{i}]") for i, c in enumerate(cancel))
    if event in cancels:
        raise TriggerError(f"cancel: {event!r} is the trigger's own event", "cancel")
    once = obj.get("once_per")
    enabled = obj.get("enabled", True)
    if not isinstance(enabled, bool):
        raise TriggerError("enabled: true or false", "enabled")
    email, from_name = _from(obj.get("from"))
    return Trigger(
        name=tname, event=event, steps=_steps(obj.get("steps")), from_email=email,
        from_name=from_name, match=_match(obj.get("match")), cancel=cancels,
        once_per=None if once is None else parse_duration(once, "once_per"), enabled=enabled,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Start:
    """A sequence to start: trigger ``index`` into the list given to :func:`plan`."""

    index: int
    due: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    starts: tuple[Start, ...]
    cancels: tuple[int, ...]  # indexes of triggers whose pending steps this event stops


def plan(
    triggers: Sequence[Trigger], event: str, properties: Mapping[str, object], at: float
) -> Plan:
    """What one event does to ``triggers`` (the owner's, enabled or not)."""
    starts, cancels = [], []
    for i, t in enumerate(triggers):
        if not t.enabled:
            continue
        if event in t.cancel:
            cancels.append(i)
        if t.event == event and t.matches(properties):
            starts.append(Start(i, t.due_times(at)))
    return Plan(tuple(starts), tuple(cancels))


# -- events -------------------------------------------------------------------------------
MAX_BATCH: Final = 1000
MAX_PROPERTIES: Final = 16 * 1024  # bytes of one event's properties as JSON
MAX_FUTURE: Final = 300.0
MAX_AGE: Final = 30 * 86400.0
_EVENT_FIELDS: Final = ("contact", "event", "properties", "occurred_at")


@dataclass(frozen=True, slots=True)
class EventInput:
    address: str
    name: str
    properties: str  # a JSON object as text
    occurred_at: float


def _time(value: object, now: float, field: str) -> float:
    if value is None:
        return now
    if isinstance(value, int | float) and not isinstance(value, bool):
        t = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise TriggerError(f"{field}: ISO 8601 or Unix seconds, got {value!r}", field) from None
        if parsed.tzinfo is None:
            raise TriggerError(f"{field}: give a time zone (Z or +hh:mm)", field)
        t = parsed.timestamp()
    else:
        raise TriggerError(f"{field}: ISO 8601 or Unix seconds", field)
    if t > now + MAX_FUTURE:
        raise TriggerError(f"{field}: more than {int(MAX_FUTURE)} s in the future", field)
    if t < now - MAX_AGE:
        raise TriggerError(f"{field}: more than 30 days ago", field)
    return t


def event_input(obj: object, now: float, where: str = "") -> EventInput:
    if not isinstance(obj, dict):
        raise TriggerError(f"{where or 'body'}: expected a JSON object", where or "body")
    extra = sorted(set(obj) - set(_EVENT_FIELDS))
    if extra:
        raise TriggerError(f"{where}{extra[0]}: unknown field (known: {', '.join(_EVENT_FIELDS)})",
                           f"{where}{extra[0]}")  # fmt: skip
    try:
        address = normalize_address(obj.get("contact"), f"{where}contact")
    except ContactError as exc:
        raise TriggerError(str(exc), f"{where}contact") from None
    name = check_name(obj.get("event"), f"{where}event")
    props = obj.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise TriggerError(f"{where}properties: a JSON object", f"{where}properties")
    text = json.dumps(props, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode()) > MAX_PROPERTIES:
        raise TriggerError(f"{where}properties: more than {MAX_PROPERTIES} bytes as JSON",
                           f"{where}properties")  # fmt: skip
    return EventInput(
        address, name, text, _time(obj.get("occurred_at"), now, f"{where}occurred_at")
    )


def events_input(body: object, now: float) -> list[EventInput]:
    """One event or ``{"events": [...]}``; raises ``TriggerError`` naming the first bad one."""
    if isinstance(body, dict) and "events" in body:
        items = body["events"]
        if set(body) != {"events"}:
            raise TriggerError("body: only 'events' next to a batch", "body")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            raise TriggerError(f"events: a list of 1 to {MAX_BATCH} events", "events")
        return [event_input(e, now, f"events[{i}].") for i, e in enumerate(items)]
    return [event_input(body, now)]
