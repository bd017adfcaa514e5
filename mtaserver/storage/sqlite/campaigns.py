"""Campaigns, their runs and audience snapshots: the only writer of ``campaigns``,
``campaign_runs`` and ``campaign_recipients``.

Starting a run snapshots the audience with ONE ``INSERT … SELECT`` inside the write that
creates the run (``UNIQUE (campaign_id, fire_at)`` makes a second start of the same fire a
no-op), so the audience is fixed at that instant and never passes through Python memory.
A feeder then reads pending rows by keyset (the partial index on pending rows: a fed row
leaves it) and marks them queued or skipped with :meth:`CampaignStore.fed_op`, a write
meant to run in the transaction that queues the messages (``OutreachSender.commit``'s
``also``): the message and its row change together or not at all, across ``kill -9``.

Status changes are conditional updates (``… WHERE status IN (…)``, reporting whether they
applied), so an operator's pause and the feeder's finish racing each other cannot both win.
A local-time run's rows get their own ``due_at`` in the snapshot statement (a Python SQL
function computes it per distinct zone); a run is done only when no row is pending.
Cancelling or failing a campaign moves its pending rows to ``cancelled`` in bounded batches
(:meth:`CampaignStore.cancel_rows`); the feeder sweeps what an interrupted cancel left.
The values and an operator's action, shared with the PostgreSQL owner, are
:mod:`mtaserver.storage.common.campaigns`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from mtaserver.campaigns import PRIOR, TZ_ATTRIBUTE
from mtaserver.clock import Clock, SystemClock
from mtaserver.contacts import ContactConflict, ContactError
from mtaserver.storage.common.campaigns import (
    BATCH,
    CANCEL_BATCH,
    Campaign,
    Run,
    RunStopped,
    act,
    as_campaign,
    as_run,
    as_run_and_campaign,
    columns,
    run_columns,
)
from mtaserver.storage.sqlite.contacts import Contact
from mtaserver.storage.sqlite.db import Database

__all__ = [
    "BATCH",
    "CANCEL_BATCH",
    "Campaign",
    "CampaignStore",
    "Run",
    "RunStopped",
    "list_audience_sql",
]

# "Is anything pending?" by the partial index: without statistics the planner would walk the
# primary key through every fed row of a million-row run, on every poll.
_PENDING = "campaign_recipients INDEXED BY campaign_recipients_pending"
_ACTIVE_RUNS = (
    "SELECT id FROM campaign_runs WHERE campaign_id = ? AND status IN ('running', 'paused')"
)
_COLS = columns()


def list_audience_sql(owner: str, list_name: str) -> tuple[str, tuple[object, ...]]:
    """The subscribed members of ``owner``'s list as ``(contact_id, address)`` rows."""
    sql = (
        "SELECT c.id AS contact_id, c.address AS address FROM list_members m "
        "JOIN contacts c ON c.id = m.contact_id "
        "WHERE m.list_id = (SELECT id FROM lists WHERE owner = ? AND name = ?) "
        "AND m.status = 'subscribed' AND c.owner = ?"
    )
    return sql, (owner, list_name, owner)


