"""The spool: intake, leases and outcomes of the durable queue.

``enqueue`` returns only after the message, its recipients and its ``accepted`` event are
committed (group commit through :class:`~mtaserver.storage.sqlite.db.Database`).
``claim_due`` leases due recipients: a leased row's ``next_attempt`` holds its lease
expiry, so a crash leaves rows that the next ``release_expired`` (or start-up) puts back —
delivery is at least once, never zero times. Claiming walks the ``(state, next_attempt)``
index and stops at ``limit``, so it costs the same whatever the queue's size.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from mtaserver.clock import Clock, SystemClock
from mtaserver.model import (
    FINAL_STATES,
    DeliveryJob,
    Event,
    JobRecipient,
    PreparedMessage,
    RecipientUpdate,
)
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import insert_events
from mtaserver.storage.sqlite.queue.batches import BatchOps
from mtaserver.storage.sqlite.queue.intake import insert_messages
from mtaserver.storage.sqlite.queue.maintenance import Maintenance, drop_body_if_done
from mtaserver.storage.sqlite.queue.operator import OperatorOps
from mtaserver.storage.sqlite.queue.values import (
    BodyCodec,
    IdentityCodec,
    MessageInfo,
    RecipientInfo,
)


class Spool(OperatorOps, Maintenance, BatchOps):
    """``codec`` stores bodies (identity by default; app may swap it on SIGHUP).

    ``keep_bodies`` > 0 keeps bodies after every recipient is final; the retention service
    drops them once that many seconds have passed.
    """

    def __init__(
        self,
        db: Database,
        codec: BodyCodec | None = None,
        *,
        keep_bodies: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        self.db = db
        self._clock: Clock = clock or SystemClock()
        self.codec: BodyCodec = codec or IdentityCodec()
        self.keep_bodies = keep_bodies

    # -- intake --------------------------------------------------------------------------
    async def enqueue(self, msg: PreparedMessage, events: Sequence[Event] = ()) -> None:
        """Store the message durably. Raises StorageError; then nothing was stored."""
        await self.enqueue_many((msg,), events)

    async def enqueue_many(
        self,
        messages: Sequence[PreparedMessage],
        events: Sequence[Event] = (),
        *,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Store every message durably in ONE transaction: all of them or none.

        ``also`` (another table owner's write, e.g. the idempotent answer of an HTTP
        request) runs in the same transaction after the messages; if it raises, nothing of
        the call is stored and the exception propagates.
        """
        codec = self.codec

        def op(conn: sqlite3.Connection) -> None:
            insert_messages(conn, messages, events, codec)
            if also is not None:
                also(conn)

        await self.db.write(op)

    # -- scheduling ----------------------------------------------------------------------
    async def claim_due(self, now: float, limit: int, lease_seconds: float) -> list[DeliveryJob]:
        """Lease up to ``limit`` due recipients; one job per (message body, domain)."""
        lease_until = now + lease_seconds
        codec = self.codec

        def op(conn: sqlite3.Connection) -> list[DeliveryJob]:
            rows = conn.execute(
                "SELECT rowid, queue_id, idx, address, domain, attempts, body IS NOT NULL "
                "FROM recipients WHERE state='queued' AND next_attempt <= ? "
                "ORDER BY next_attempt LIMIT ?",
                (now, limit),
            ).fetchall()
            if not rows:
                return []
            conn.executemany(
                "UPDATE recipients SET state='leased', next_attempt=?, updated_at=? WHERE rowid=?",
                [(lease_until, now, r[0]) for r in rows],
            )
            groups: dict[tuple[str, str, int], list[Any]] = {}
            for rowid, qid, idx, address, domain, attempts, own_body in rows:
                key = (qid, domain, idx if own_body else -1)
                groups.setdefault(key, []).append((rowid, idx, address, attempts))
            jobs = []
            msg_cache: dict[str, tuple[Any, ...]] = {}
            for (qid, domain, own_idx), members in groups.items():
                if qid not in msg_cache:
                    msg_cache[qid] = conn.execute(
                        "SELECT sender, received_at, user, dsn, is_dsn, body, release_at "
                        "FROM messages WHERE id=?",
                        (qid,),
                    ).fetchone()
                sender, received_at, user, dsn, is_dsn, body, release_at = msg_cache[qid]
                if own_idx >= 0:
                    body = conn.execute(
                        "SELECT body FROM recipients WHERE rowid=?", (members[0][0],)
                    ).fetchone()[0]
                jobs.append(
                    DeliveryJob(
                        queue_id=qid,
                        sender=sender,
                        domain=domain,
                        recipients=tuple(
                            JobRecipient(idx=i, address=a, attempts=n) for _, i, a, n in members
                        ),
                        data=codec.decode(body),
                        received_at=received_at,
                        lease_until=lease_until,
                        user=user,
                        dsn=bool(dsn),
                        is_dsn=bool(is_dsn),
                        release_at=release_at,
                    )
                )
            return jobs

        return await self.db.write(op)

    async def record(
        self, updates: Sequence[RecipientUpdate], events: Sequence[Event] = ()
    ) -> Sequence[int]:
        """Apply attempt outcomes (and their events) in one transaction; the events' ids.

        When every recipient of a message is final, its bodies are dropped: the queue keeps
        what it needs to deliver, not copies of delivered mail (with ``keep_bodies`` set,
        the retention service drops them later).
        """
        now = self._clock.now()
        keep = self.keep_bodies > 0

        def op(conn: sqlite3.Connection) -> Sequence[int]:
            conn.executemany(
                "UPDATE recipients SET state=?, next_attempt=coalesce(?, next_attempt), "
                "attempts=attempts+?, last_reply=?, updated_at=? WHERE queue_id=? AND idx=?",
                [
                    (
                        u.state.value,
                        u.next_attempt,
                        1 if u.attempted else 0,
                        u.reply,
                        now,
                        u.queue_id,
                        u.idx,
                    )
                    for u in updates
                ],
            )
            if not keep:
                for u in updates:
                    if u.state in FINAL_STATES:
                        conn.execute(
                            "UPDATE recipients SET body=NULL WHERE queue_id=? AND idx=?",
                            (u.queue_id, u.idx),
                        )
                for qid in {u.queue_id for u in updates}:
                    drop_body_if_done(conn, qid)
            return insert_events(conn, events)

        return await self.db.write(op)

    async def release_leases(self, now: float | None = None) -> int:
        """Put every leased recipient back (start-up after a crash, graceful stop)."""
        t = self._clock.now() if now is None else now

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE recipients SET state='queued', next_attempt=?, updated_at=? "
                "WHERE state='leased'",
                (t, t),
            )
            return cur.rowcount

        return await self.db.write(op)

    async def release_expired(self, now: float) -> int:
        """Put back leases whose holder vanished (lease expiry passed)."""

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE recipients SET state='queued', next_attempt=?, updated_at=? "
                "WHERE state='leased' AND next_attempt < ?",
                (now, now, now),
            )
            return cur.rowcount

        return await self.db.write(op)

    async def defer_domain(self, domain: str, until: float) -> int:
        """Push every queued recipient of a suspended destination to ``until``."""

        def op(conn: sqlite3.Connection) -> int:
            # ``+next_attempt`` keeps the planner on recipients_domain: by recipients_due
            # (state, next_attempt) each suspension walked every queued recipient of every
            # destination, and a busy queue's writer spent its time there.
            cur = conn.execute(
                "UPDATE recipients SET next_attempt=? WHERE domain=? AND state='queued' "
                "AND +next_attempt < ?",
                (until, domain.lower(), until),
            )
            return cur.rowcount

        return await self.db.write(op)

    async def show(self, queue_id: str) -> MessageInfo | None:
        def fn(conn: sqlite3.Connection) -> MessageInfo | None:
            m = conn.execute(
                "SELECT id, sender, user, client_ip, received_at, size, message_id, campaign "
                "FROM messages WHERE id=?",
                (queue_id,),
            ).fetchone()
            if m is None:
                return None
            rcpts = conn.execute(
                "SELECT idx, address, state, attempts, next_attempt, last_reply FROM recipients "
                "WHERE queue_id=? ORDER BY idx",
                (queue_id,),
            ).fetchall()
            return MessageInfo(
                queue_id=m[0], sender=m[1], user=m[2], client_ip=m[3], received_at=m[4],
                size=m[5], message_id=m[6], campaign=m[7],
                recipients=tuple(RecipientInfo(*r) for r in rcpts),
            )  # fmt: skip

        return await self.db.read(fn)

    async def find_by_message_id(self, message_id: str) -> tuple[tuple[str, int], ...]:
        """(queue_id, idx) of each recipient of the messages with this Message-ID (≤ 1000)."""

        def fn(conn: sqlite3.Connection) -> tuple[tuple[str, int], ...]:
            rows = conn.execute(
                "SELECT r.queue_id, r.idx FROM messages m JOIN recipients r ON r.queue_id = m.id "
                "WHERE m.message_id IN (?, ?) ORDER BY r.idx LIMIT 1000",
                (message_id, f"<{message_id}>"),
            ).fetchall()
            return tuple((str(q), int(i)) for q, i in rows)

        return await self.db.read(fn)

    async def dsn_sent(self, queue_id: str, action: str) -> bool:
        """Whether a DSN with this action ("failed", "delayed") was queued for the message."""

        def fn(conn: sqlite3.Connection) -> bool:
            rows = conn.execute(
                "SELECT data FROM events WHERE queue_id=? AND type='dsn_sent'", (queue_id,)
            ).fetchall()
            return any(json.loads(r[0]).get("action") == action for r in rows)

        return await self.db.read(fn)

    async def body(self, queue_id: str) -> bytes | None:
        codec = self.codec

        def fn(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT body FROM messages WHERE id=?", (queue_id,)).fetchone()
            return None if row is None or row[0] is None else codec.decode(row[0])

        return await self.db.read(fn)
