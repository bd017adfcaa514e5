"""Triggers, contact events and pending sequence steps: the only writer of ``triggers``,
``contact_events`` and ``journey_steps``.

:meth:`JourneyStore.record_events` stores a batch of events and evaluates the owner's
triggers in the same write: a matching event inserts every step of its sequence (each with
its due time) unless the contact already started that trigger within ``once_per`` (ever,
without one); a cancel event marks what is pending of the triggers it names. The unique key
(trigger, contact, step, window start) makes a step impossible to create twice, even when a
client resends the same event.

:meth:`JourneyStore.due` reads due steps with what their template needs (the contact, the
starting event, the trigger); :func:`settle_op` is the write that marks them fired (with
their queue id), skipped or cancelled, for ``OutreachSender.commit`` to run in the
transaction that queues the messages: a step is marked exactly when its mail is queued.

:func:`export_for` and :func:`erase_for` are for the privacy owner (GDPR export/erase);
they take the caller's connection so they run inside its transaction. The values and
the row-to-answer steps, shared with the PostgreSQL owner, are
:mod:`mtaserver.storage.common.journeys`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence

from mtaserver.clock import Clock, SystemClock
from mtaserver.journeys import EventInput, Trigger
from mtaserver.storage.common.journeys import (
    CONTACT_COLUMNS,
    STATES,
    DueStep,
    Evaluation,
    Recorded,
    Settle,
    StepGone,
    TriggerInfo,
    check_settles,
    due_step,
    export_doc,
    sort_events,
    started_within,
    step_counts,
    trigger_info,
)
from mtaserver.storage.sqlite.db import Database

__all__ = [
    "STATES",
    "DueStep",
    "JourneyStore",
    "Recorded",
    "Settle",
    "StepGone",
    "TriggerInfo",
    "erase_for",
    "export_address",
    "export_for",
    "settle_op",
]


def _contact_ids(conn: sqlite3.Connection, owner: str, addresses: set[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    items = sorted(addresses)
    for i in range(0, len(items), 500):
        chunk = items[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT address, id FROM contacts WHERE owner=? AND address IN ({marks})",
            (owner, *chunk),
        ).fetchall()
        out.update((str(a), int(i)) for a, i in rows)
    return out


class _Evaluator(Evaluation):
    """Applies one batch's trigger plans inside the write (see the module doc)."""

    def __init__(self, conn: sqlite3.Connection, triggers: list[TriggerInfo], now: float):
        super().__init__(triggers, now)
        self.conn = conn

    def _last_start(self, trigger_id: int, contact_id: int) -> float | None:
        key = (trigger_id, contact_id)
        if key not in self._last:
            row = self.conn.execute(
                "SELECT max(window_start) FROM journey_steps "
                "WHERE trigger_id=? AND contact_id=? AND step=0",
                key,
            ).fetchone()
            self._last[key] = None if row[0] is None else float(row[0])
        return self._last[key]

    def apply(self, contact_id: int, event_id: int, e: EventInput) -> None:
        p = self.plan(e)
        for i in p.cancels:
            tid = self.triggers[i].id
            self.cancelled += self.conn.execute(
                "UPDATE journey_steps SET state='cancelled', reason=?, updated_at=? "
                "WHERE trigger_id=? AND contact_id=? AND state='pending' AND window_start<=?",
                (f"event {e.name}", self.now, tid, contact_id, e.occurred_at),
            ).rowcount
        for s in p.starts:
            info = self.triggers[s.index]
            last = self._last_start(info.id, contact_id)
            if started_within(last, info.trigger.once_per, e.occurred_at):
                continue  # at most once per contact per window
            rows = [
                (info.id, contact_id, n, e.occurred_at, event_id, due, self.now)
                for n, due in enumerate(s.due)
            ]
            before = self.conn.total_changes
            self.conn.executemany(
                "INSERT OR IGNORE INTO journey_steps (trigger_id, contact_id, step, "
                "window_start, event_id, due_at, updated_at) VALUES (?,?,?,?,?,?,?)",
                rows,
            )
            if self.conn.total_changes > before:
                self.started += 1
            self._last[(info.id, contact_id)] = e.occurred_at


