"""Campaigns, their runs and audience snapshots on PostgreSQL: the only writer of
``campaigns``, ``campaign_runs`` and ``campaign_recipients``.

The same store as :mod:`mtaserver.storage.sqlite.campaigns` (same methods, same answers),
for several nodes feeding from one database:

- Starting a run is one transaction: the conditional update of the campaign (``status``
  and ``next_run_at`` as read), the run (``UNIQUE (campaign_id, fire_at)``) and the
  snapshot ``INSERT … SELECT``. Two nodes starting the same fire: the second's update
  waits for the first's commit, then matches nothing, so one run and one snapshot.
- :meth:`PgCampaignStore.pending` *claims* the rows it returns (``FOR UPDATE SKIP LOCKED``
  and a lease: ``lease_node``, ``lease_until``), so two nodes feed different rows of one
  run at once and a node that dies has its rows taken by the others once the lease ends.
  Exactly-once does not rest on the lease: :meth:`fed_op` (run in the transaction that
  queues the messages) moves only ``pending`` rows and rolls everything back if one was
  fed already.
- Row locks are taken campaign → run → rows in every write, so an operator's pause and a
  node's finish cannot deadlock.

The snapshot and the cancel sweep (bulk statements) are in :mod:`.rows`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import asyncpg

from mtaserver.campaigns import PRIOR
from mtaserver.clock import Clock, SystemClock
from mtaserver.contacts import ContactConflict, ContactError
from mtaserver.storage.common import campaigns as shared
from mtaserver.storage.common.campaigns import BATCH, CANCEL_BATCH, Campaign, Run, RunStopped
from mtaserver.storage.postgres.campaigns.rows import (
    Audience,
    cancel_batch,
    list_audience_sql,
    rows_of,
    snapshot,
)
from mtaserver.storage.postgres.db import Connection, PgDatabase
from mtaserver.storage.sqlite.contacts import Contact

__all__ = ["BATCH", "Campaign", "PgCampaignStore", "Run", "RunStopped", "list_audience_sql"]

LEASE: Final = 60.0  # seconds a node holds the rows it claimed before another may take them
_COLS = shared.columns()
_ACTIVE_RUNS = (
    "SELECT id FROM campaign_runs WHERE campaign_id = $4 AND status IN ('running', 'paused')"
)
# The contact's zone name for LocalDue ('' when it is not a JSON string: the fallback).
_CLAIM = """
WITH claim AS (
    SELECT run_id, contact_id FROM campaign_recipients
    WHERE run_id = $1 AND state = 'pending' AND due_at <= $2
      AND (lease_until IS NULL OR lease_until <= $2 OR lease_node = $3)
    ORDER BY due_at, contact_id LIMIT $4
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE campaign_recipients r SET lease_node = $3, lease_until = $2 + $5
    FROM claim WHERE r.run_id = claim.run_id AND r.contact_id = claim.contact_id
    RETURNING r.contact_id, r.due_at
)
SELECT c.id, c.owner, c.address, c.attributes::text, c.consent_status, c.consent_source,
       c.consent_at, c.consent_ip, c.created_at, c.updated_at
