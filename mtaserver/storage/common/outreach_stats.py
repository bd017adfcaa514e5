"""The per-campaign and per-trigger-step reports (what was queued, what became of it) and
the steps from the rows of either backend's statements to them.

What the numbers mean is :mod:`mtaserver.storage.sqlite.outreach_stats`'s docstring; both
owners (SQLite, PostgreSQL) run their own statements and build their answers here, so a
report reads the same on either backend.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Row = Sequence[Any]  # a row of a statement's answer (sqlite3 tuple or asyncpg Record)


@dataclass(frozen=True, slots=True)
class Engagement:
    """Opens or clicks: messages (unique) and hits, by people and by machines."""

    unique_human: int = 0
    unique_machine: int = 0
    human: int = 0
    machine: int = 0

    def plus(self, o: Engagement) -> Engagement:
        return Engagement(self.unique_human + o.unique_human,
                          self.unique_machine + o.unique_machine,
                          self.human + o.human, self.machine + o.machine)  # fmt: skip


Counts = tuple[tuple[str, int], ...]  # (name, n), sorted by name


def merge_counts(*parts: Iterable[tuple[str, int]]) -> Counts:
    out: dict[str, int] = {}
    for part in parts:
        for k, n in part:
            out[k] = out.get(k, 0) + n
    return tuple(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class SendStats:
    """What became of the messages one run, one step, or all of them queued."""

    queued: int = 0
    suppressed: int = 0
    delivered: int = 0
    deferred: int = 0  # messages deferred at least once (they may have been delivered since)
    bounce_kinds: Counts = ()  # hard, soft
    bounce_categories: Counts = ()  # classify.CATEGORIES
    bounce_reasons: Counts = ()  # classify.REASONS
    opens: Engagement = field(default_factory=Engagement)
    clicks: Engagement = field(default_factory=Engagement)
    unsubscribed: int = 0
    complained: int = 0

    @property
    def sent(self) -> int:
        """Messages handed to delivery (queued, not stored suppressed)."""
        return self.queued - self.suppressed

    @property
    def bounced(self) -> int:
        return sum(n for _, n in self.bounce_kinds)

    def plus(self, o: SendStats) -> SendStats:
        return SendStats(
            self.queued + o.queued, self.suppressed + o.suppressed,
            self.delivered + o.delivered, self.deferred + o.deferred,
            merge_counts(self.bounce_kinds, o.bounce_kinds),
            merge_counts(self.bounce_categories, o.bounce_categories),
            merge_counts(self.bounce_reasons, o.bounce_reasons),
            self.opens.plus(o.opens), self.clicks.plus(o.clicks),
            self.unsubscribed + o.unsubscribed, self.complained + o.complained,
        )  # fmt: skip

    def rates(self) -> dict[str, float | None]:
        def ratio(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        d = self.delivered
        return {
            "delivery_rate": ratio(d, self.sent),
            "bounce_rate": ratio(self.bounced, self.sent),
            "open_rate": ratio(self.opens.unique_human, d),
            "click_rate": ratio(self.clicks.unique_human, d),
            "click_to_open_rate": ratio(self.clicks.unique_human, self.opens.unique_human),
            "unsubscribe_rate": ratio(self.unsubscribed, d),
            "complaint_rate": ratio(self.complained, d),
        }

    def as_json(self) -> dict[str, Any]:
        kinds = dict(self.bounce_kinds)
        return {
            "queued": self.queued,
            "suppressed": self.suppressed,
            "sent": self.sent,
            "delivered": self.delivered,
            "deferred": self.deferred,
            "bounced": {
                "total": self.bounced,
                "hard": kinds.get("hard", 0),
                "soft": kinds.get("soft", 0),
                "by_category": dict(self.bounce_categories),
                "by_reason": dict(self.bounce_reasons),
            },
            "opened": _engagement(self.opens),
            "clicked": _engagement(self.clicks),
            "unsubscribed": self.unsubscribed,
            "complained": self.complained,
            "rates": self.rates(),
        }


def _engagement(e: Engagement) -> dict[str, int]:
    return {"unique_human": e.unique_human, "unique_machine": e.unique_machine,
            "human": e.human, "machine": e.machine}  # fmt: skip


@dataclass(frozen=True, slots=True)
class RunStats:
    """One run of a campaign: its snapshot, what was skipped and why, and the sends."""

    run: int
    fire_at: float
    status: str
    audience: int
    pending: int
    cancelled: int  # rows the run's cancel (or failure) took before they were fed
    skipped: Counts
    stats: SendStats

    def as_json(self) -> dict[str, Any]:
        return {"run": self.run, "fire_at": self.fire_at, "status": self.status,
                "audience": self.audience, "pending": self.pending,
                "cancelled": self.cancelled,
                "skipped": dict(self.skipped)} | self.stats.as_json()  # fmt: skip


@dataclass(frozen=True, slots=True)
class StepStats:
    """One step of a trigger: its rows by state (skipped by reason) and the sends."""

    step: int
    template: str | None  # None: the step was removed from the trigger since
    pending: int
    cancelled: int
    skipped: Counts
    stats: SendStats

    def as_json(self) -> dict[str, Any]:
        return {"step": self.step, "template": self.template, "pending": self.pending,
                "cancelled": self.cancelled,
                "skipped": dict(self.skipped)} | self.stats.as_json()  # fmt: skip


@dataclass(frozen=True, slots=True)
class CampaignReport:
    owner: str
    name: str
    status: str
    runs: tuple[RunStats, ...]

    @property
    def total(self) -> SendStats:
        out = SendStats()
        for r in self.runs:
            out = out.plus(r.stats)
        return out

    def as_json(self) -> dict[str, Any]:
        skipped = merge_counts(*(r.skipped for r in self.runs))
        head = {"audience": sum(r.audience for r in self.runs),
                "pending": sum(r.pending for r in self.runs),
                "cancelled": sum(r.cancelled for r in self.runs),
                "skipped": dict(skipped)}  # fmt: skip
        return {"campaign": {"user": self.owner, "name": self.name, "status": self.status},
                "total": head | self.total.as_json(),
                "runs": [r.as_json() for r in self.runs]}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TriggerReport:
    owner: str
    name: str
    event: str
    enabled: bool
    steps: tuple[StepStats, ...]

    @property
    def total(self) -> SendStats:
        out = SendStats()
        for s in self.steps:
            out = out.plus(s.stats)
        return out

    def as_json(self) -> dict[str, Any]:
        skipped = merge_counts(*(s.skipped for s in self.steps))
        head = {
            "pending": sum(s.pending for s in self.steps),
            "cancelled": sum(s.cancelled for s in self.steps),
            "skipped": dict(skipped),
        }
        return {"trigger": {"user": self.owner, "name": self.name, "event": self.event,
                            "enabled": self.enabled},
                "total": head | self.total.as_json(),
                "steps": [s.as_json() for s in self.steps]}  # fmt: skip


def send_stats(bounce_rows: Iterable[Row], count_rows: Iterable[Row]) -> dict[int, SendStats]:
    """Each group's (run's, step's) sends from the rows of the BOUNCES statement
    ``(group, kind, category, reason, n)`` and the COUNTS statement ``(group, queued,
    suppressed, delivered, deferred, then the opens, clicks, unsubscribes, complaints)``."""
    kinds: dict[int, list[tuple[str, int]]] = {}
    cats: dict[int, list[tuple[str, int]]] = {}
    reasons: dict[int, list[tuple[str, int]]] = {}
    for grp, kind, category, reason, n in bounce_rows:
        kinds.setdefault(int(grp), []).append((str(kind), int(n)))
        cats.setdefault(int(grp), []).append((str(category), int(n)))
        reasons.setdefault(int(grp), []).append((str(reason), int(n)))
    out: dict[int, SendStats] = {}
    for row in count_rows:
        grp = int(row[0])
        queued, suppressed, delivered, deferred = (int(v) for v in row[1:5])
        ho, mo, uho, umo, hc, mc, uhc, umc, unsub, complaints = (int(v) for v in row[5:])
        out[grp] = SendStats(
            queued, suppressed, delivered, deferred,
            merge_counts(kinds.get(grp, ())), merge_counts(cats.get(grp, ())),
            merge_counts(reasons.get(grp, ())),
            Engagement(uho, umo, ho, mo), Engagement(uhc, umc, hc, mc), unsub, complaints,
        )  # fmt: skip
    return out


def run_stats(rows: Iterable[Row], sends: dict[int, SendStats]) -> tuple[RunStats, ...]:
    """A campaign's runs from the CAMPAIGN_ROWS statement's rows ``(run, fire_at, status,
    audience, state, skip reason, n)`` and the runs' sends."""
    runs: dict[int, tuple[float, str, int]] = {}
    by_state: dict[tuple[int, str], int] = {}
    skipped: dict[int, list[tuple[str, int]]] = {}
    for run, fire_at, status, audience, state, reason, n in rows:
        run, n = int(run), int(n)
        runs[run] = (float(fire_at), str(status), int(audience))
        by_state[(run, state)] = by_state.get((run, state), 0) + n
        if state == "skipped":
            skipped.setdefault(run, []).append((reason or "", n))
    return tuple(
        RunStats(run, f, st, aud, by_state.get((run, "pending"), 0),
                 by_state.get((run, "cancelled"), 0), merge_counts(skipped.get(run, ())),
                 sends.get(run, SendStats()))
        for run, (f, st, aud) in runs.items()
    )  # fmt: skip