def settle_op(settles: Sequence[Settle], now: float) -> Callable[[sqlite3.Connection], None]:
    """The write that ends ``settles``' steps; raises :class:`StepGone` (rolling back the
    whole transaction, messages included) if one of them is no longer pending."""
    check_settles(settles)

    def op(conn: sqlite3.Connection) -> None:
        for s in settles:
            n = conn.execute(
                "UPDATE journey_steps SET state=?, queue_id=?, reason=?, updated_at=? "
                "WHERE id=? AND state='pending'",
                (s.state, s.queue_id, s.reason, now, s.step_id),
            ).rowcount
            if n != 1:
                raise StepGone(f"journey step {s.step_id} is no longer pending")

    return op


def export_for(conn: sqlite3.Connection, owner: str, address: str) -> dict[str, object]:
    """The contact's events and sequence steps of ``owner`` (GDPR export)."""
    events = conn.execute(
        "SELECT e.name, e.properties, e.occurred_at, e.received_at FROM contact_events e "
        "JOIN contacts c ON c.id = e.contact_id WHERE c.owner=? AND c.address=? "
        "ORDER BY e.occurred_at, e.id",
        (owner, address),
    ).fetchall()
    steps = conn.execute(
        "SELECT t.name, s.step, s.state, s.due_at, s.queue_id, s.reason FROM journey_steps s "
        "JOIN contacts c ON c.id = s.contact_id JOIN triggers t ON t.id = s.trigger_id "
        "WHERE c.owner=? AND c.address=? ORDER BY s.due_at, s.id",
        (owner, address),
    ).fetchall()
    return export_doc(events, steps)


def export_address(conn: sqlite3.Connection, address: str) -> dict[str, object]:
    """Every owner's events and steps of ``address``, by owner (the privacy export)."""
    owners = conn.execute(
        "SELECT DISTINCT c.owner FROM contacts c WHERE c.address=? ORDER BY c.owner", (address,)
    ).fetchall()
    return {o: export_for(conn, o, address) for (o,) in owners}


def erase_for(conn: sqlite3.Connection, address: str) -> int:
    """Delete every owner's events and steps of ``address`` (GDPR erase); rows deleted."""
    ids = [r[0] for r in conn.execute("SELECT id FROM contacts WHERE address=?", (address,))]
    n = 0
    for cid in ids:
        n += conn.execute("DELETE FROM journey_steps WHERE contact_id=?", (cid,)).rowcount
        n += conn.execute("DELETE FROM contact_events WHERE contact_id=?", (cid,)).rowcount
    return n


