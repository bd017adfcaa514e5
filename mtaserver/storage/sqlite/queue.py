"""The durable queue: the only writer of the ``messages`` and ``recipients`` tables.

``enqueue`` returns only after the message, its recipients and its ``accepted`` event are
committed (group commit through :class:`~mtaserver.storage.sqlite.db.Database`).
``claim_due`` leases due recipients: a leased row's ``next_attempt`` holds its lease
expiry, so a crash leaves rows that the next ``release_expired`` (or start-up) puts back —
delivery is at least once, never zero times. Claiming walks the ``(state, next_attempt)``
index and stops at ``limit``, so it costs the same whatever the queue's size.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mtaserver.clock import Clock, SystemClock
from mtaserver.model import (
    FINAL_STATES,
    FINAL_STATES_SQL,
    DeliveryJob,
    Event,
    JobRecipient,
    PreparedMessage,
    QueueGauges,
    RecipientState,
    RecipientUpdate,
)
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import insert_events

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_queue_id(now: float) -> str:
    """16 characters, time-ordered (48-bit milliseconds) plus 32 random bits, Crockford base32."""
    ms = int(now * 1000) & ((1 << 48) - 1)
    value = (ms << 32) | secrets.randbits(32)
    chars = []
    for _ in range(16):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class RecipientInfo:
    idx: int
    address: str
    state: str
    attempts: int
    next_attempt: float
    last_reply: str


@dataclass(frozen=True, slots=True)
class MessageInfo:
    queue_id: str
    sender: str
    user: str | None
    client_ip: str
    received_at: float
    size: int
    message_id: str
    campaign: str | None
    recipients: tuple[RecipientInfo, ...]


@dataclass(frozen=True, slots=True)
class QueueEntry:
    queue_id: str
    idx: int
    address: str
    domain: str
    state: str
    attempts: int
    next_attempt: float
    last_reply: str
    received_at: float
    sender: str


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """Non-final recipients by destination and age bucket (like Postfix's qshape)."""

    buckets: tuple[str, ...]  # bucket labels, e.g. ("5m", "10m", ...)
    rows: tuple[tuple[str, int, tuple[int, ...]], ...]  # (domain, total, counts per bucket)
    by_state: tuple[tuple[str, int], ...]


AGE_BUCKETS = ((300, "5m"), (600, "10m"), (1800, "30m"), (3600, "1h"), (14400, "4h"),
               (86400, "1d"), (432000, "5d"), (float("inf"), "older"))  # fmt: skip


class BodyCodec(Protocol):
    """How bodies are stored (``mtaserver.crypto`` encrypts them at rest)."""

    def encode(self, data: bytes) -> bytes: ...

    def decode(self, blob: bytes) -> bytes: ...


class IdentityCodec:
    def encode(self, data: bytes) -> bytes:
        return data

    def decode(self, blob: bytes) -> bytes:
        return blob


class Spool:
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

        codec = self.codec

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO messages(id, sender, user, client_ip, received_at, size, "
                "message_id, campaign, dsn, is_dsn, body) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    msg.queue_id,
                    msg.sender,
                    msg.user,
                    msg.client_ip,
                    msg.received_at,
                    len(msg.data),
                    msg.message_id,
                    msg.campaign,
                    int(msg.dsn),
                    int(msg.is_dsn),
                    codec.encode(msg.data),
                ),
            )
            conn.executemany(
                "INSERT INTO recipients(queue_id, idx, address, domain, state, next_attempt, "
                "body, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        msg.queue_id,
                        i,
                        r.address,
                        domain_of(r.address),
                        (
                            RecipientState.SUPPRESSED if r.suppressed else RecipientState.QUEUED
                        ).value,
                        msg.received_at,
                        None if r.data is None or r.suppressed else codec.encode(r.data),
                        msg.received_at,
                    )
                    for i, r in enumerate(msg.recipients)
                ],
            )
            dropped = [
                Event(
                    type="suppressed",
                    at=msg.received_at,
                    queue_id=msg.queue_id,
                    recipient=r.address,
                    data=(("reason", r.suppressed), ("idx", i)),
                )
                for i, r in enumerate(msg.recipients)
                if r.suppressed
            ]
            accepted = Event(
                type="accepted",
                at=msg.received_at,
                queue_id=msg.queue_id,
                data=(
                    ("user", msg.user),
                    ("client_ip", msg.client_ip),
                    ("size", len(msg.data)),
                    ("recipients", len(msg.recipients)),
                    ("sender", msg.sender),
                    ("campaign", msg.campaign),
                ),
            )
            insert_events(conn, [accepted, *dropped, *events])
            if dropped:
                drop_body_if_done(conn, msg.queue_id)

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
                        "SELECT sender, received_at, user, dsn, is_dsn, body FROM messages "
                        "WHERE id=?",
                        (qid,),
                    ).fetchone()
                sender, received_at, user, dsn, is_dsn, body = msg_cache[qid]
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
            cur = conn.execute(
                "UPDATE recipients SET next_attempt=? WHERE domain=? AND state='queued' "
                "AND next_attempt < ?",
                (until, domain.lower(), until),
            )
            return cur.rowcount

        return await self.db.write(op)

    # -- operator ops (CLI and admin API share these) -------------------------------------
    async def summary(self, now: float | None = None, top: int = 50) -> QueueSummary:
        t = self._clock.now() if now is None else now

        def fn(conn: sqlite3.Connection) -> QueueSummary:
            by_state = conn.execute(
                "SELECT state, count(*) FROM recipients GROUP BY state ORDER BY state"
            ).fetchall()
            rows = conn.execute(
                "SELECT r.domain, ? - m.received_at FROM recipients r JOIN messages m "
                f"ON m.id = r.queue_id WHERE r.state NOT IN {FINAL_STATES_SQL}",
                (t,),
            ).fetchall()
            per: dict[str, list[int]] = {}
            for domain, age in rows:
                counts = per.setdefault(domain, [0] * len(AGE_BUCKETS))
                for i, (limit, _) in enumerate(AGE_BUCKETS):
                    if age < limit:
                        counts[i] += 1
                        break
            ordered = sorted(per.items(), key=lambda kv: (-sum(kv[1]), kv[0]))[:top]
            return QueueSummary(
                buckets=tuple(label for _, label in AGE_BUCKETS),
                rows=tuple((d, sum(c), tuple(c)) for d, c in ordered),
                by_state=tuple((s, n) for s, n in by_state),
            )

        return await self.db.read(fn)

    async def list(
        self, *, domain: str | None = None, state: str | None = None, limit: int = 100,
        after: tuple[str, int] | None = None,
    ) -> list[QueueEntry]:  # fmt: skip
        """Recipients in queue order; by default only those not yet final."""
        clauses: list[str] = []
        params: list[Any] = []
        if domain:
            clauses.append("r.domain = ?")
            params.append(domain.lower())
        if state:
            clauses.append("r.state = ?")
            params.append(state)
        else:
            clauses.append(f"r.state NOT IN {FINAL_STATES_SQL}")
        if after:
            clauses.append("(r.queue_id, r.idx) > (?, ?)")
            params.extend(after)
        where = " AND ".join(clauses)

        def fn(conn: sqlite3.Connection) -> list[QueueEntry]:
            rows = conn.execute(
                "SELECT r.queue_id, r.idx, r.address, r.domain, r.state, r.attempts, "
                "r.next_attempt, r.last_reply, m.received_at, m.sender FROM recipients r "
                f"JOIN messages m ON m.id = r.queue_id WHERE {where} "
                "ORDER BY r.queue_id, r.idx LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [QueueEntry(*row) for row in rows]

        return await self.db.read(fn)

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

    async def retry(self, queue_id: str | None, now: float | None = None) -> int:
        """Make queued recipients due now (one message, or all with ``None``)."""
        t = self._clock.now() if now is None else now

        def op(conn: sqlite3.Connection) -> int:
            if queue_id is None:
                cur = conn.execute(
                    "UPDATE recipients SET next_attempt=? WHERE state='queued'", (t,)
                )
            else:
                cur = conn.execute(
                    "UPDATE recipients SET next_attempt=? WHERE state='queued' AND queue_id=?",
                    (t, queue_id),
                )
            return cur.rowcount

        return await self.db.write(op)

    async def delete(self, queue_id: str) -> int:
        """Remove a message and all its recipients; returns recipients removed."""
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> int:
            n = conn.execute(
                "SELECT count(*) FROM recipients WHERE queue_id=?", (queue_id,)
            ).fetchone()[0]
            conn.execute("DELETE FROM recipients WHERE queue_id=?", (queue_id,))
            conn.execute("DELETE FROM messages WHERE id=?", (queue_id,))
            insert_events(conn, [Event(type="deleted", at=now, queue_id=queue_id)])
            return int(n)

        return await self.db.write(op)

    async def hold(self, queue_id: str) -> int:
        return await self._move(queue_id, "queued", "held")

    async def release(self, queue_id: str, now: float | None = None) -> int:
        return await self._move(
            queue_id, "held", "queued", self._clock.now() if now is None else now
        )

    async def gauges(self, states: Sequence[str], top: int, now: float) -> QueueGauges:
        """Recipients in ``states``: per state, per destination (top N), the oldest's age."""
        marks = ",".join("?" * len(states))

        def fn(conn: sqlite3.Connection) -> QueueGauges:
            by_state = dict.fromkeys(states, 0)
            for state, n in conn.execute(
                f"SELECT state, count(*) FROM recipients WHERE state IN ({marks}) GROUP BY state",
                tuple(states),
            ):
                by_state[state] = int(n)
            rows = conn.execute(
                f"SELECT domain, count(*) AS n FROM recipients WHERE state IN ({marks}) "
                "GROUP BY domain ORDER BY n DESC, domain",
                tuple(states),
            ).fetchall()
            oldest = conn.execute(
                "SELECT min(m.received_at) FROM messages m WHERE m.id IN "
                f"(SELECT queue_id FROM recipients WHERE state IN ({marks}))",
                tuple(states),
            ).fetchone()[0]
            return QueueGauges(
                by_state=by_state,
                by_destination=tuple((d, int(n)) for d, n in rows[:top]),
                other=sum(int(n) for _, n in rows[top:]),
                oldest_age=max(0.0, now - oldest) if oldest is not None else 0.0,
            )

        return await self.db.read(fn)

    async def drop_bodies(self, before: float, limit: int) -> int:
        """Retention: drop kept bodies of messages finished before ``before`` (≤ ``limit``)."""
        return await self.db.write(lambda conn: _drop_bodies(conn, before, limit))

    async def purge_finished(self, before: float, limit: int) -> int:
        """Retention: delete messages finished before ``before``; ``limit`` counts rows."""
        return await self.db.write(lambda conn: _drop_records(conn, before, limit))

    async def _move(self, queue_id: str, src: str, dst: str, due: float | None = None) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE recipients SET state=?, next_attempt=coalesce(?, next_attempt) "
                "WHERE queue_id=? AND state=?",
                (dst, due, queue_id, src),
            )
            return cur.rowcount

        return await self.db.write(op)


