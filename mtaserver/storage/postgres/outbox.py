"""The webhook outbox on PostgreSQL: the only writer of ``webhook_outbox`` and
``webhook_endpoints``.

The same rows and order as :mod:`mtaserver.storage.sqlite.outbox` (its values are reused),
filled by the trigger of migration 0055 in the transaction of each event, whichever node
writes it. Several nodes dispatch from the one outbox, so :meth:`PgWebhookOutbox.due`
leases what it returns: the rows are taken with ``FOR UPDATE SKIP LOCKED`` and their
``next_attempt`` moved to the lease's expiry, so no other node POSTs them meanwhile; a node
that dies mid-POST has its rows sent again by another once the lease runs out (at least
once, as on one node). The ids this node leased and has not settled are kept here, so
the dispatcher's request size (it counts its own rows in flight) leases only what it sends.

Every node must carry the same ``[[webhooks]]``: :meth:`sync` makes the endpoints match
the config of the node that runs it. A node without webhooks runs no dispatcher and leaves
them alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtaserver.config.webhooks import WebhookConfig
from mtaserver.storage.postgres.db import Connection, PgDatabase
from mtaserver.storage.sqlite.outbox import (
    Backlog,
    MessageContext,
    OutboxItem,
    Settlement,
    event_body,
    json_field,
    stored_event,
)

LEASE = 300.0  # seconds a node holds the rows it POSTs (far above a POST's timeout)

_TRIGGER = (
    "CREATE TRIGGER events_webhook_outbox AFTER INSERT ON events "
    "FOR EACH ROW EXECUTE FUNCTION events_webhook_outbox()"
)

_DUE = """
WITH due AS (
    SELECT id FROM webhook_outbox
    WHERE webhook = $1 AND state = 'pending' AND next_attempt <= $2
    ORDER BY next_attempt, id LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_outbox o SET next_attempt = $4 FROM due WHERE o.id = due.id
RETURNING o.id, o.event_id, o.queue_id, o.attempts, o.created_at
"""


def _rows(status: str) -> int:
    return int(status.split()[-1])


class PgWebhookOutbox:
    """The cluster's outbox: what is due (leased to this node), and settling rows."""

    def __init__(self, db: PgDatabase, *, lease: float = LEASE) -> None:
        self.db = db
        self.lease = lease
        self._held: dict[str, set[int]] = {}  # webhook → ids leased here, not yet settled

    async def prune_failed(self, before: float, limit: int) -> int:
        """Retention: delete up to ``limit`` given-up deliveries created before ``before``."""
        async with self.db.transaction() as conn:
            return _rows(await conn.execute(
                "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox "
                "WHERE state='failed' AND created_at < $1 LIMIT $2)",
                before, limit,
            ))  # fmt: skip

    async def sync(self, hooks: Sequence[WebhookConfig]) -> int:
        """Make ``webhook_endpoints`` match the config; returns outbox rows dropped."""
        names = [h.name for h in hooks]
        async with self.db.transaction() as conn:
            await conn.execute("LOCK TABLE webhook_endpoints IN EXCLUSIVE MODE")  # nodes at once
            dropped = _rows(await conn.execute(
                "DELETE FROM webhook_outbox WHERE NOT (webhook = ANY($1::text[]))", names
            ))  # fmt: skip
            await conn.execute(
                "DELETE FROM webhook_endpoints WHERE NOT (name = ANY($1::text[]))", names
            )
            await conn.executemany(
                "INSERT INTO webhook_endpoints(name, types) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET types=excluded.types",
                [(h.name, "," + ",".join(h.events) + "," if h.events else "*") for h in hooks],
            )
            await conn.execute("DROP TRIGGER IF EXISTS events_webhook_outbox ON events")
            if hooks:
                await conn.execute(_TRIGGER)
        return dropped

    async def due(
        self, webhook: str, now: float, limit: int, *, context: bool = False
    ) -> list[OutboxItem]:
        """Pending rows due by ``now``, oldest first, leased to this node; ``context`` adds
        each one's message. ``limit`` counts the rows this node still holds (the dispatcher
        asks for its free slots plus what it has in flight)."""
        held = self._held.setdefault(webhook, set())
        want = limit - len(held)
        if want <= 0:
            return []
        async with self.db.transaction() as conn:
            rows = await conn.fetch(_DUE, webhook, now, want, now + self.lease)
            rows = sorted(rows, key=lambda r: (r[0],))
            events = {
                int(e[0]): tuple(e)
                for e in await conn.fetch(
                    "SELECT id, at, type, queue_id, recipient, data FROM events "
                    "WHERE id = ANY($1::bigint[])",
                    [r[1] for r in rows],
                )
            }
            out = []
            for r in rows:
                ev = events.get(int(r[1]))
                ctx = await _context(conn, ev) if context and ev is not None else None
                out.append(OutboxItem(
                    id=int(r[0]), webhook=webhook, event_id=int(r[1]), queue_id=r[2],
                    attempts=int(r[3]), created_at=float(r[4]),
                    body=None if ev is None else event_body(ev, webhook),
                    event=None if ev is None else stored_event(ev), context=ctx,
                ))  # fmt: skip
        held.update(i.id for i in out)
        return out

    async def next_due(self, busy: Sequence[int] = ()) -> float | None:
        """When the next pending row not in ``busy`` (being sent) is due."""
        async with self.db.connection() as conn:
            value = await conn.fetchval(
                "SELECT min(next_attempt) FROM webhook_outbox WHERE state='pending' "
                "AND NOT (id = ANY($1::bigint[]))",
                list(busy),
            )
        return None if value is None else float(value)

    async def settle(self, done: Sequence[Settlement]) -> None:
        """Record many POST outcomes in one transaction."""
        async with self.db.transaction() as conn:
            for s in done:
                if s.outcome == "delivered":
                    await conn.execute("DELETE FROM webhook_outbox WHERE id=$1", s.item.id)
                    await _promote(conn, s.item, s.at)
                elif s.outcome == "failed":
                    await conn.execute(
                        "UPDATE webhook_outbox SET state='failed', attempts=attempts+1, "
                        "next_attempt=$1, last_error=$2 WHERE id=$3",
                        s.at, s.error[:500], s.item.id,
                    )  # fmt: skip
                    await _promote(conn, s.item, s.at)
                else:
                    await conn.execute(
                        "UPDATE webhook_outbox SET attempts=attempts+1, next_attempt=$1, "
                        "last_error=$2 WHERE id=$3",
                        s.at, s.error[:500], s.item.id,
                    )  # fmt: skip
        for s in done:
            self._held.get(s.item.webhook, set()).discard(s.item.id)

    async def backlog(self) -> list[Backlog]:
        """Rows per webhook and state (metrics, CLI)."""
        async with self.db.connection() as conn:
            counts: dict[str, dict[str, int]] = {
                r[0]: {} for r in await conn.fetch("SELECT name FROM webhook_endpoints")
            }
            for name, state, n in await conn.fetch(
                "SELECT webhook, state, count(*) FROM webhook_outbox GROUP BY webhook, state"
            ):
                counts.setdefault(name, {})[state] = int(n)
        return [
            Backlog(name, c.get("pending", 0), c.get("waiting", 0), c.get("failed", 0))
            for name, c in sorted(counts.items())
        ]

    async def retry_failed(self, webhook: str | None = None, now: float = 0.0) -> int:
        """Put given-up rows back (operator, after fixing the receiver); order is kept."""
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                "SELECT id, webhook, queue_id FROM webhook_outbox WHERE state='failed' "
                "AND ($1::text IS NULL OR webhook = $1) ORDER BY id FOR UPDATE",
                webhook,
            )
            for row_id, hook, qid in rows:
                blocked = qid is not None and await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM webhook_outbox WHERE webhook=$1 AND "
                    "queue_id=$2 AND id<$3 AND state IN ('pending','waiting'))",
                    hook, qid, row_id,
                )  # fmt: skip
                if not blocked and qid is not None:
                    # Earlier-sent later rows of the message must wait behind this one again.
                    await conn.execute(
                        "UPDATE webhook_outbox SET state='waiting' WHERE webhook=$1 "
                        "AND queue_id=$2 AND id>$3 AND state='pending'",
                        hook, qid, row_id,
                    )  # fmt: skip
                await conn.execute(
                    "UPDATE webhook_outbox SET state=$1, attempts=0, next_attempt=$2, "
                    "created_at=$2 WHERE id=$3",
                    "waiting" if blocked else "pending", now, row_id,
                )  # fmt: skip
        return len(rows)