class JourneyStore:
    """Triggers, events and steps of each owner, in the shared database."""

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self._clock: Clock = clock or SystemClock()

    # -- triggers ----------------------------------------------------------------------------
    async def put_trigger(self, owner: str, t: Trigger) -> tuple[TriggerInfo, bool]:
        """Create or replace the trigger named ``t.name``; the stored one and whether new.

        Pending steps keep their due times; each step's template is read when it fires."""
        now = self._clock.now()
        doc = json.dumps(t.as_json(), separators=(",", ":"))

        def op(conn: sqlite3.Connection) -> tuple[TriggerInfo, bool]:
            had = conn.execute(
                "SELECT 1 FROM triggers WHERE owner=? AND name=?", (owner, t.name)
            ).fetchone()
            conn.execute(
                "INSERT INTO triggers (owner, name, event, definition, enabled, created_at, "
                "updated_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT (owner, name) DO UPDATE SET "
                "event=excluded.event, definition=excluded.definition, "
                "enabled=excluded.enabled, updated_at=excluded.updated_at",
                (owner, t.name, t.event, doc, int(t.enabled), now, now),
            )
            row = conn.execute(
                "SELECT id, owner, definition, created_at, updated_at FROM triggers "
                "WHERE owner=? AND name=?",
                (owner, t.name),
            ).fetchone()
            return trigger_info(row), had is None

        return await self.db.write(op)

    async def get_trigger(self, owner: str, name: str) -> TriggerInfo | None:
        def fn(conn: sqlite3.Connection) -> TriggerInfo | None:
            row = conn.execute(
                "SELECT id, owner, definition, created_at, updated_at FROM triggers "
                "WHERE owner=? AND name=?",
                (owner, name),
            ).fetchone()
            return None if row is None else trigger_info(row)

        return await self.db.read(fn)

    async def triggers(self, owner: str) -> list[TriggerInfo]:
        def fn(conn: sqlite3.Connection) -> list[TriggerInfo]:
            rows = conn.execute(
                "SELECT id, owner, definition, created_at, updated_at FROM triggers "
                "WHERE owner=? ORDER BY name",
                (owner,),
            ).fetchall()
            return [trigger_info(r) for r in rows]

        return await self.db.read(fn)

    async def delete_trigger(self, owner: str, name: str) -> bool:
        """Delete the trigger and its steps (pending ones never fire)."""
        n = await self.db.write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM triggers WHERE owner=? AND name=?", (owner, name)
                ).rowcount
            )
        )
        return bool(n)

    async def step_counts(self, owner: str, name: str) -> dict[int, dict[str, int]]:
        """Per step index: how many steps are in each state."""

        def fn(conn: sqlite3.Connection) -> dict[int, dict[str, int]]:
            rows = conn.execute(
                "SELECT s.step, s.state, count(*) FROM journey_steps s "
                "JOIN triggers t ON t.id = s.trigger_id WHERE t.owner=? AND t.name=? "
                "GROUP BY s.step, s.state",
                (owner, name),
            ).fetchall()
            return step_counts(rows)

        return await self.db.read(fn)

    # -- events ------------------------------------------------------------------------------
    async def record_events(self, owner: str, events: Sequence[EventInput]) -> Recorded:
        """Store ``events`` and start or cancel sequences, in one transaction (durable when
        this returns). Events of addresses that are not the owner's contacts are not stored;
        they are named in the answer."""
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> Recorded:
            ids = _contact_ids(conn, owner, {e.address for e in events})
            rows = conn.execute(
                "SELECT id, owner, definition, created_at, updated_at FROM triggers "
                "WHERE owner=? AND enabled=1 ORDER BY id",
                (owner,),
            ).fetchall()
            ev = _Evaluator(conn, [trigger_info(r) for r in rows], now)
            got = sort_events(events, ids, ev.defs, now)
            for cid, e in got.watched:
                cur = conn.execute(
                    "INSERT INTO contact_events (contact_id, name, properties, occurred_at, "
                    "received_at) VALUES (?,?,?,?,?)",
                    (cid, e.name, e.properties, e.occurred_at, now),
                )
                ev.apply(cid, int(cur.lastrowid or 0), e)
            if got.plain:  # no trigger cares: stored in one executemany
                conn.executemany(
                    "INSERT INTO contact_events (contact_id, name, properties, occurred_at, "
                    "received_at) VALUES (?,?,?,?,?)",
                    got.plain,
                )
            return Recorded(got.stored, ev.started, ev.cancelled, got.unknown)

        return await self.db.write(op)

    # -- the runner --------------------------------------------------------------------------
    async def due(self, now: float, limit: int) -> list[DueStep]:
        """Up to ``limit`` pending steps due at ``now``, earliest first."""

        def fn(conn: sqlite3.Connection) -> list[DueStep]:
            rows = conn.execute(
                f"SELECT s.id, s.step, s.due_at, t.id, t.owner, t.definition, t.created_at, "
                f"t.updated_at, e.name, e.properties, e.occurred_at, {CONTACT_COLUMNS} "
                "FROM journey_steps s JOIN triggers t ON t.id = s.trigger_id "
                "JOIN contacts c ON c.id = s.contact_id "
                "LEFT JOIN contact_events e ON e.id = s.event_id "
                "WHERE s.state='pending' AND s.due_at <= ? ORDER BY s.due_at LIMIT ?",
                (now, limit),
            ).fetchall()
            return [due_step(r) for r in rows]

        return await self.db.read(fn)

    def settle_op(
        self, settles: Sequence[Settle], now: float
    ) -> Callable[[sqlite3.Connection], None]:
        """:func:`settle_op`: the runner asks the store, so each backend gives its own."""
        return settle_op(settles, now)

    async def settle(self, settles: Sequence[Settle]) -> None:
        """Settle steps without queuing anything (all skipped or cancelled)."""
        await self.db.write(settle_op(settles, self._clock.now()))

    async def next_due(self) -> float | None:
        """The earliest pending step's due time (the runner sleeps until then)."""

        def fn(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT min(due_at) FROM journey_steps WHERE state='pending'"
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self.db.read(fn)

    async def export_for(self, owner: str, address: str) -> dict[str, object]:
        return await self.db.read(lambda conn: export_for(conn, owner, address))

    async def erase_for(self, address: str) -> int:
        return await self.db.write(lambda conn: erase_for(conn, address))

    async def export_address(self, address: str) -> dict[str, object]:
        return await self.db.read(lambda conn: export_address(conn, address))
