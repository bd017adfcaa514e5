"""The campaign owners' values and the steps both backends take the same way: a row of
``campaigns`` as a :class:`Campaign`, a run row as a :class:`Run`, and an operator's action
(:func:`act`) over a store's own conditional writes.

The column lists are the dataclasses' fields, so a row read with :func:`columns`
(:func:`run_columns`) maps onto :class:`Campaign` (:class:`Run`) by construction on
either backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, Protocol

from mtaserver.campaigns import CampaignStateError, transition
from mtaserver.clock import Clock
from mtaserver.contacts import ContactError

BATCH: Final = 500
CANCEL_BATCH: Final = 10_000  # pending rows cancelled per transaction (the writer is shared)
STATUSES: Final = ("draft", "scheduled", "running", "paused", "done", "cancelled", "failed")


class RunStopped(ContactError):
    """The run was paused or cancelled while a batch was being prepared (nothing stored)."""


@dataclass(frozen=True, slots=True)
class Campaign:
    id: int
    owner: str
    name: str
    template: str
    from_email: str
    from_name: str | None
    audience_kind: str  # list | segment
    audience: str
    schedule: str  # once | cron | local
    send_at: float | None
    local_at: str | None
    cron: str | None
    tz: str | None
    status: str
    next_run_at: float | None
    created_at: float
    updated_at: float
    failure: str | None = None  # failed: why


@dataclass(frozen=True, slots=True)
class Run:
    id: int
    campaign_id: int
    fire_at: float
    status: str
    audience: int
    queued: int
    skipped: int


_FIELDS: Final = tuple(f.name for f in fields(Campaign))
_RUN_FIELDS: Final = tuple(f.name for f in fields(Run))


def _names(names: Sequence[str], alias: str) -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + name for name in names)


def columns(alias: str = "") -> str:
    """The ``campaigns`` columns a :class:`Campaign` is read from, in field order
    (``alias.`` before each when given)."""
    return _names(_FIELDS, alias)


def run_columns(alias: str = "") -> str:
    """The ``campaign_runs`` columns a :class:`Run` is read from, in field order."""
    return _names(_RUN_FIELDS, alias)


def as_campaign(row: Sequence[Any]) -> Campaign:
    """A row read with :func:`columns` as its campaign."""
    return Campaign(*row)


def as_run(row: Sequence[Any]) -> Run:
    """A row read with :func:`run_columns` as its run."""
    return Run(*row)


def as_run_and_campaign(row: Sequence[Any]) -> tuple[Run, Campaign]:
    """A row of :func:`run_columns` then :func:`columns`: a run with its campaign."""
    n = len(_RUN_FIELDS)
    return Run(*row[:n]), as_campaign(row[n:])


class _Store(Protocol):
    """The writes and reads :func:`act` needs (each backend's store has them)."""

    async def runs(self, campaign_id: int) -> list[Run]: ...

    async def get(self, owner: str, name: str) -> Campaign | None: ...

    async def set_status(
        self, campaign_id: int, status: str, next_run_at: float | None = None, *,
        expect: Sequence[str] | None = None,
    ) -> bool: ...  # fmt: skip

    async def cancel_rows(self, campaign_id: int | None = None, limit: int = ...) -> int: ...


async def act(store: _Store, clock: Clock, campaign: Campaign, action: str) -> Campaign:
    """An operator's ``action`` (start, pause, resume, cancel) as the CLI and the API do
    it: the rules of :func:`mtaserver.campaigns.transition` on the status read, written
    only if the status is still that one (else CampaignStateError naming the new one);
    a cancel then moves the pending rows to ``cancelled``."""
    c = campaign
    paused = any(x.status == "paused" for x in await store.runs(c.id))
    status, nxt = transition(
        action, c.name, c.status, schedule=c.schedule, send_at=c.send_at, cron=c.cron,
        tz=c.tz, next_run_at=c.next_run_at, paused_run=paused, now=clock.now(),
        local_at=c.local_at,
    )  # fmt: skip
    if not await store.set_status(c.id, status, nxt, expect=(c.status,)):
        now = await store.get(c.owner, c.name)
        raise CampaignStateError(
            f"campaign {c.name!r} changed from {c.status} to "
            f"{now.status if now else 'deleted'} meanwhile; {action} it again if it applies",
            "status",
        )
    if status == "cancelled":
        await store.cancel_rows(c.id)
    found = await store.get(c.owner, c.name)
    return found or c