# A message whose every recipient is final, the last since before the cutoff.
_DONE_BEFORE = (
    "NOT EXISTS (SELECT 1 FROM recipients r WHERE r.queue_id = m.id "
    f"AND (r.state NOT IN {FINAL_STATES_SQL} OR r.updated_at >= :cutoff))"
)


def _drop_bodies(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
    """Bodies of messages finished before ``cutoff``; counts messages."""
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT m.id FROM messages m WHERE m.body IS NOT NULL AND m.received_at < :cutoff "
            f"AND {_DONE_BEFORE} ORDER BY m.received_at LIMIT :limit",
            {"cutoff": cutoff, "limit": limit},
        )
    ]
    for qid in ids:
        conn.execute("UPDATE messages SET body=NULL WHERE id=?", (qid,))
        conn.execute(
            "UPDATE recipients SET body=NULL WHERE queue_id=? AND body IS NOT NULL", (qid,)
        )
    return len(ids)


def _drop_records(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
    """Delete old finished messages; ``limit`` counts rows (recipients + messages)."""
    rows = conn.execute(
        "SELECT m.id, (SELECT count(*) FROM recipients r WHERE r.queue_id = m.id) "
        f"FROM messages m WHERE m.received_at < :cutoff AND {_DONE_BEFORE} "
        "ORDER BY m.received_at LIMIT :limit",
        {"cutoff": cutoff, "limit": limit},
    ).fetchall()
    deleted = 0
    for qid, n in rows:
        if deleted and deleted + n + 1 > limit:
            break
        conn.execute("DELETE FROM recipients WHERE queue_id=?", (qid,))
        conn.execute("DELETE FROM messages WHERE id=?", (qid,))
        deleted += n + 1
    return deleted


def drop_body_if_done(conn: sqlite3.Connection, queue_id: str) -> None:
    """Drop the message's shared body once every recipient is final (inside a write op)."""
    pending = conn.execute(
        f"SELECT 1 FROM recipients WHERE queue_id=? AND state NOT IN {FINAL_STATES_SQL} LIMIT 1",
        (queue_id,),
    ).fetchone()
    if pending is None:
        conn.execute("UPDATE messages SET body=NULL WHERE id=?", (queue_id,))
