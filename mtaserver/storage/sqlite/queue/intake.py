"""Writing accepted messages into the queue, inside the caller's transaction.

One function serves ``Spool.enqueue`` (one message) and ``Spool.enqueue_many`` (every
personalization of an HTTP send request in one transaction): a message, its recipients
and its ``accepted`` event land together or not at all. A message of a send batch that is
paused is stored held, one of a cancelled batch final and never sent.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mtaserver.model import Event, PreparedMessage, RecipientState
from mtaserver.storage.sqlite.events import insert_events
from mtaserver.storage.sqlite.queue.maintenance import drop_body_if_done
from mtaserver.storage.sqlite.queue.values import BodyCodec, domain_of

CANCELLED = "cancelled: batch {batch} was cancelled"


def batch_status(conn: sqlite3.Connection, batch_id: str) -> str | None:
    row = conn.execute("SELECT status FROM batches WHERE id=?", (batch_id,)).fetchone()
    return None if row is None else row[0]


def insert_message(conn: sqlite3.Connection, msg: PreparedMessage, codec: BodyCodec) -> list[Event]:
    """Insert one message and its recipients; returns the events to record with it."""
    status = batch_status(conn, msg.batch_id) if msg.batch_id else None
    due = msg.received_at if msg.not_before is None else msg.not_before
    conn.execute(
        "INSERT INTO messages(id, sender, user, client_ip, received_at, size, "
        "message_id, campaign, dsn, is_dsn, body, batch_id, release_at) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            msg.queue_id, msg.sender, msg.user, msg.client_ip, msg.received_at, len(msg.data),
            msg.message_id, msg.campaign, int(msg.dsn), int(msg.is_dsn),
            codec.encode(msg.data), msg.batch_id, msg.not_before,
        ),
    )  # fmt: skip
    live = RecipientState.HELD if status == "pause" else RecipientState.QUEUED
    rows = []
    events: list[Event] = []
    for i, r in enumerate(msg.recipients):
        state, reply = live, ""
        if r.suppressed:
            state = RecipientState.SUPPRESSED
            events.append(_event("suppressed", msg, r.address, ("reason", r.suppressed), i))
        elif status == "cancel":
            state, reply = RecipientState.SUPPRESSED, CANCELLED.format(batch=msg.batch_id)
            events.append(_event("cancelled", msg, r.address, ("batch_id", msg.batch_id), i))
        body = None if r.data is None or state.value == "suppressed" else codec.encode(r.data)
        rows.append(
            (msg.queue_id, i, r.address, domain_of(r.address), state.value, due, body,
             msg.received_at, reply)
        )  # fmt: skip
    conn.executemany(
        "INSERT INTO recipients(queue_id, idx, address, domain, state, next_attempt, "
        "body, updated_at, last_reply) VALUES (?,?,?,?,?,?,?,?,?)",
        rows,
    )
    data: list[tuple[str, str | int | float | bool | None]] = [
        ("user", msg.user),
        ("client_ip", msg.client_ip),
        ("size", len(msg.data)),
        ("recipients", len(msg.recipients)),
        ("sender", msg.sender),
        ("campaign", msg.campaign),
    ]
    if msg.not_before is not None:
        data.append(("send_at", msg.not_before))
    if msg.batch_id is not None:
        data.append(("batch_id", msg.batch_id))
    accepted = Event(type="accepted", at=msg.received_at, queue_id=msg.queue_id, data=tuple(data))
    if events:
        drop_body_if_done(conn, msg.queue_id)
    return [accepted, *events]


def insert_messages(
    conn: sqlite3.Connection,
    messages: Sequence[PreparedMessage],
    events: Sequence[Event],
    codec: BodyCodec,
) -> None:
    """Every message, then every event (theirs and the caller's), in the open transaction."""
    recorded: list[Event] = []
    for msg in messages:
        recorded.extend(insert_message(conn, msg, codec))
    insert_events(conn, [*recorded, *events])


def _event(
    kind: str, msg: PreparedMessage, rcpt: str, item: tuple[str, str | None], idx: int
) -> Event:
    return Event(
        type=kind, at=msg.received_at, queue_id=msg.queue_id, recipient=rcpt,
        data=(item, ("idx", idx)),
    )  # fmt: skip
