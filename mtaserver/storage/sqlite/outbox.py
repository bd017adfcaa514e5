"""The webhook outbox: the only writer of ``webhook_outbox`` and ``webhook_endpoints``.

A trigger on ``events`` (created by :meth:`WebhookOutbox.sync` while a webhook is
configured) adds one outbox row per interested webhook in the same transaction as the
event. Only the oldest unsettled row of a message is ``pending``; later ones ``wait`` and
are promoted when it is settled. The dispatcher (``mtaserver.webhooks``) does the sending.
A webhook in SendGrid's format also gets each event's :class:`MessageContext` (the Message-ID,
the HTTP send API's ``api_message`` event, the recipients), read in the same query pass.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mtaserver.config.webhooks import WebhookConfig
from mtaserver.model import StoredEvent
from mtaserver.storage.sqlite.db import Database


@dataclass(frozen=True, slots=True)
class MessageContext:
    """What an event of a message needs beyond its own row to be shown in SendGrid's shape.

    ``x_message_id`` … ``asm_group_id`` come from the send API's ``api_message`` event (None
    or empty for SMTP mail); ``recipients`` are (idx, address): every recipient for an
    ``accepted`` event, the event's own recipient otherwise (empty once retention removed
    the message)."""

    message_id: str | None
    campaign: str | None
    is_dsn: bool  # a bounce we generated to the sender (SendGrid has no such mail)
    x_message_id: str | None
    categories: tuple[str, ...]
    custom_args: tuple[tuple[str, str], ...]
    asm_group_id: int | None
    recipients: tuple[tuple[int, str], ...]


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
    event: StoredEvent | None = None
    context: MessageContext | None = None  # only when asked for (SendGrid format)


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

    async def due(
        self, webhook: str, now: float, limit: int, *, context: bool = False
    ) -> list[OutboxItem]:
        """Pending rows due by ``now``, oldest first; ``context`` adds each one's message."""

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
                    event=None if r[5] is None else stored_event(r[5:]),
                    context=_context(conn, r[5:]) if context and r[5] is not None else None,
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


def json_field(raw: object) -> Any:
    """A JSON text column, or None when empty or not JSON (both backends read it)."""
    try:
        return json.loads(raw) if isinstance(raw, str) and raw else None
    except ValueError:
        return None


def stored_event(row: Sequence[Any]) -> StoredEvent:
    event_id, at, type_, queue_id, recipient, data = row
    payload = json_field(data)
    return StoredEvent(event_id, at, type_, queue_id, recipient,
                       payload if isinstance(payload, dict) else {})  # fmt: skip


def _context(conn: sqlite3.Connection, row: Sequence[Any]) -> MessageContext | None:
    """The message an events row belongs to (None for an event of no message)."""
    _, _, type_, queue_id, recipient, data = row
    if queue_id is None:
        return None
    msg = conn.execute(
        "SELECT message_id, campaign, is_dsn FROM messages WHERE id=?", (queue_id,)
    ).fetchone()
    api_row = conn.execute(
        "SELECT data FROM events WHERE queue_id=? AND recipient IS NULL AND type='api_message' "
        "ORDER BY id LIMIT 1",
        (queue_id,),
    ).fetchone()
    api = json_field(api_row[0]) if api_row else None
    api = api if isinstance(api, dict) else {}
    categories = json_field(api.get("categories"))
    custom = json_field(api.get("custom_args"))
    group = api.get("asm_group_id")
    if type_ == "accepted":
        rcpts = conn.execute(
            "SELECT idx, address FROM recipients WHERE queue_id=? ORDER BY idx", (queue_id,)
        ).fetchall()
    elif recipient is None:
        rcpts = []
    else:
        own = json_field(data)
        idx = own.get("idx") if isinstance(own, dict) else None
        if isinstance(idx, int):
            rcpts = [(idx, recipient)]
        else:
            rcpts = conn.execute(
                "SELECT idx, address FROM recipients WHERE queue_id=? AND address=? LIMIT 1",
                (queue_id, recipient),
            ).fetchall()
    return MessageContext(
        message_id=(msg[0] or None) if msg else None,
        campaign=msg[1] if msg else None,
        is_dsn=bool(msg[2]) if msg else False,
        x_message_id=api.get("x_message_id") if isinstance(api.get("x_message_id"), str) else None,
        categories=tuple(str(c) for c in categories) if isinstance(categories, list) else (),
        custom_args=tuple((str(k), str(v)) for k, v in custom.items())
        if isinstance(custom, dict)
        else (),
        asm_group_id=group if isinstance(group, int) and not isinstance(group, bool) else None,
        recipients=tuple((int(i), str(a)) for i, a in rcpts),
    )


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
