"""Retention's and the metrics scrape's side of the queue: gauges, old bodies, old records."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mtaserver.model import FINAL_STATES, FINAL_STATES_SQL, QueueGauges, Redaction
from mtaserver.storage.sqlite.db import Database

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


# -- the privacy erase (run inside the backend's erase transactions) ---------------------------
def erase_cancel_message(conn: sqlite3.Connection, qid: str, now: float) -> tuple[int, int]:
    """Drop a message's content; its pending recipients become final. (bodies, cancelled)"""
    had = conn.execute(
        "SELECT (SELECT body IS NOT NULL FROM messages WHERE id=?) OR EXISTS "
        "(SELECT 1 FROM recipients WHERE queue_id=? AND body IS NOT NULL)",
        (qid, qid),
    ).fetchone()[0]
    conn.execute("UPDATE messages SET body=NULL WHERE id=?", (qid,))
    conn.execute("UPDATE recipients SET body=NULL WHERE queue_id=?", (qid,))
    cancelled = conn.execute(
        "UPDATE recipients SET state='suppressed', last_reply=?, updated_at=? "
        f"WHERE queue_id=? AND state NOT IN {FINAL_STATES_SQL}",
        ("cancelled: message erased on a privacy request", now, qid),
    ).rowcount
    return int(bool(had)), cancelled


def erase_recipient(
    conn: sqlite3.Connection, rowid: int, red: Redaction, now: float
) -> tuple[int, int]:
    """Anonymize one recipient row (its own address, or a reply quoting it). (own, cancelled)"""
    row = conn.execute(
        "SELECT queue_id, address, state, last_reply FROM recipients WHERE rowid=?", (rowid,)
    ).fetchone()
    if row is None:
        return 0, 0
    qid, address, state, last_reply = row
    own = address.lower() == red.address
    cancelled = 0
    if own and state not in FINAL_STATES:
        conn.execute(
            "UPDATE recipients SET state='suppressed', body=NULL, updated_at=? WHERE rowid=?",
            (now, rowid),
        )
        last_reply = "cancelled: erased on a privacy request"
        cancelled = 1
        drop_body_if_done(conn, qid)
    if own:
        conn.execute(
            "UPDATE recipients SET address=?, domain='erased.invalid', last_reply=?, "
            "body=NULL WHERE rowid=?",
            (red.token, red.sub(last_reply), rowid),
        )
    else:  # another recipient whose last reply quoted the address
        conn.execute(
            "UPDATE recipients SET last_reply=? WHERE rowid=?", (red.sub(last_reply), rowid)
        )
    return int(own), cancelled


def erase_message_fields(conn: sqlite3.Connection, qid: str, red: Redaction) -> int:
    """Anonymize the sender, user and Message-ID of a message; 1 if it exists."""
    row = conn.execute(
        "SELECT sender, user, message_id FROM messages WHERE id=?", (qid,)
    ).fetchone()
    if row is None:
        return 0
    sender, user, message_id = row
    conn.execute(
        "UPDATE messages SET sender=?, user=?, message_id=? WHERE id=?",
        (
            red.token if sender.lower() == red.address else red.sub(sender),
            red.token if (user or "").lower() == red.address else red.sub(user),
            red.sub(message_id),
            qid,
        ),
    )
    return 1


class Maintenance:
    """Mixed into :class:`~mtaserver.storage.sqlite.queue.Spool`."""

    db: Database

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
