"""The campaign owner's bulk statements on PostgreSQL: the audience snapshot (with a
local-time run's per-zone due times) and the cancel sweep, for :class:`PgCampaignStore`.

A local-time run's rows get their ``due_at`` from :class:`mtaserver.campaigns.LocalDue`
(Python's zoneinfo, the rules the SQLite side applies through a SQL function), computed
once per distinct zone name and joined into the snapshot statement as two arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from mtaserver.campaigns import TZ_ATTRIBUTE
from mtaserver.storage.postgres.db import Connection

Audience = tuple[str, tuple[object, ...]]  # SQL of (contact_id, address) rows, parameters
# The contact's zone name for LocalDue ('' when it is not a JSON string: the fallback).
_TZ: Final = (
    f"coalesce(CASE WHEN jsonb_typeof(c.attributes -> '{TZ_ATTRIBUTE}') = 'string' "
    f"THEN c.attributes ->> '{TZ_ATTRIBUTE}' END, '')"
)


def rows_of(status: str) -> int:
    """The row count of an asyncpg command status ("UPDATE 3")."""
    return int(status.rsplit(" ", 1)[-1])


def list_audience_sql(owner: str, list_name: str) -> Audience:
    """The subscribed members of ``owner``'s list as ``(contact_id, address)`` rows."""
    sql = (
        "SELECT c.id AS contact_id, c.address AS address FROM list_members m "
        "JOIN contacts c ON c.id = m.contact_id "
        "WHERE m.list_id = (SELECT id FROM lists WHERE owner = $1 AND name = $2) "
        "AND m.status = 'subscribed' AND c.owner = $1"
    )
    return sql, (owner, list_name)


async def snapshot(
    conn: Connection, run_id: int, audience: Audience,
    due_for: Callable[[object], float] | None,
) -> int:  # fmt: skip
    """Insert the run's rows from ``audience`` in the caller's transaction; how many."""
    sql, params = audience
    n_par = len(params)
    if due_for is None:
        return rows_of(await conn.execute(
            "INSERT INTO campaign_recipients (run_id, contact_id, address) "
            f"SELECT ${n_par + 1}::bigint, a.contact_id, a.address FROM ({sql}) AS a "
            "ON CONFLICT DO NOTHING",
            *params, run_id,
        ))  # fmt: skip
    return await _local_snapshot(conn, run_id, audience, due_for)


async def cancelled_runs(conn: Connection, campaign_id: int | None, limit: int) -> list[int]:
    """Cancelled runs (of one campaign, or all) that still have pending rows."""
    rows = await conn.fetch(
        "SELECT id FROM campaign_runs WHERE status = 'cancelled' "
        "AND ($1::bigint IS NULL OR campaign_id = $1) AND EXISTS (SELECT 1 FROM "
        "campaign_recipients WHERE run_id = campaign_runs.id AND state = 'pending') LIMIT $2",
        campaign_id, limit,
    )  # fmt: skip
    return [int(r[0]) for r in rows]


async def cancel_batch(conn: Connection, campaign_id: int | None, limit: int) -> int:
    """Up to ``limit`` pending rows of cancelled runs → cancelled (rows a feeding node
    holds locked are left for the next sweep); how many."""
    left = limit
    for run_id in await cancelled_runs(conn, campaign_id, limit):
        left -= rows_of(await conn.execute(
            "UPDATE campaign_recipients SET state = 'cancelled' WHERE run_id = $1 "
            "AND state = 'pending' AND contact_id IN (SELECT contact_id FROM "
            "campaign_recipients WHERE run_id = $1 AND state = 'pending' LIMIT $2 "
            "FOR UPDATE SKIP LOCKED)",
            run_id, left,
        ))  # fmt: skip
        if left <= 0:
            break
    return limit - left


async def _local_snapshot(
    conn: Connection, run_id: int, audience: Audience, due_for: Callable[[object], float]
) -> int:
    """The snapshot of a local-time run: each row due at its contact's zone's instant,
    computed in Python once per distinct zone name and joined in. A contact whose zone
    changed between the two statements gets -1 first, then its own due time."""
    sql, params = audience
    n_par = len(params)
    names = [
        str(r[0])
        for r in await conn.fetch(
            f"SELECT DISTINCT {_TZ} FROM ({sql}) AS a JOIN contacts c ON c.id = a.contact_id",
            *params,
        )
    ]
    dues = [due_for(name or None) for name in names]
    n = rows_of(await conn.execute(
        "INSERT INTO campaign_recipients (run_id, contact_id, address, due_at) "
        f"SELECT ${n_par + 1}::bigint, a.contact_id, a.address, coalesce(z.due, -1) "
        f"FROM ({sql}) AS a JOIN contacts c ON c.id = a.contact_id "
        f"LEFT JOIN unnest(${n_par + 2}::text[], ${n_par + 3}::float8[]) AS z(name, due) "
        f"ON z.name = {_TZ} ON CONFLICT DO NOTHING",
        *params, run_id, names, dues,
    ))  # fmt: skip
    late: list[Any] = await conn.fetch(
        f"SELECT r.contact_id, {_TZ} FROM campaign_recipients r JOIN contacts c "
        "ON c.id = r.contact_id WHERE r.run_id = $1 AND r.due_at = -1",
        run_id,
    )
    if late:
        await conn.execute(
            "UPDATE campaign_recipients r SET due_at = u.due FROM unnest($2::bigint[], "
            "$3::float8[]) AS u(cid, due) WHERE r.run_id = $1 AND r.contact_id = u.cid",
            run_id, [int(r[0]) for r in late], [due_for(str(r[1]) or None) for r in late],
        )  # fmt: skip
    return n