class CampaignStore:
    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self._clock = clock or SystemClock()

    async def create(
        self, owner: str, name: str, template: str, from_email: str, *,
        audience_kind: str, audience: str, schedule: str = "once",
        send_at: float | None = None, local_at: str | None = None,
        cron: str | None = None, tz: str | None = None, from_name: str | None = None,
    ) -> Campaign:  # fmt: skip
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> Campaign:
            try:
                row = conn.execute(
                    "INSERT INTO campaigns (owner, name, template, from_email, from_name, "
                    "audience_kind, audience, schedule, send_at, local_at, cron, tz, "
                    "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
                    f"RETURNING {_COLS}",
                    (owner, name, template, from_email, from_name, audience_kind, audience,
                     schedule, send_at, local_at, cron, tz, now, now),
                ).fetchone()  # fmt: skip
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" in str(exc):
                    raise ContactConflict(f"campaign {name!r} exists already", "name") from None
                raise ContactError(f"campaign: {exc}") from None
            return as_campaign(row)

        return await self.db.write(op)

    async def get(self, owner: str, name: str) -> Campaign | None:
        def fn(conn: sqlite3.Connection) -> Campaign | None:
            row = conn.execute(
                f"SELECT {_COLS} FROM campaigns WHERE owner = ? AND name = ?", (owner, name)
            ).fetchone()
            return None if row is None else as_campaign(row)

        return await self.db.read(fn)

    async def list_all(self, owner: str) -> list[Campaign]:
        def fn(conn: sqlite3.Connection) -> list[Campaign]:
            rows = conn.execute(
                f"SELECT {_COLS} FROM campaigns WHERE owner = ? ORDER BY name", (owner,)
            )
            return [as_campaign(r) for r in rows]

        return await self.db.read(fn)

    async def set_status(
        self, campaign_id: int, status: str, next_run_at: float | None = None, *,
        expect: Sequence[str] | None = None,
    ) -> bool:  # fmt: skip
        """Move the campaign to ``status`` only if it is in ``expect`` now (default: the
        statuses an action may enter ``status`` from, :data:`mtaserver.campaigns.PRIOR`),
        with its active runs for pause/resume/cancel; False (nothing written) if not."""
        now = self._clock.now()
        allowed = tuple(expect if expect is not None else PRIOR[status])
        marks = ",".join("?" * len(allowed))
        run_status = {"paused": "paused", "running": "running", "cancelled": "cancelled"}

        def op(conn: sqlite3.Connection) -> bool:
            n = conn.execute(
                "UPDATE campaigns SET status = ?, next_run_at = ?, updated_at = ? "
                f"WHERE id = ? AND status IN ({marks})",
                (status, next_run_at, now, campaign_id, *allowed),
            ).rowcount
            if n and status in run_status:
                conn.execute(
                    "UPDATE campaign_runs SET status = ?, finished_at = "
                    "CASE WHEN ? = 'cancelled' THEN ? END "
                    f"WHERE id IN ({_ACTIVE_RUNS})",
                    (run_status[status], status, now, campaign_id),
                )
            return n == 1

        return bool(await self.db.write(op))

    async def act(self, campaign: Campaign, action: str) -> Campaign:
        """An operator's ``action`` (start, pause, resume, cancel):
        :func:`mtaserver.storage.common.campaigns.act` over this store."""
        return await act(self, self._clock, campaign, action)

    async def fail(self, campaign_id: int, reason: str) -> bool:
        """The feeder cannot start a run (its segment is gone, ...): failed with ``reason``,
        its active runs cancelled; False if an operator's action got there first."""
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> bool:
            allowed = PRIOR["failed"]
            n = conn.execute(
                "UPDATE campaigns SET status = 'failed', failure = ?, next_run_at = NULL, "
                f"updated_at = ? WHERE id = ? AND status IN ({','.join('?' * len(allowed))})",
                (reason[:500], now, campaign_id, *allowed),
            ).rowcount
            if n:
                conn.execute(
                    "UPDATE campaign_runs SET status = 'cancelled', finished_at = ? "
                    f"WHERE id IN ({_ACTIVE_RUNS})",
                    (now, campaign_id),
                )
            return n == 1

        done = bool(await self.db.write(op))
        if done:
            await self.cancel_rows(campaign_id)
        return done

    async def cancel_rows(self, campaign_id: int | None = None, limit: int = CANCEL_BATCH) -> int:
        """Move the pending rows of cancelled runs (of one campaign, or all) to
        ``cancelled``, ``limit`` rows per transaction until none is left; how many."""
        total = 0
        while await self.db.read(lambda conn: bool(_cancelled_runs(conn, campaign_id, 1))):
            total += await self.db.write(lambda conn: _cancel_batch(conn, campaign_id, limit))
        return total

    async def begin_run(
        self, campaign: Campaign, fire_at: float, audience: tuple[str, tuple[object, ...]],
        next_run_at: float | None, due_for: Callable[[object], float] | None = None,
    ) -> Run | None:  # fmt: skip
        """Create the run for ``fire_at`` and snapshot its audience in one statement; None
        when that fire already has a run or the campaign's status or next run changed
        since it was read (paused or cancelled meanwhile). ``due_for`` gives a local-time
        run's rows their due time from the contact's ``timezone`` attribute."""
        sql, params = audience
        now = self._clock.now()
        snapshot = (
            "INSERT OR IGNORE INTO campaign_recipients (run_id, contact_id, address) "
            f"SELECT ?, a.contact_id, a.address FROM ({sql}) AS a"
        )
        if due_for is not None:
            snapshot = (
                "INSERT OR IGNORE INTO campaign_recipients (run_id, contact_id, address, "
                f"due_at) SELECT ?, a.contact_id, a.address, campaign_due(json_extract("
                f"c.attributes, '$.{TZ_ATTRIBUTE}')) FROM ({sql}) AS a "
                "JOIN contacts c ON c.id = a.contact_id"
            )

        def op(conn: sqlite3.Connection) -> Run | None:
            claimed = conn.execute(
                "UPDATE campaigns SET status = 'running', next_run_at = ?, updated_at = ? "
                "WHERE id = ? AND status = ? AND next_run_at IS ?",
                (next_run_at, now, campaign.id, campaign.status, campaign.next_run_at),
            ).rowcount
            if not claimed:
                return None
            cur = conn.execute(
                "INSERT INTO campaign_runs (campaign_id, fire_at, started_at) VALUES (?, ?, ?) "
                "ON CONFLICT (campaign_id, fire_at) DO NOTHING RETURNING id",
                (campaign.id, fire_at, now),
            ).fetchone()
            if cur is None:
                return None
            run_id = int(cur[0])
            if due_for is not None:
                conn.create_function("campaign_due", 1, due_for, deterministic=True)
            try:
                n = conn.execute(snapshot, (run_id, *params)).rowcount
            finally:
                if due_for is not None:
                    conn.create_function("campaign_due", 1, None)
            conn.execute("UPDATE campaign_runs SET audience = ? WHERE id = ?", (n, run_id))
            return Run(run_id, campaign.id, fire_at, "running", n, 0, 0)

        return await self.db.write(op)

    async def pending(self, run_id: int, limit: int = BATCH) -> list[Contact]:
        """The next ``limit`` pending, due rows of a run as the contacts they name now."""
        now = self._clock.now()

        def fn(conn: sqlite3.Connection) -> list[Contact]:
            rows = conn.execute(
                "SELECT c.id, c.owner, c.address, c.attributes, c.consent_status, "
                "c.consent_source, c.consent_at, c.consent_ip, c.created_at, c.updated_at "
                "FROM campaign_recipients r JOIN contacts c ON c.id = r.contact_id "
                "WHERE r.run_id = ? AND r.state = 'pending' AND r.due_at <= ? "
                "ORDER BY r.due_at, r.contact_id LIMIT ?",
                (run_id, now, limit),
            )
            return [Contact(*r) for r in rows]

        return await self.db.read(fn)

    def fed_op(
        self, run_id: int, queued: Sequence[tuple[int, str]], skipped: Sequence[tuple[int, str]]
    ) -> Callable[[sqlite3.Connection], None]:
        """Mark rows queued ``(contact_id, queue_id)`` / skipped ``(contact_id, reason)``;
        raises (rolling back the messages too) if the run stopped or a row was fed already."""

        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT status FROM campaign_runs WHERE id = ?", (run_id,))
            status = row.fetchone()
            if status is None or status[0] != "running":
                raise RunStopped(f"run {run_id} is not running")
            for rows, state in ((queued, "queued"), (skipped, "skipped")):
                if not rows:
                    continue
                col = "queue_id" if state == "queued" else "reason"
                n = conn.executemany(
                    f"UPDATE campaign_recipients SET state = '{state}', {col} = ? "
                    "WHERE run_id = ? AND contact_id = ? AND state = 'pending'",
                    [(v, run_id, cid) for cid, v in rows],
                ).rowcount
                if n != len(rows):
                    raise RunStopped(f"run {run_id}: a row was fed already")
            conn.execute(
                "UPDATE campaign_runs SET queued = queued + ?, skipped = skipped + ? WHERE id = ?",
                (len(queued), len(skipped), run_id),
            )

        return op

    async def counts(self, run_id: int) -> dict[str, int]:
        def fn(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT state, count(*) FROM campaign_recipients WHERE run_id = ? GROUP BY state",
                (run_id,),
            )
            return {str(s): int(n) for s, n in rows}

        return await self.db.read(fn)

    async def due(self, now: float) -> list[Campaign]:
        """Campaigns whose next run should start by ``now``: scheduled ones, and running
        local-time ones (a run spans a day of zones, so the next may start before it ends)."""

        def fn(conn: sqlite3.Connection) -> list[Campaign]:
            rows = conn.execute(
                f"SELECT {_COLS} FROM campaigns WHERE (status = 'scheduled' "
                "AND next_run_at <= ?) OR (status = 'running' AND next_run_at <= ? "
                "AND schedule = 'local') ORDER BY next_run_at LIMIT 100",
                (now, now),
            )
            return [as_campaign(r) for r in rows]

        return await self.db.read(fn)

    async def running(self) -> list[tuple[Run, Campaign]]:
        """Every run being fed, with its campaign."""

        def fn(conn: sqlite3.Connection) -> list[tuple[Run, Campaign]]:
            rows = conn.execute(
                f"SELECT {run_columns('r')}, {columns('c')} FROM campaign_runs r "
                "JOIN campaigns c ON c.id = r.campaign_id WHERE r.status = 'running' ORDER BY r.id"
            )
            return [as_run_and_campaign(r) for r in rows]

        return await self.db.read(fn)

    async def finish_run(self, run_id: int) -> bool:
        """Done if the run has no pending row left (rows of a local-time run may still wait
        for their zone); its campaign then waits for its next fire, or is done. False if
        rows are pending or the run was paused or cancelled first."""
        now = self._clock.now()
        waiting = f"SELECT 1 FROM {_PENDING} WHERE run_id = ? AND state = 'pending'"
        if await self.db.read(lambda conn: conn.execute(waiting, (run_id,)).fetchone()):
            return False  # a read, not a write, for each poll of a run waiting for a zone

        def op(conn: sqlite3.Connection) -> bool:
            n = conn.execute(
                "UPDATE campaign_runs SET status = 'done', finished_at = ? WHERE id = ? "
                f"AND status = 'running' AND NOT EXISTS (SELECT 1 FROM {_PENDING} "
                "WHERE run_id = ? AND state = 'pending')",
                (now, run_id, run_id),
            ).rowcount
            if not n:
                return False
            conn.execute(
                "UPDATE campaigns SET status = CASE WHEN next_run_at IS NULL THEN 'done' "
                "ELSE 'scheduled' END, updated_at = ? WHERE status = 'running' AND id = "
                "(SELECT campaign_id FROM campaign_runs WHERE id = ?) AND NOT EXISTS "
                "(SELECT 1 FROM campaign_runs WHERE campaign_id = campaigns.id "
                "AND status = 'running')",
                (now, run_id),
            )
            return True

        return bool(await self.db.write(op))

    async def runs(self, campaign_id: int) -> list[Run]:
        def fn(conn: sqlite3.Connection) -> list[Run]:
            rows = conn.execute(
                f"SELECT {run_columns()} FROM campaign_runs WHERE campaign_id = ? ORDER BY fire_at",
                (campaign_id,),
            )
            return [as_run(r) for r in rows]

        return await self.db.read(fn)

    async def due_backlog(self, now: float, cap: int) -> int:
        """Recipients waiting for delivery now (due or leased), counted up to ``cap``: the
        feeder holds back while the queue has that many, so a campaign does not flood it."""

        def fn(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM recipients WHERE state = 'leased' "
                "OR (state = 'queued' AND next_attempt <= ?) LIMIT ?)",
                (now, cap),
            ).fetchone()
            return int(row[0])

        return await self.db.read(fn)


