"""Triggers, contact events and sequence steps on PostgreSQL: the only writer of
``triggers``, ``contact_events`` and ``journey_steps``.

The same store as :mod:`mtaserver.storage.sqlite.journeys` (same answers, same
dataclasses), shared by every node. Two things differ because several nodes write at once:

- :meth:`PgJourneyStore.record_events` takes a per-owner advisory lock for its
  transaction, so the "once per contact per window" check and the steps it inserts are
  one step for the whole cluster, as SQLite's single writer makes them on one node;
- :meth:`PgJourneyStore.due` *claims* what it returns: the due steps are leased to this
  node (``lease_node``, ``lease_until``) with ``FOR UPDATE SKIP LOCKED``, so two nodes'
  runners never compose the same step. Exactly-once does not rest on the lease: the
  settle (:meth:`PgJourneyStore.settle_op`, run in the transaction that queues the mail)
  marks a step fired only while it is still pending, so a second node whose lease ran out
  mid-batch rolls its whole batch back (:class:`StepGone`), messages included.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from mtaserver.clock import Clock, SystemClock
from mtaserver.journeys import EventInput, Trigger
from mtaserver.storage.common import journeys as shared
from mtaserver.storage.common.journeys import DueStep, Recorded, Settle, StepGone, TriggerInfo
from mtaserver.storage.postgres.db import Connection, PgDatabase

LEASE: Final = 60.0  # seconds a claimed step stays this node's before another may take it
_EVENTS_LOCK: Final = 0x6D74_0140  # advisory lock class (int4): record_events, per owner
_TRIGGER = "id, owner, definition, created_at, updated_at"
_INSERT_EVENTS = (
    "INSERT INTO contact_events (contact_id, name, properties, occurred_at, received_at) "
    "SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::float8[], $5::float8[])"
)
_DUE = f"""
WITH claimed AS (
    UPDATE journey_steps SET lease_node = $3, lease_until = $1 + $4
    WHERE id IN (
        SELECT id FROM journey_steps
        WHERE state = 'pending' AND due_at <= $1 AND (lease_until IS NULL OR lease_until <= $1)
        ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)
    RETURNING id, step, due_at, trigger_id, contact_id, event_id)
SELECT s.id, s.step, s.due_at, t.id, t.owner, t.definition, t.created_at, t.updated_at,
       e.name, e.properties, e.occurred_at, {shared.CONTACT_COLUMNS}
FROM claimed s JOIN triggers t ON t.id = s.trigger_id JOIN contacts c ON c.id = s.contact_id
LEFT JOIN contact_events e ON e.id = s.event_id ORDER BY s.due_at, s.id
"""


def _count(status: str) -> int:
    return int(status.split()[-1])


class _Evaluator(shared.Evaluation):
    """Applies one batch's trigger plans inside the write (see the SQLite owner)."""

    def __init__(self, conn: Connection, triggers: list[TriggerInfo], now: float) -> None:
        super().__init__(triggers, now)
        self.conn = conn

    async def _last_start(self, trigger_id: int, contact_id: int) -> float | None:
        key = (trigger_id, contact_id)
        if key not in self._last:
            self._last[key] = await self.conn.fetchval(
                "SELECT max(window_start) FROM journey_steps "
                "WHERE trigger_id=$1 AND contact_id=$2 AND step=0",
                trigger_id, contact_id,
            )  # fmt: skip
        return self._last[key]

    async def apply(self, contact_id: int, event_id: int, e: EventInput) -> None:
        p = self.plan(e)
        for i in p.cancels:
            self.cancelled += _count(await self.conn.execute(
                "UPDATE journey_steps SET state='cancelled', reason=$1, updated_at=$2 "
                "WHERE trigger_id=$3 AND contact_id=$4 AND state='pending' AND window_start<=$5",
                f"event {e.name}", self.now, self.triggers[i].id, contact_id, e.occurred_at,
            ))  # fmt: skip
        for s in p.starts:
            info = self.triggers[s.index]
            last = await self._last_start(info.id, contact_id)
            if shared.started_within(last, info.trigger.once_per, e.occurred_at):
                continue  # at most once per contact per window
            n = len(s.due)
            rows = await self.conn.fetch(
                "INSERT INTO journey_steps (trigger_id, contact_id, step, window_start, "
                "event_id, due_at, updated_at) SELECT $1, $2, n, $3, $4, d, $5 "
                "FROM unnest($6::bigint[], $7::float8[]) AS u(n, d) "
                "ON CONFLICT (trigger_id, contact_id, step, window_start) DO NOTHING RETURNING id",
                info.id, contact_id, e.occurred_at, event_id, self.now, list(range(n)),
                list(s.due),
            )  # fmt: skip
            if rows:
                self.started += 1
            self._last[(info.id, contact_id)] = e.occurred_at


