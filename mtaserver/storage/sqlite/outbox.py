"""The webhook outbox: the only writer of ``webhook_outbox`` and ``webhook_endpoints``.

A trigger on ``events`` (created by :meth:`WebhookOutbox.sync` while a webhook is
configured) adds one outbox row per interested webhook in the same transaction as the
event. Only the oldest unsettled row of a message is ``pending``; later ones ``wait`` and
are promoted when it is settled. The dispatcher (``mtaserver.webhooks``) does the sending.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mtaserver.config.webhooks import WebhookConfig
from mtaserver.storage.sqlite.db import Database


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One pending row with its event (``event`` None when the event was erased meanwhile)."""

    id: int
    webhook: str
    event_id: int
    queue_id: str | None
    attempts: int
    created_at: float
    body: bytes | None


@dataclass(frozen=True, slots=True)
class Settlement:
    """What became of one POST: ``delivered``, ``retry`` (at ``at``) or ``failed``."""

    item: OutboxItem
    outcome: str
    at: float
    error: str = ""


@dataclass(frozen=True, slots=True)
class Backlog:
    webhook: str
    pending: int
    waiting: int
    failed: int


def event_body(row: Sequence[Any], webhook: str) -> bytes:
    """The JSON POSTed for one events row (id, at, type, queue_id, recipient, data)."""
    event_id, at, type_, queue_id, recipient, data = row
    try:
        payload = json.loads(data) if data else {}
    except ValueError:
        payload = {}
    return json.dumps(
        {
            "id": event_id,
            "type": type_,
            "at": at,
            "queue_id": queue_id,
            "recipient": recipient,
            "data": payload,
            "webhook": webhook,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


# Fills the outbox in the same transaction as each event (see the module docstring and
# migration 0055). Exists only while at least one webhook is configured: an MTA without
# webhooks pays nothing per event.
OUTBOX_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS events_webhook_outbox AFTER INSERT ON events
BEGIN
    INSERT INTO webhook_outbox(webhook, event_id, queue_id, state, created_at, next_attempt)
    SELECT w.name, NEW.id, NEW.queue_id,
           CASE WHEN NEW.queue_id IS NOT NULL AND EXISTS (
                    SELECT 1 FROM webhook_outbox o
                    WHERE o.webhook = w.name AND o.queue_id = NEW.queue_id
                      AND o.state IN ('pending', 'waiting'))
                THEN 'waiting' ELSE 'pending' END,
           (julianday('now') - 2440587.5) * 86400.0,
           0
    FROM webhook_endpoints w
    WHERE w.types = '*' OR instr(w.types, ',' || NEW.type || ',') > 0;
END
"""


def _drop_failed_outbox(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
    return conn.execute(
        "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox "
        "WHERE state='failed' AND created_at < ? LIMIT ?)",
        (cutoff, limit),
    ).rowcount


class WebhookOutbox:
    """The ``webhook_outbox`` table: what is due, and settling rows."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def prune_failed(self, before: float, limit: int) -> int:
        """Retention: delete up to ``limit`` given-up deliveries created before ``before``."""
        return await self.db.write(lambda conn: _drop_failed_outbox(conn, before, limit))

    async def sync(self, hooks: Sequence[WebhookConfig]) -> int:
        """Make ``webhook_endpoints`` match the config; returns outbox rows dropped."""

        def op(conn: sqlite3.Connection) -> int:
            names = [h.name for h in hooks]
            marks = ",".join("?" * len(names))
            dropped = conn.execute(
                f"DELETE FROM webhook_outbox WHERE webhook NOT IN ({marks})", names
            ).rowcount
            conn.execute(f"DELETE FROM webhook_endpoints WHERE name NOT IN ({marks})", names)
            conn.executemany(
                "INSERT INTO webhook_endpoints(name, types) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET types=excluded.types",
                [(h.name, "," + ",".join(h.events) + "," if h.events else "*") for h in hooks],
            )
            if hooks:
                conn.execute(OUTBOX_TRIGGER)
            else:
                conn.execute("DROP TRIGGER IF EXISTS events_webhook_outbox")
            return int(dropped)

        return await self.db.write(op)

    async def due(self, webhook: str, now: float, limit: int) -> list[OutboxItem]:
        def fn(conn: sqlite3.Connection) -> list[OutboxItem]:
            rows = conn.execute(
                "SELECT o.id, o.event_id, o.queue_id, o.attempts, o.created_at, "
                "e.id, e.at, e.type, e.queue_id, e.recipient, e.data "
                "FROM webhook_outbox o LEFT JOIN events e ON e.id = o.event_id "
                "WHERE o.webhook=? AND o.state='pending' AND o.next_attempt <= ? "
                "ORDER BY o.next_attempt, o.id LIMIT ?",
                (webhook, now, limit),
            ).fetchall()
            return [
                OutboxItem(
                    id=r[0],
                    webhook=webhook,
                    event_id=r[1],
                    queue_id=r[2],
                    attempts=r[3],
                    created_at=r[4],
                    body=None if r[5] is None else event_body(r[5:], webhook),
                )
                for r in rows
            ]

        return await self.db.read(fn)

    async def next_due(self, busy: Sequence[int] = ()) -> float | None:
        """When the next pending row not in ``busy`` (being sent) is due."""
        ids = list(busy)

        def fn(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT min(next_attempt) FROM webhook_outbox WHERE state='pending' "
                f"AND id NOT IN ({','.join('?' * len(ids))})",
                ids,
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self.db.read(fn)

    async def settle(self, done: Sequence[Settlement]) -> None:
        """Record many POST outcomes in one write (one commit for a burst of replies)."""

        def op(conn: sqlite3.Connection) -> None:
            for s in done:
                if s.outcome == "delivered":
                    conn.execute("DELETE FROM webhook_outbox WHERE id=?", (s.item.id,))
                    _promote(conn, s.item, s.at)
                elif s.outcome == "failed":
                    conn.execute(
                        "UPDATE webhook_outbox SET state='failed', attempts=attempts+1, "
                        "next_attempt=?, last_error=? WHERE id=?",
                        (s.at, s.error[:500], s.item.id),
                    )
                    _promote(conn, s.item, s.at)
                else:
                    conn.execute(
                        "UPDATE webhook_outbox SET attempts=attempts+1, next_attempt=?, "
                        "last_error=? WHERE id=?",
                        (s.at, s.error[:500], s.item.id),
                    )

        await self.db.write(op)

    async def backlog(self) -> list[Backlog]:
        """Rows per webhook and state (metrics, CLI)."""

        def fn(conn: sqlite3.Connection) -> list[Backlog]:
            counts: dict[str, dict[str, int]] = {}
            for (name,) in conn.execute("SELECT name FROM webhook_endpoints ORDER BY name"):
                counts[name] = {}
            for name, state, n in conn.execute(
                "SELECT webhook, state, count(*) FROM webhook_outbox GROUP BY webhook, state"
            ):
                counts.setdefault(name, {})[state] = n
            return [
                Backlog(name, c.get("pending", 0), c.get("waiting", 0), c.get("failed", 0))
                for name, c in sorted(counts.items())
            ]

        return await self.db.read(fn)

    async def retry_failed(self, webhook: str | None = None, now: float = 0.0) -> int:
        """Put given-up rows back (operator, after fixing the receiver); order is kept."""

        def op(conn: sqlite3.Connection) -> int:
            where = "state='failed'" + (" AND webhook=?" if webhook else "")
            args: tuple[Any, ...] = (webhook,) if webhook else ()
            rows = conn.execute(
                f"SELECT id, webhook, queue_id FROM webhook_outbox WHERE {where} ORDER BY id",
                args,
            ).fetchall()
            for row_id, hook, qid in rows:
                blocked = (
                    qid is not None
                    and conn.execute(
                        "SELECT 1 FROM webhook_outbox WHERE webhook=? AND queue_id=? AND id<? "
                        "AND state IN ('pending','waiting') LIMIT 1",
                        (hook, qid, row_id),
                    ).fetchone()
                )
                if not blocked and qid is not None:
                    # Earlier-sent later rows of the message must wait behind this one again.
                    conn.execute(
                        "UPDATE webhook_outbox SET state='waiting' WHERE webhook=? "
                        "AND queue_id=? AND id>? AND state='pending'",
                        (hook, qid, row_id),
                    )
                conn.execute(
                    "UPDATE webhook_outbox SET state=?, attempts=0, next_attempt=?, "
                    "created_at=? WHERE id=?",
                    ("waiting" if blocked else "pending", now, now, row_id),
                )
            return len(rows)

        return await self.db.write(op)


def _promote(conn: sqlite3.Connection, item: OutboxItem, now: float) -> None:
    """Make the next waiting row of the same message sendable."""
    if item.queue_id is None:
        return
    conn.execute(
        "UPDATE webhook_outbox SET state='pending', next_attempt=? WHERE id = ("
        "SELECT min(id) FROM webhook_outbox WHERE webhook=? AND queue_id=? AND state='waiting')"
        " AND NOT EXISTS (SELECT 1 FROM webhook_outbox WHERE webhook=? AND queue_id=? "
        "AND state='pending')",
        (now, item.webhook, item.queue_id, item.webhook, item.queue_id),
    )
