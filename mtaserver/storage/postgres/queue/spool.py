"""The shared queue on PostgreSQL: the only writer of ``messages``, ``recipients``, ``batches``.

The same interface as the SQLite spool (``scheduler.ports.QueueStore`` and what submission,
metrics and the CLI use), for several nodes at once:

- ``claim_due`` leases due recipients with ``SELECT … FOR UPDATE SKIP LOCKED``: two nodes
  claiming at the same moment skip each other's rows instead of waiting on them, and never
  get the same recipient. A leased row records the node (``lease_node``) and the lease
  expiry (``next_attempt``).
- ``release_expired`` (run by every node's scheduler) puts back leases past their expiry,
  whichever node held them: a node that died has its work taken over once its leases run
  out. ``release_leases`` (start-up, graceful stop) puts back only this node's own leases —
  the other nodes are still delivering theirs.
- Bodies live in PostgreSQL (``bytea``), so any node can deliver any message and a node
  lost for good loses nothing it acknowledged (measured in ``bench/pg_queue.py``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
from mtaserver.storage.postgres.db import Connection, PgDatabase
from mtaserver.storage.postgres.events import insert_events, insert_from_arrays
from mtaserver.storage.postgres.queue.batches import PgBatchOps
from mtaserver.storage.postgres.queue.operator import PgOperatorOps
from mtaserver.storage.sqlite.queue.values import (
    BodyCodec,
    IdentityCodec,
    MessageInfo,
    RecipientInfo,
    domain_of,
)

_CLAIM = """
WITH due AS (
    SELECT queue_id, idx FROM recipients
    WHERE state = 'queued' AND next_attempt <= $1
    ORDER BY next_attempt
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE recipients r SET state = 'leased', next_attempt = $3, lease_node = $4, updated_at = $1
FROM due WHERE r.queue_id = due.queue_id AND r.idx = due.idx
RETURNING r.queue_id, r.idx, r.address, r.domain, r.attempts, r.body
"""


# One message, its recipients and its events in one statement. The CTEs all run, and the
# recipients' foreign key is checked at the end of the statement, when the message exists.
_ENQUEUE_ONE = """
WITH m AS (
    INSERT INTO messages(id, sender, "user", client_ip, received_at, size, message_id,
                         campaign, dsn, is_dsn, body, batch_id, release_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
), r AS (
    INSERT INTO recipients(queue_id, idx, address, domain, state, next_attempt, body,
                           updated_at, last_reply)
    SELECT $1, u.idx, u.address, u.domain, u.state, $14, u.body, $5, u.reply
    FROM unnest($15::bigint[], $16::text[], $17::text[], $18::text[], $19::bytea[],
                $20::text[]) AS u(idx, address, domain, state, body, reply)
)
""" + insert_from_arrays(21)


@dataclass(frozen=True, slots=True)
class _Plan:
    message: tuple[Any, ...]  # $1..$14
    recipients: tuple[list[Any], ...]  # $15..$20, one array per column
    events: tuple[Event, ...]  # accepted first

    def args(self, extra: Sequence[Event]) -> tuple[Any, ...]:
        ev = [*self.events, *extra]
        return (
            *self.message, *self.recipients,
            [e.at for e in ev], [e.type for e in ev], [e.queue_id for e in ev],
            [e.recipient for e in ev], [json.dumps(dict(e.data)) for e in ev],
        )  # fmt: skip


def _rows(status: str) -> int:
    """The row count of an asyncpg command status ("UPDATE 3")."""
    return int(status.rsplit(" ", 1)[-1])


async def _drop_body_if_done(conn: Connection, queue_ids: Sequence[str]) -> None:
    await conn.execute(
        "UPDATE messages m SET body = NULL WHERE m.id = ANY($1::text[]) AND m.body IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.queue_id = m.id "
        f"AND r.state NOT IN {FINAL_STATES_SQL})",
        list(queue_ids),
    )


class PgQueue(PgOperatorOps, PgBatchOps):
    """``node_id`` names this node on its leases (``[cluster] node_id``)."""

    def __init__(
        self,
        db: PgDatabase,
        node_id: str,
        codec: BodyCodec | None = None,
        *,
        keep_bodies: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        self.db = db
        self.node_id = node_id
        self.codec: BodyCodec = codec or IdentityCodec()
        self.keep_bodies = keep_bodies
        self._clock: Clock = clock or SystemClock()

    # -- intake --------------------------------------------------------------------------
    async def enqueue(self, msg: PreparedMessage, events: Sequence[Event] = ()) -> None:
        """Store the message durably (committed before this returns)."""
        await self.enqueue_many((msg,), events)

    async def enqueue_many(
        self,
        messages: Sequence[PreparedMessage],
        events: Sequence[Event] = (),
        *,
        also: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        """Every message, its recipients and events in ONE transaction: all or none, with
        ``also`` (another table owner's write, e.g. the send API's idempotent answer) run in
        that transaction first; whatever it raises rolls everything back.

        The common case — one message, no send batch — is ONE statement (data-modifying
        CTEs, atomic on its own): one round trip instead of five (BEGIN, three INSERTs,
        COMMIT); round trips, not the WAL flush, bound the enqueue rate (bench.pg_queue).
        """
        if len(messages) == 1 and not messages[0].batch_id and also is None:
            plan = self._plan(messages[0], None)
            async with self.db.connection() as conn:
                await conn.execute(_ENQUEUE_ONE, *plan.args(events))
            return
        async with self.db.transaction() as conn:
            if also is not None:
                await also(conn)
            for msg in messages:
                status = None
                if msg.batch_id:
                    status = await conn.fetchval(
                        "SELECT status FROM batches WHERE id=$1", msg.batch_id
                    )
                await conn.execute(_ENQUEUE_ONE, *self._plan(msg, status).args(()))
            await insert_events(conn, events)

    def _plan(self, msg: PreparedMessage, status: str | None) -> _Plan:
        """The rows of one message as the statement's parameters, and its events."""
        codec = self.codec
        due = msg.received_at if msg.not_before is None else msg.not_before
        live = RecipientState.HELD if status == "pause" else RecipientState.QUEUED
        events: list[Event] = []
        cols: list[list[Any]] = [[] for _ in range(6)]
        for i, r in enumerate(msg.recipients):
            state, reply = live, ""
            if r.suppressed:
                state = RecipientState.SUPPRESSED
                events.append(_event("suppressed", msg, r.address, ("reason", r.suppressed), i))
            elif status == "cancel":
                state = RecipientState.SUPPRESSED
                reply = f"cancelled: batch {msg.batch_id} was cancelled"
                events.append(_event("cancelled", msg, r.address, ("batch_id", msg.batch_id), i))
            body = None if r.data is None or state in FINAL_STATES else codec.encode(r.data)
            row = (i, r.address, domain_of(r.address), state.value, body, reply)
            for col, v in zip(cols, row, strict=True):
                col.append(v)
        # every recipient final at intake (all suppressed): no body to keep
        done = bool(msg.recipients) and all(st != live.value for st in cols[3])
        message = (
            msg.queue_id, msg.sender, msg.user, msg.client_ip, msg.received_at, len(msg.data),
            msg.message_id, msg.campaign, int(msg.dsn), int(msg.is_dsn),
            None if done else codec.encode(msg.data), msg.batch_id, msg.not_before, due,
        )  # fmt: skip
        data: list[tuple[str, str | int | float | bool | None]] = [
            ("user", msg.user), ("client_ip", msg.client_ip), ("size", len(msg.data)),
            ("recipients", len(msg.recipients)), ("sender", msg.sender),
            ("campaign", msg.campaign),
        ]  # fmt: skip
        if msg.not_before is not None:
            data.append(("send_at", msg.not_before))
        if msg.batch_id is not None:
            data.append(("batch_id", msg.batch_id))
        accepted = Event("accepted", msg.received_at, msg.queue_id, data=tuple(data))
        return _Plan(message, tuple(cols), (accepted, *events))

    # -- scheduling ----------------------------------------------------------------------
    async def claim_due(self, now: float, limit: int, lease_seconds: float) -> list[DeliveryJob]:
        """Lease up to ``limit`` due recipients; one job per (message body, domain)."""
        lease_until = now + lease_seconds
        async with self.db.transaction() as conn:
            rows = await conn.fetch(_CLAIM, now, limit, lease_until, self.node_id)
            if not rows:
                return []
            qids = sorted({r["queue_id"] for r in rows})
            msgs = {
                m["id"]: m
                for m in await conn.fetch(
                    'SELECT id, sender, received_at, "user", dsn, is_dsn, body, release_at '
                    "FROM messages WHERE id = ANY($1::text[])",
                    qids,
                )
            }
        groups: dict[tuple[str, str, int], list[Any]] = {}
        for r in sorted(rows, key=lambda r: (r["queue_id"], r["idx"])):
            own = r["body"] is not None
            key = (r["queue_id"], r["domain"], r["idx"] if own else -1)
            groups.setdefault(key, []).append(r)
        jobs = []
        for (qid, domain, own_idx), members in groups.items():
            m = msgs[qid]
            body = members[0]["body"] if own_idx >= 0 else m["body"]
            jobs.append(
                DeliveryJob(
                    queue_id=qid, sender=m["sender"], domain=domain,
                    recipients=tuple(
                        JobRecipient(idx=int(x["idx"]), address=x["address"],
                                     attempts=int(x["attempts"]))
                        for x in members
                    ),
                    data=self.codec.decode(bytes(body)), received_at=m["received_at"],
                    lease_until=lease_until, user=m["user"], dsn=bool(m["dsn"]),
                    is_dsn=bool(m["is_dsn"]), release_at=m["release_at"],
                )
            )  # fmt: skip
        return jobs

    async def record(
        self, updates: Sequence[RecipientUpdate], events: Sequence[Event] = ()
    ) -> Sequence[int]:
        """Apply attempt outcomes and their events in one transaction; the events' ids."""
        now = self._clock.now()
        drop = self.keep_bodies <= 0
        async with self.db.transaction() as conn:
            if updates:
                await conn.executemany(
                    "UPDATE recipients SET state=$1, next_attempt=coalesce($2, next_attempt), "
                    "attempts=attempts+$3, last_reply=$4, updated_at=$5, lease_node=NULL, "
                    "body=CASE WHEN $7 AND $1 = ANY($8::text[]) THEN NULL ELSE body END "
                    "WHERE queue_id=$6 AND idx=$9",
                    [
                        (u.state.value, u.next_attempt, 1 if u.attempted else 0, u.reply, now,
                         u.queue_id, drop, [s.value for s in FINAL_STATES], u.idx)
                        for u in updates
                    ],
                )  # fmt: skip
                if drop:
                    await _drop_body_if_done(conn, sorted({u.queue_id for u in updates}))
            return await insert_events(conn, events)

    async def release_leases(self, now: float | None = None) -> int:
        """Put back THIS node's leases (start-up after a crash, graceful stop)."""
        t = self._clock.now() if now is None else now
        async with self.db.transaction() as conn:
            return _rows(
                await conn.execute(
                    "UPDATE recipients SET state='queued', next_attempt=$1, updated_at=$1, "
                    "lease_node=NULL WHERE state='leased' AND lease_node=$2",
                    t,
                    self.node_id,
                )
            )

    async def release_expired(self, now: float) -> int:
        """Put back every node's leases past their expiry: a dead node's work is taken over."""
        async with self.db.transaction() as conn:
            return _rows(
                await conn.execute(
                    "UPDATE recipients SET state='queued', next_attempt=$1, updated_at=$1, "
                    "lease_node=NULL WHERE state='leased' AND next_attempt < $1",
                    now,
                )
            )

    async def defer_domain(self, domain: str, until: float) -> int:
        """Push every queued recipient of a suspended destination to ``until``."""
        async with self.db.transaction() as conn:
            return _rows(
                await conn.execute(
                    "UPDATE recipients SET next_attempt=$1 WHERE domain=$2 AND state='queued' "
                    "AND next_attempt < $1",
                    until,
                    domain.lower(),
                )
            )

    async def dsn_sent(self, queue_id: str, action: str) -> bool:
        """Whether a DSN with this action ("failed", "delayed") was queued for the message."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT data FROM events WHERE queue_id=$1 AND type='dsn_sent'", queue_id
            )
        return any(json.loads(r[0]).get("action") == action for r in rows)

    # -- what operators and metrics read ------------------------------------------------
    async def show(self, queue_id: str) -> MessageInfo | None:
        async with self.db.connection() as conn:
            m = await conn.fetchrow(
                'SELECT id, sender, "user", client_ip, received_at, size, message_id, campaign '
                "FROM messages WHERE id=$1",
                queue_id,
            )
            if m is None:
                return None
            rcpts = await conn.fetch(
                "SELECT idx, address, state, attempts, next_attempt, last_reply FROM recipients "
                "WHERE queue_id=$1 ORDER BY idx",
                queue_id,
            )
        return MessageInfo(
            queue_id=m[0], sender=m[1], user=m[2], client_ip=m[3], received_at=m[4], size=m[5],
            message_id=m[6], campaign=m[7],
            recipients=tuple(RecipientInfo(int(r[0]), r[1], r[2], int(r[3]), r[4], r[5])
                             for r in rcpts),
        )  # fmt: skip

    async def find_by_message_id(self, message_id: str) -> tuple[tuple[str, int], ...]:
        """(queue_id, idx) of each recipient of the messages with this Message-ID (≤ 1000)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT r.queue_id, r.idx FROM messages m JOIN recipients r ON r.queue_id = m.id "
                "WHERE m.message_id IN ($1, $2) ORDER BY r.idx LIMIT 1000",
                message_id,
                f"<{message_id}>",
            )
        return tuple((str(r[0]), int(r[1])) for r in rows)

    async def body(self, queue_id: str) -> bytes | None:
        async with self.db.connection() as conn:
            blob = await conn.fetchval("SELECT body FROM messages WHERE id=$1", queue_id)
        return None if blob is None else self.codec.decode(bytes(blob))

    async def gauges(self, states: Sequence[str], top: int, now: float) -> QueueGauges:
        """Recipients in ``states`` across the cluster: per state, per destination, oldest."""
        async with self.db.connection() as conn:
            by_state = dict.fromkeys(states, 0)
            for r in await conn.fetch(
                "SELECT state, count(*) FROM recipients WHERE state = ANY($1::text[]) "
                "GROUP BY state",
                list(states),
            ):
                by_state[r[0]] = int(r[1])
            rows = await conn.fetch(
                "SELECT domain, count(*) AS n FROM recipients WHERE state = ANY($1::text[]) "
                "GROUP BY domain ORDER BY n DESC, domain",
                list(states),
            )
            oldest = await conn.fetchval(
                "SELECT min(m.received_at) FROM messages m WHERE m.id IN "
                "(SELECT queue_id FROM recipients WHERE state = ANY($1::text[]))",
                list(states),
            )
        return QueueGauges(
            by_state=by_state,
            by_destination=tuple((r[0], int(r[1])) for r in rows[:top]),
            other=sum(int(r[1]) for r in rows[top:]),
            oldest_age=max(0.0, now - oldest) if oldest is not None else 0.0,
        )

    async def drop_bodies(self, before: float, limit: int) -> int:
        """Retention: drop kept bodies of messages finished before ``before`` (≤ ``limit``)."""
        async with self.db.transaction() as conn:
            ids = [r[0] for r in await conn.fetch(
                f"SELECT m.id FROM messages m WHERE m.body IS NOT NULL AND m.received_at < $1 "
                f"AND {_DONE_BEFORE} ORDER BY m.received_at LIMIT $2", before, limit)]  # fmt: skip
            await conn.execute("UPDATE messages SET body=NULL WHERE id = ANY($1::text[])", ids)
            await conn.execute(
                "UPDATE recipients SET body=NULL WHERE queue_id = ANY($1::text[]) "
                "AND body IS NOT NULL",
                ids,
            )
        return len(ids)

    async def purge_finished(self, before: float, limit: int) -> int:
        """Retention: delete messages finished before ``before``; ``limit`` counts rows."""
        async with self.db.transaction() as conn:
            ids = [r[0] for r in await conn.fetch(
                f"SELECT m.id FROM messages m WHERE m.received_at < $1 AND {_DONE_BEFORE} "
                "ORDER BY m.received_at LIMIT $2", before, max(1, limit // 2))]  # fmt: skip
            n = _rows(await conn.execute(
                "DELETE FROM recipients WHERE queue_id = ANY($1::text[])", ids))  # fmt: skip
            n += _rows(await conn.execute("DELETE FROM messages WHERE id = ANY($1::text[])", ids))
        return n


_DONE_BEFORE = (
    "NOT EXISTS (SELECT 1 FROM recipients r WHERE r.queue_id = m.id "
    f"AND (r.state NOT IN {FINAL_STATES_SQL} OR r.updated_at >= $1))"
)


def _event(
    kind: str, msg: PreparedMessage, rcpt: str, item: tuple[str, str | None], idx: int
) -> Event:
    return Event(
        type=kind, at=msg.received_at, queue_id=msg.queue_id, recipient=rcpt,
        data=(item, ("idx", idx)),
    )  # fmt: skip