def _cancelled_runs(conn: sqlite3.Connection, campaign_id: int | None, limit: int) -> list[int]:
    """Cancelled runs (of one campaign, or all) that still have pending rows."""
    where = "" if campaign_id is None else "AND campaign_id = ?"
    rows = conn.execute(
        f"SELECT id FROM campaign_runs WHERE status = 'cancelled' {where} AND EXISTS "
        f"(SELECT 1 FROM {_PENDING} WHERE run_id = campaign_runs.id "
        "AND state = 'pending') LIMIT ?",
        ((campaign_id, limit) if campaign_id is not None else (limit,)),
    )
    return [int(r[0]) for r in rows]


def _cancel_batch(conn: sqlite3.Connection, campaign_id: int | None, limit: int) -> int:
    """Up to ``limit`` pending rows of cancelled runs → cancelled (by the pending index)."""
    left = limit
    for run_id in _cancelled_runs(conn, campaign_id, limit):
        left -= conn.execute(
            "UPDATE campaign_recipients SET state = 'cancelled' WHERE run_id = ? AND "
            f"contact_id IN (SELECT contact_id FROM {_PENDING} WHERE run_id = ? "
            "AND state = 'pending' LIMIT ?)",
            (run_id, run_id, left),
        ).rowcount
        if left <= 0:
            break
    return limit - left