def settle_op(settles: Sequence[Settle], now: float) -> Callable[[Connection], Awaitable[None]]:
    """The write that ends ``settles``' steps, for the queue's ``also``; raises
    :class:`StepGone` (rolling back the whole transaction, messages included) if one of them
    is no longer pending."""
    shared.check_settles(settles)

    async def op(conn: Connection) -> None:
        for s in settles:
            status = await conn.execute(
                "UPDATE journey_steps SET state=$1, queue_id=$2, reason=$3, updated_at=$4, "
                "lease_node=NULL, lease_until=NULL WHERE id=$5 AND state='pending'",
                s.state, s.queue_id, s.reason, now, s.step_id,
            )  # fmt: skip
            if _count(status) != 1:
                raise StepGone(f"journey step {s.step_id} is no longer pending")

    return op


async def export_for(conn: Connection, owner: str, address: str) -> dict[str, object]:
    """The contact's events and sequence steps of ``owner`` (GDPR export)."""
    events = await conn.fetch(
        "SELECT e.name, e.properties, e.occurred_at, e.received_at FROM contact_events e "
        "JOIN contacts c ON c.id = e.contact_id WHERE c.owner=$1 AND c.address=$2 "
        "ORDER BY e.occurred_at, e.id",
        owner, address,
    )  # fmt: skip
    steps = await conn.fetch(
        "SELECT t.name, s.step, s.state, s.due_at, s.queue_id, s.reason FROM journey_steps s "
        "JOIN contacts c ON c.id = s.contact_id JOIN triggers t ON t.id = s.trigger_id "
        "WHERE c.owner=$1 AND c.address=$2 ORDER BY s.due_at, s.id",
        owner, address,
    )  # fmt: skip
    return shared.export_doc(events, steps)


async def export_address(conn: Connection, address: str) -> dict[str, object]:
    """Every owner's events and steps of ``address``, by owner (the privacy export)."""
    owners = await conn.fetch(
        "SELECT DISTINCT owner FROM contacts WHERE address=$1 ORDER BY owner", address
    )
    return {r[0]: await export_for(conn, r[0], address) for r in owners}


async def erase_for(conn: Connection, address: str) -> int:
    """Delete every owner's events and steps of ``address`` (GDPR erase); rows deleted."""
    ids = [r[0] for r in await conn.fetch("SELECT id FROM contacts WHERE address=$1", address)]
    steps = await conn.execute("DELETE FROM journey_steps WHERE contact_id = ANY($1)", ids)
    events = await conn.execute("DELETE FROM contact_events WHERE contact_id = ANY($1)", ids)
    return _count(steps) + _count(events)


