"""The journey owners' values and the steps both backends take the same way: rows as
:class:`TriggerInfo` and :class:`DueStep`, a batch of events sorted into what is stored
plainly and what triggers must see, the "once per contact per window" rule, the checks on
a settle, and the GDPR export's shape.

Each owner (:mod:`mtaserver.storage.sqlite.journeys`, its PostgreSQL twin) runs its own
statements and hands the rows here, so both answer alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from mtaserver.contacts import iso
from mtaserver.errors import MtaError
from mtaserver.journeys import EventInput, Plan, Trigger, plan, trigger_from_json
from mtaserver.storage.sqlite.contacts import Contact

STATES: Final = ("pending", "fired", "cancelled", "skipped")
# The contact's columns a due step's row ends with (alias ``c``), in Contact's order.
CONTACT_COLUMNS: Final = (
    "c.id, c.owner, c.address, c.attributes, c.consent_status, c.consent_source, "
    "c.consent_at, c.consent_ip, c.created_at, c.updated_at"
)

Row = Sequence[Any]  # a row of a statement's answer (sqlite3 tuple or asyncpg Record)


class StepGone(MtaError):
    """A step to settle is no longer pending (cancelled meanwhile): nothing is stored."""


@dataclass(frozen=True, slots=True)
class TriggerInfo:
    id: int
    owner: str
    trigger: Trigger
    created_at: float
    updated_at: float

    def as_json(self) -> dict[str, object]:
        return self.trigger.as_json() | {
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class Recorded:
    """What one batch of events did."""

    stored: int
    started: int  # sequences started
    cancelled: int  # pending steps cancelled
    unknown: tuple[str, ...]  # addresses with no contact of the owner (those not stored)

    def as_json(self) -> dict[str, object]:
        return {"stored": self.stored, "started": self.started, "cancelled": self.cancelled,
                "unknown_contacts": list(self.unknown)}  # fmt: skip


@dataclass(frozen=True, slots=True)
class DueStep:
    """A pending step whose time has come, with everything its message needs."""

    id: int
    step: int
    due_at: float
    trigger_id: int
    trigger: Trigger
    contact: Contact
    event_name: str | None
    event_properties: dict[str, object]
    event_at: float | None


@dataclass(frozen=True, slots=True)
class Settle:
    """How a due step ends: ``fired`` (with its queue id), ``skipped`` or ``cancelled``."""

    step_id: int
    state: str
    queue_id: str | None = None
    reason: str | None = None


def trigger_info(row: Row) -> TriggerInfo:
    """A ``(id, owner, definition, created_at, updated_at)`` row of ``triggers``."""
    rid, owner, definition, created, updated = row
    t = trigger_from_json(json.loads(str(definition)))
    return TriggerInfo(int(str(rid)), str(owner), t, float(str(created)), float(str(updated)))


def due_step(r: Row) -> DueStep:
    """A row of the due statement: the step ``(id, step, due_at)``, its trigger's
    :func:`trigger_info` columns, its event ``(name, properties, occurred_at)``, then the
    contact's :data:`CONTACT_COLUMNS`."""
    info = trigger_info((r[3], r[4], r[5], r[6], r[7]))
    props = json.loads(r[9]) if r[9] is not None else {}
    return DueStep(
        id=int(r[0]), step=int(r[1]), due_at=float(r[2]), trigger_id=info.id,
        trigger=info.trigger, contact=Contact(*tuple(r)[11:]),
        event_name=r[8], event_properties=props if isinstance(props, dict) else {},
        event_at=None if r[10] is None else float(r[10]),
    )  # fmt: skip


class Evaluation:
    """One batch's trigger evaluation as both owners' evaluators keep it inside their
    write: the owner's enabled triggers, the sequences started and the steps cancelled so
    far, and each (trigger, contact)'s last start as read or made in this batch."""

    def __init__(self, triggers: list[TriggerInfo], now: float) -> None:
        self.triggers = triggers
        self.defs = [t.trigger for t in triggers]
        self.now = now
        self.started = 0
        self.cancelled = 0
        self._last: dict[tuple[int, int], float | None] = {}

    def plan(self, e: EventInput) -> Plan:
        """What event ``e`` starts and cancels among the triggers."""
        return plan(self.defs, e.name, json.loads(e.properties), e.occurred_at)


def started_within(last: float | None, once_per: float | None, at: float) -> bool:
    """Whether a contact that last started a trigger at ``last`` may not start it again at
    ``at``: at most once per ``once_per`` seconds, or ever without a window."""
    return last is not None and (once_per is None or abs(at - last) < once_per)


@dataclass(frozen=True, slots=True)
class SortedEvents:
    """A batch of events by what storing them takes."""

    stored: int
    unknown: tuple[str, ...]  # addresses with no contact of the owner, first seen first
    watched: list[tuple[int, EventInput]] = field(default_factory=list)  # (contact, event)
    # (contact_id, name, properties, occurred_at, received_at): no trigger cares, one insert
    plain: list[tuple[int, str, str, float, float]] = field(default_factory=list)


def sort_events(
    events: Iterable[EventInput], ids: Mapping[str, int], triggers: Sequence[Trigger], now: float
) -> SortedEvents:
    """Split ``events`` (of the owner whose contacts ``ids`` maps) into those an enabled
    trigger starts or cancels on — stored one by one and evaluated in order — and the rest,
    stored in one statement after them."""
    wanted = {t.event for t in triggers} | {c for t in triggers for c in t.cancel}
    stored = 0
    unknown: dict[str, None] = {}
    watched: list[tuple[int, EventInput]] = []
    plain: list[tuple[int, str, str, float, float]] = []
    for e in events:
        cid = ids.get(e.address)
        if cid is None:
            unknown[e.address] = None
            continue
        stored += 1
        if e.name in wanted:
            watched.append((cid, e))
        else:
            plain.append((cid, e.name, e.properties, e.occurred_at, now))
    return SortedEvents(stored, tuple(unknown), watched, plain)


def check_settles(settles: Iterable[Settle]) -> None:
    """ValueError for a settle that names no end state (fired, cancelled, skipped)."""
    for s in settles:
        if s.state not in STATES[1:]:
            raise ValueError(f"settle state {s.state!r}")


def step_counts(rows: Iterable[Row]) -> dict[int, dict[str, int]]:
    """``(step, state, n)`` rows as: per step index, how many steps are in each state."""
    out: dict[int, dict[str, int]] = {}
    for step, state, n in rows:
        out.setdefault(int(step), dict.fromkeys(STATES, 0))[str(state)] = int(n)
    return out


def export_doc(events: Iterable[Row], steps: Iterable[Row]) -> dict[str, object]:
    """A contact's ``(name, properties, occurred_at, received_at)`` event rows and
    ``(trigger, step, state, due_at, queue_id, reason)`` step rows as the GDPR export
    shows them."""
    return {
        "events": [{"event": n, "properties": json.loads(p), "occurred_at": iso(o),
                    "received_at": iso(r)} for n, p, o, r in events],
        "trigger_steps": [{"trigger": t, "step": n, "state": st, "due_at": iso(d),
                           "queue_id": q, "reason": why} for t, n, st, d, q, why in steps],
    }  # fmt: skip
