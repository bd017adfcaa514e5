"""Campaign definitions and their life cycle, as pure checks shared by the CLI and the API.

The store keeps a campaign's status; this module decides what an operator's action turns
it into, so ``mtaserver campaigns start`` and ``POST /v1/campaigns/{name}/start`` cannot
disagree. ``start`` schedules a draft (its first fire: ``send_at``, now, or the cron
expression's next fire in its zone); ``pause`` stops a scheduled or running campaign (the
feeder takes no more batches); ``resume`` puts it back where it was; ``cancel`` ends it for
good. ``done`` and ``cancelled`` take no action.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from mtaserver.contacts import ContactConflict, ContactError, check_list_name, normalize_address
from mtaserver.cron import next_fire, parse, zone

ACTIONS: Final = ("start", "pause", "resume", "cancel")
NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_FROM: Final = {
    "start": ("draft",),
    "pause": ("scheduled", "running"),
    "resume": ("paused",),
    "cancel": ("draft", "scheduled", "running", "paused"),
}


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
    schedule: str  # once | cron
    send_at: float | None
    cron: str | None
    tz: str | None


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


def _text(value: object, field: str, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 998:
        raise ContactError(f"{field}: expected a non-empty string", field)
    return value.strip()


def definition(
    name: object, template: object, from_email: object, *, list_name: object = None,
    segment: object = None, send_at: object = None, cron: object = None, tz: object = None,
    from_name: object = None,
) -> Definition:  # fmt: skip
    """Check everything that needs no database; errors name the field to fix."""
    if (list_name is None) == (segment is None):
        raise ContactError("audience: give either 'list' or 'segment'", "audience")
    if list_name is not None:
        kind, audience = "list", check_list_name(list_name, "list")
    else:
        kind, audience = "segment", str(_text(segment, "segment"))
    if cron is not None and send_at is not None:
        raise ContactError("schedule: give 'send_at' or 'cron', not both", "cron")
    if tz is not None and cron is None:
        raise ContactError("tz: only with 'cron'", "tz")
    cron_text = None
    if cron is not None:
        cron_text = str(_text(cron, "cron"))
        parse(cron_text)
        zone(str(_text(tz or "UTC", "tz")))
    return Definition(
        check_name(name), str(_text(template, "template")),
        normalize_address(from_email, "from_email"), _text(from_name, "from_name", False),
        kind, audience, "once" if cron_text is None else "cron",
        None if send_at is None else parse_when(send_at), cron_text,
        None if cron_text is None else str(tz or "UTC"),
    )  # fmt: skip


def transition(
    action: str, name: str, status: str, *, schedule: str, send_at: float | None,
    cron: str | None, tz: str | None, next_run_at: float | None, paused_run: bool, now: float,
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