class PgJourneyStore:
    """Triggers, events and steps of each owner, in the cluster's database; ``node`` names
    this node on the steps it claims."""

    def __init__(
        self, db: PgDatabase, clock: Clock | None = None, *, node: str = "", lease: float = LEASE
    ) -> None:
        self.db = db
        self._clock: Clock = clock or SystemClock()
        self.node = node
        self.lease = lease

    # -- triggers ----------------------------------------------------------------------------
    async def put_trigger(self, owner: str, t: Trigger) -> tuple[TriggerInfo, bool]:
        """Create or replace the trigger named ``t.name``; the stored one and whether new."""
        now = self._clock.now()
        doc = json.dumps(t.as_json(), separators=(",", ":"))
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                "INSERT INTO triggers (owner, name, event, definition, enabled, created_at, "
                "updated_at) VALUES ($1,$2,$3,$4,$5,$6,$6) ON CONFLICT (owner, name) DO UPDATE "
                "SET event=excluded.event, definition=excluded.definition, "
                "enabled=excluded.enabled, updated_at=excluded.updated_at "
                f"RETURNING {_TRIGGER}, (xmax = 0) AS inserted",
                owner, t.name, t.event, doc, int(t.enabled), now,
            )  # fmt: skip
        return shared.trigger_info(tuple(row)[:5]), bool(row["inserted"])

    async def get_trigger(self, owner: str, name: str) -> TriggerInfo | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_TRIGGER} FROM triggers WHERE owner=$1 AND name=$2", owner, name
            )
        return None if row is None else shared.trigger_info(tuple(row))

    async def triggers(self, owner: str) -> list[TriggerInfo]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_TRIGGER} FROM triggers WHERE owner=$1 ORDER BY name", owner
            )
        return [shared.trigger_info(tuple(r)) for r in rows]

    async def delete_trigger(self, owner: str, name: str) -> bool:
        """Delete the trigger and its steps (pending ones never fire)."""
        async with self.db.transaction() as conn:
            status = await conn.execute(
                "DELETE FROM triggers WHERE owner=$1 AND name=$2", owner, name
            )
        return bool(_count(status))

    async def step_counts(self, owner: str, name: str) -> dict[int, dict[str, int]]:
        """Per step index: how many steps are in each state."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT s.step, s.state, count(*) FROM journey_steps s "
                "JOIN triggers t ON t.id = s.trigger_id WHERE t.owner=$1 AND t.name=$2 "
                "GROUP BY s.step, s.state",
                owner, name,
            )  # fmt: skip
        return shared.step_counts(rows)

    # -- events ------------------------------------------------------------------------------
    async def record_events(self, owner: str, events: Sequence[EventInput]) -> Recorded:
        """Store ``events`` and start or cancel sequences, in one transaction (durable when
        this returns). Events of addresses that are not the owner's contacts are not stored;
        they are named in the answer."""
        now = self._clock.now()
        async with self.db.transaction() as conn:
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", _EVENTS_LOCK, owner
            )
            found = await conn.fetch(
                "SELECT address, id FROM contacts WHERE owner=$1 AND address = ANY($2::text[])",
                owner, sorted({e.address for e in events}),
            )  # fmt: skip
            ids = {str(a): int(i) for a, i in found}
            rows = await conn.fetch(
                f"SELECT {_TRIGGER} FROM triggers WHERE owner=$1 AND enabled=1 ORDER BY id",
                owner,
            )
            ev = _Evaluator(conn, [shared.trigger_info(tuple(r)) for r in rows], now)
            got = shared.sort_events(events, ids, ev.defs, now)
            for cid, e in got.watched:
                event_id = await conn.fetchval(
                    "INSERT INTO contact_events (contact_id, name, properties, occurred_at, "
                    "received_at) VALUES ($1,$2,$3,$4,$5) RETURNING id",
                    cid, e.name, e.properties, e.occurred_at, now,
                )  # fmt: skip
                await ev.apply(cid, int(event_id), e)
            if got.plain:  # no trigger cares: stored in one INSERT
                columns = zip(*got.plain, strict=True)
                await conn.execute(_INSERT_EVENTS, *(list(c) for c in columns))
        return Recorded(got.stored, ev.started, ev.cancelled, got.unknown)

    # -- the runner --------------------------------------------------------------------------
    async def due(self, now: float, limit: int) -> list[DueStep]:
        """Up to ``limit`` pending steps due at ``now``, earliest first, claimed for this
        node for :attr:`lease` seconds (steps another node holds are passed over)."""
        async with self.db.transaction() as conn:
            rows = await conn.fetch(_DUE, now, limit, self.node, self.lease)
        return [shared.due_step(r) for r in rows]

    def settle_op(
        self, settles: Sequence[Settle], now: float
    ) -> Callable[[Connection], Awaitable[None]]:
        return settle_op(settles, now)

    async def settle(self, settles: Sequence[Settle]) -> None:
        """Settle steps without queuing anything (all skipped or cancelled)."""
        op = settle_op(settles, self._clock.now())
        async with self.db.transaction() as conn:
            await op(conn)

    async def next_due(self) -> float | None:
        """The earliest pending step's due time (the runner sleeps until then)."""
        async with self.db.connection() as conn:
            value = await conn.fetchval(
                "SELECT min(due_at) FROM journey_steps WHERE state='pending'"
            )
        return None if value is None else float(value)

    async def export_for(self, owner: str, address: str) -> dict[str, object]:
        async with self.db.connection() as conn:
            return await export_for(conn, owner, address)

    async def erase_for(self, address: str) -> int:
        async with self.db.transaction() as conn:
            return await erase_for(conn, address)

    async def export_address(self, address: str) -> dict[str, object]:
        async with self.db.connection() as conn:
            return await export_address(conn, address)