async def _context(conn: Connection, row: Sequence[Any]) -> MessageContext | None:
    """The message an events row belongs to (None for an event of no message)."""
    _, _, type_, queue_id, recipient, data = row
    if queue_id is None:
        return None
    msg = await conn.fetchrow(
        "SELECT message_id, campaign, is_dsn FROM messages WHERE id=$1", queue_id
    )
    api_raw = await conn.fetchval(
        "SELECT data FROM events WHERE queue_id=$1 AND recipient IS NULL "
        "AND type='api_message' ORDER BY id LIMIT 1",
        queue_id,
    )
    api = json_field(api_raw)
    api = api if isinstance(api, dict) else {}
    categories = json_field(api.get("categories"))
    custom = json_field(api.get("custom_args"))
    group = api.get("asm_group_id")
    if type_ == "accepted":
        rcpts = await conn.fetch(
            "SELECT idx, address FROM recipients WHERE queue_id=$1 ORDER BY idx", queue_id
        )
    elif recipient is None:
        rcpts = []
    else:
        own = json_field(data)
        idx = own.get("idx") if isinstance(own, dict) else None
        if isinstance(idx, int):
            rcpts = [(idx, recipient)]
        else:
            rcpts = await conn.fetch(
                "SELECT idx, address FROM recipients WHERE queue_id=$1 AND address=$2 LIMIT 1",
                queue_id, recipient,
            )  # fmt: skip
    xid = api.get("x_message_id")
    return MessageContext(
        message_id=(msg[0] or None) if msg else None,
        campaign=msg[1] if msg else None,
        is_dsn=bool(msg[2]) if msg else False,
        x_message_id=xid if isinstance(xid, str) else None,
        categories=tuple(str(c) for c in categories) if isinstance(categories, list) else (),
        custom_args=tuple((str(k), str(v)) for k, v in custom.items())
        if isinstance(custom, dict)
        else (),
        asm_group_id=group if isinstance(group, int) and not isinstance(group, bool) else None,
        recipients=tuple((int(i), str(a)) for i, a in rcpts),
    )


async def _promote(conn: Connection, item: OutboxItem, now: float) -> None:
    """Make the next waiting row of the same message sendable."""
    if item.queue_id is None:
        return
    await conn.execute(
        "UPDATE webhook_outbox SET state='pending', next_attempt=$1 WHERE id = ("
        "SELECT min(id) FROM webhook_outbox WHERE webhook=$2 AND queue_id=$3 AND state='waiting')"
        " AND NOT EXISTS (SELECT 1 FROM webhook_outbox WHERE webhook=$2 AND queue_id=$3 "
        "AND state='pending')",
        now, item.webhook, item.queue_id,
    )  # fmt: skip