def step_templates(definition: str) -> list[str | None]:
    """The template of each step of a stored trigger definition (JSON text), in order;
    a definition that does not parse has no steps."""
    try:
        steps_def: Any = json.loads(definition).get("steps") or []
    except (ValueError, AttributeError):
        steps_def = []
    return [s.get("template") if isinstance(s, dict) else None for s in steps_def]


def step_stats(
    definition: str, rows: Iterable[Row], sends: dict[int, SendStats]
) -> tuple[StepStats, ...]:
    """A trigger's steps from its definition, the TRIGGER_ROWS statement's rows ``(step,
    state, skip reason, n)`` and the steps' sends: every step of the definition, and every
    step that has rows although the definition lost it since."""
    templates = step_templates(definition)
    states: dict[int, dict[str, int]] = {}
    skipped: dict[int, list[tuple[str, int]]] = {}
    for step, state, reason, n in rows:
        by = states.setdefault(int(step), {})
        by[state] = by.get(state, 0) + int(n)
        if state == "skipped":
            skipped.setdefault(int(step), []).append((reason or "", int(n)))
    numbers = sorted(set(range(len(templates))) | set(states) | set(sends))
    return tuple(
        StepStats(i, templates[i] if i < len(templates) else None,
                  states.get(i, {}).get("pending", 0), states.get(i, {}).get("cancelled", 0),
                  merge_counts(skipped.get(i, ())), sends.get(i, SendStats()))
        for i in numbers
    )  # fmt: skip