FROM leased l JOIN contacts c ON c.id = l.contact_id ORDER BY l.due_at, l.contact_id
"""


class PgCampaignStore:
    """``node_id`` names this node on the rows it claims (``[cluster] node_id``)."""

    def __init__(
        self, db: PgDatabase, clock: Clock | None = None, *, node_id: str = "",
        lease: float = LEASE,
    ) -> None:  # fmt: skip
        self.db = db
        self._clock = clock or SystemClock()
        self.node_id = node_id
        self.lease = lease

    async def create(
        self, owner: str, name: str, template: str, from_email: str, *,
        audience_kind: str, audience: str, schedule: str = "once",
        send_at: float | None = None, local_at: str | None = None,
        cron: str | None = None, tz: str | None = None, from_name: str | None = None,
    ) -> Campaign:  # fmt: skip
        now = self._clock.now()
        async with self.db.connection() as conn:
            try:
                row = await conn.fetchrow(
                    "INSERT INTO campaigns (owner, name, template, from_email, from_name, "
                    "audience_kind, audience, schedule, send_at, local_at, cron, tz, "
                    "created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,"
                    f"$13,$13) RETURNING {_COLS}",
                    owner, name, template, from_email, from_name, audience_kind, audience,
                    schedule, send_at, local_at, cron, tz, now,
                )  # fmt: skip
            except asyncpg.UniqueViolationError:
                raise ContactConflict(f"campaign {name!r} exists already", "name") from None
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise ContactError(f"campaign: {exc}") from None
        return shared.as_campaign(row)

    async def get(self, owner: str, name: str) -> Campaign | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLS} FROM campaigns WHERE owner = $1 AND name = $2", owner, name
            )
        return None if row is None else shared.as_campaign(row)

    async def list_all(self, owner: str) -> list[Campaign]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLS} FROM campaigns WHERE owner = $1 ORDER BY name", owner
            )
        return [shared.as_campaign(r) for r in rows]

    async def set_status(
        self, campaign_id: int, status: str, next_run_at: float | None = None, *,
        expect: Sequence[str] | None = None,
    ) -> bool:  # fmt: skip
        """Move the campaign to ``status`` only if it is in ``expect`` now (default:
        :data:`mtaserver.campaigns.PRIOR`), with its active runs for pause/resume/cancel;
        False (nothing written) if not."""
        now = self._clock.now()
        allowed = list(expect if expect is not None else PRIOR[status])
        run_status = {"paused": "paused", "running": "running", "cancelled": "cancelled"}
        async with self.db.transaction() as conn:
            n = rows_of(await conn.execute(
                "UPDATE campaigns SET status = $1, next_run_at = $2, updated_at = $3 "
                "WHERE id = $4 AND status = ANY($5::text[])",
                status, next_run_at, now, campaign_id, allowed,
            ))  # fmt: skip
            if n and status in run_status:
                await conn.execute(
                    "UPDATE campaign_runs SET status = $1, finished_at = CASE WHEN "
                    f"$2::text = 'cancelled' THEN $3::float8 END WHERE id IN ({_ACTIVE_RUNS})",
                    run_status[status], status, now, campaign_id,
                )  # fmt: skip
        return n == 1

    async def act(self, campaign: Campaign, action: str) -> Campaign:
        """An operator's ``action`` as the CLI and the API do it (the SQLite store's rules:
        :func:`mtaserver.storage.common.campaigns.act` over this store)."""
        return await shared.act(self, self._clock, campaign, action)

    async def fail(self, campaign_id: int, reason: str) -> bool:
        """The feeder cannot start a run: failed with ``reason``, its active runs cancelled;
        False if an operator's action (or another node) got there first."""
        now = self._clock.now()
        async with self.db.transaction() as conn:
            n = rows_of(await conn.execute(
                "UPDATE campaigns SET status = 'failed', failure = $1, next_run_at = NULL, "
                "updated_at = $2 WHERE id = $3 AND status = ANY($4::text[])",
                reason[:500], now, campaign_id, list(PRIOR["failed"]),
            ))  # fmt: skip
            if n:
                await conn.execute(
                    "UPDATE campaign_runs SET status = 'cancelled', finished_at = $1 "
                    "WHERE campaign_id = $2 AND status IN ('running', 'paused')",
                    now, campaign_id,
                )  # fmt: skip
        if n:
            await self.cancel_rows(campaign_id)
        return n == 1

    async def cancel_rows(self, campaign_id: int | None = None, limit: int = CANCEL_BATCH) -> int:
        """Move the pending rows of cancelled runs (of one campaign, or all) to
        ``cancelled``, ``limit`` rows per transaction until none is left; how many."""
        total = 0
        while n := await self._cancel_batch(campaign_id, limit):
            total += n
        return total

    async def _cancel_batch(self, campaign_id: int | None, limit: int) -> int:
        async with self.db.transaction() as conn:
            return await cancel_batch(conn, campaign_id, limit)

    async def begin_run(
        self, campaign: Campaign, fire_at: float, audience: Audience,
        next_run_at: float | None, due_for: Callable[[object], float] | None = None,
    ) -> Run | None:  # fmt: skip
        """Create the run for ``fire_at`` and snapshot its audience in the same
        transaction; None when that fire already has a run or the campaign's status or
        next run changed since it was read (paused, cancelled, or started by another node).
        ``due_for`` gives a local-time run's rows their due time from the contact's zone."""
        now = self._clock.now()
        async with self.db.transaction() as conn:
            claimed = rows_of(await conn.execute(
                "UPDATE campaigns SET status = 'running', next_run_at = $1, updated_at = $2 "
                "WHERE id = $3 AND status = $4 AND next_run_at IS NOT DISTINCT FROM $5::float8",
                next_run_at, now, campaign.id, campaign.status, campaign.next_run_at,
            ))  # fmt: skip
            if not claimed:
                return None
            run_id = await conn.fetchval(
                "INSERT INTO campaign_runs (campaign_id, fire_at, started_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (campaign_id, fire_at) DO NOTHING RETURNING id",
                campaign.id, fire_at, now,
            )  # fmt: skip
            if run_id is None:
                return None
            n = await snapshot(conn, int(run_id), audience, due_for)
            await conn.execute("UPDATE campaign_runs SET audience = $1 WHERE id = $2", n, run_id)
        return Run(int(run_id), campaign.id, fire_at, "running", n, 0, 0)

    async def pending(self, run_id: int, limit: int = BATCH) -> list[Contact]:
        """Claim the next ``limit`` pending, due rows of a run (leased to this node, skipping
        rows another node holds) and return them as the contacts they name now."""
        now = self._clock.now()
        async with self.db.transaction() as conn:
            rows = await conn.fetch(_CLAIM, run_id, now, self.node_id, limit, self.lease)
        return [Contact(*r) for r in rows]

    def fed_op(
        self, run_id: int, queued: Sequence[tuple[int, str]], skipped: Sequence[tuple[int, str]]
    ) -> Callable[[Connection], Awaitable[None]]:
        """Mark rows queued ``(contact_id, queue_id)`` / skipped ``(contact_id, reason)``
        in the caller's transaction; raises (rolling back the messages too) if the run
        stopped or a row was fed already (by another node whose lease this one outlived)."""

        async def op(conn: Connection) -> None:
            # the run row first (the lock order), and the check that it still runs
            ok = await conn.fetchval(
                "UPDATE campaign_runs SET queued = queued + $2, skipped = skipped + $3 "
                "WHERE id = $1 AND status = 'running' RETURNING id",
                run_id, len(queued), len(skipped),
            )  # fmt: skip
            if ok is None:
                raise RunStopped(f"run {run_id} is not running")
            for rows, state, col in ((queued, "queued", "queue_id"), (skipped, "skipped", "reason")):  # fmt: skip # noqa: E501
                if not rows:
                    continue
                n = rows_of(await conn.execute(
                    f"UPDATE campaign_recipients r SET state = '{state}', {col} = u.v "
                    "FROM unnest($2::bigint[], $3::text[]) AS u(cid, v) "
                    "WHERE r.run_id = $1 AND r.contact_id = u.cid AND r.state = 'pending'",
                    run_id, [cid for cid, _ in rows], [v for _, v in rows],
                ))  # fmt: skip
                if n != len(rows):
                    raise RunStopped(f"run {run_id}: a row was fed already")

        return op

    async def counts(self, run_id: int) -> dict[str, int]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT state, count(*) FROM campaign_recipients WHERE run_id = $1 GROUP BY state",
                run_id,
            )
        return {str(s): int(n) for s, n in rows}

    async def due(self, now: float) -> list[Campaign]:
        """Campaigns whose next run should start by ``now`` (scheduled ones, and running
        local-time ones: a run spans a day of zones)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLS} FROM campaigns WHERE (status = 'scheduled' "
                "AND next_run_at <= $1) OR (status = 'running' AND next_run_at <= $1 "
                "AND schedule = 'local') ORDER BY next_run_at LIMIT 100",
                now,
            )
        return [shared.as_campaign(r) for r in rows]

    async def running(self) -> list[tuple[Run, Campaign]]:
        """Every run being fed, with its campaign."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {shared.run_columns('r')}, {shared.columns('c')} FROM campaign_runs r "
                "JOIN campaigns c ON c.id = r.campaign_id WHERE r.status = 'running' ORDER BY r.id"
            )
        return [shared.as_run_and_campaign(r) for r in rows]

    async def finish_run(self, run_id: int) -> bool:
        """Done if the run has no pending row left; its campaign then waits for its next
        fire, or is done. False if rows are pending or the run was paused or cancelled."""
        now = self._clock.now()
        waiting = "SELECT 1 FROM campaign_recipients WHERE run_id = $1 AND state = 'pending'"
        async with self.db.connection() as conn:
            if await conn.fetchval(waiting, run_id):
                return False  # a read, not a write, for each poll of a run waiting for a zone
        async with self.db.transaction() as conn:
            await conn.execute(  # the campaign row first: the lock order of set_status
                "SELECT 1 FROM campaigns WHERE id = (SELECT campaign_id FROM campaign_runs "
                "WHERE id = $1) FOR UPDATE",
                run_id,
            )
            n = rows_of(await conn.execute(
                "UPDATE campaign_runs SET status = 'done', finished_at = $1 WHERE id = $2 "
                f"AND status = 'running' AND NOT EXISTS ({waiting.replace('$1', '$2')})",
                now, run_id,
            ))  # fmt: skip
            if not n:
                return False
            await conn.execute(
                "UPDATE campaigns SET status = CASE WHEN next_run_at IS NULL THEN 'done' "
                "ELSE 'scheduled' END, updated_at = $1 WHERE status = 'running' AND id = "
                "(SELECT campaign_id FROM campaign_runs WHERE id = $2) AND NOT EXISTS "
                "(SELECT 1 FROM campaign_runs WHERE campaign_id = campaigns.id "
                "AND status = 'running')",
                now, run_id,
            )  # fmt: skip
        return True

    async def runs(self, campaign_id: int) -> list[Run]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {shared.run_columns()} FROM campaign_runs WHERE campaign_id = $1 "
                "ORDER BY fire_at",
                campaign_id,
            )
        return [shared.as_run(r) for r in rows]

    async def due_backlog(self, now: float, cap: int) -> int:
        """Recipients waiting for delivery now (due or leased) in the cluster's queue,
        counted up to ``cap`` (the feeder holds back at that many)."""
        async with self.db.connection() as conn:
            return int(await conn.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM recipients WHERE state = 'leased' "
                "OR (state = 'queued' AND next_attempt <= $1) LIMIT $2) AS d",
                now, cap,
            ))  # fmt: skip
