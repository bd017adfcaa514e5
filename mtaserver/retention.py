"""Retention: drop kept bodies, old delivery records and old events, a small batch at a time.

Each batch (``[retention] batch_size`` rows, 500 by default) is one write op riding the
shared group commit, so the writer is never held for longer than one small delete and
submissions keep committing between batches. What counts as old:

- bodies: every recipient final, and the last one became final ``bodies`` ago (the spool
  drops bodies at once when ``bodies`` is 0; the sweep also catches bodies kept under an
  earlier, longer setting);
- records: a message whose recipients are all final since ``records`` ago — the message row
  and its recipients go (their events follow the ``events`` setting);
- events: written ``events`` ago, unless a webhook has yet to deliver them; given-up webhook
  deliveries of that age too.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.config.retention import RetentionConfig
from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv
from mtaserver.model import FINAL_STATES_SQL
from mtaserver.storage.sqlite.db import Database

log = get_logger("retention")

# A message whose every recipient is final, the last since before the cutoff.
_DONE_BEFORE = (
    "NOT EXISTS (SELECT 1 FROM recipients r WHERE r.queue_id = m.id "
    f"AND (r.state NOT IN {FINAL_STATES_SQL} OR r.updated_at >= :cutoff))"
)


_Step = Callable[[sqlite3.Connection, float, int], int]


@dataclass
class SweepResult:
    bodies: int = 0
    records: int = 0
    events: int = 0
    outbox: int = 0
    batches: list[tuple[str, int]] = field(default_factory=list)  # (kind, rows) per commit


def _drop_bodies(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
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


def _drop_events(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
    """Old events, except those a webhook has yet to deliver (at least once wins).

    Ids grow with time, so the oldest events come first by id: the sweep walks from the
    lowest id and stops at the first event younger than the cutoff — no index on ``at`` to
    pay for on every insert. Events a webhook still owes are stepped over (at most
    ``10 x limit`` of them per batch).
    """
    ids: list[int] = []
    rows = conn.execute(
        "SELECT e.id, e.at, EXISTS (SELECT 1 FROM webhook_outbox o WHERE o.event_id = e.id "
        "AND o.state IN ('pending', 'waiting')) FROM events e ORDER BY e.id LIMIT ?",
        (limit * 11,),
    )
    for event_id, at, owed in rows:
        if at >= cutoff or len(ids) >= limit:
            break
        if not owed:
            ids.append(event_id)
    conn.executemany("DELETE FROM events WHERE id=?", [(i,) for i in ids])
    return len(ids)


def _drop_failed_outbox(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
    return conn.execute(
        "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox "
        "WHERE state='failed' AND created_at < ? LIMIT ?)",
        (cutoff, limit),
    ).rowcount


class Retention:
    """The ``retention`` service: one sweep every ``interval``."""

    name = "retention"

    def __init__(self, db: Database, config: RetentionConfig, clock: Clock) -> None:
        self.db = db
        self.config = config
        self.clock = clock
        self._stop = asyncio.Event()

    async def sweep(self, now: float | None = None) -> SweepResult:
        """Enforce every limit once, batch by batch, until nothing old is left."""
        t = self.clock.now() if now is None else now
        cfg = self.config
        result = SweepResult()
        steps: list[tuple[str, _Step, float]] = [("bodies", _drop_bodies, cfg.bodies)]
        steps += [("records", _drop_records, cfg.records), ("events", _drop_events, cfg.events)]
        steps += [("outbox", _drop_failed_outbox, cfg.events)]
        for kind, fn, keep in steps:
            if keep == float("inf"):
                continue
            cutoff = t - keep
            while not self._stop.is_set():

                def op(conn: sqlite3.Connection, fn: _Step = fn, cutoff: float = cutoff) -> int:
                    return fn(conn, cutoff, cfg.batch_size)

                n = await self.db.write(op)
                if not n:
                    break
                result.batches.append((kind, n))
                setattr(result, kind, getattr(result, kind) + n)
                await asyncio.sleep(0)  # let other writers' ops into the next batch
        return result

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                r = await self.sweep()
            except StorageError as exc:
                log.error(kv(event="retention_failed", error=str(exc)))
            else:
                if r.batches:
                    log.info(kv(event="retention_swept", bodies=r.bodies, records=r.records,
                                events=r.events, outbox=r.outbox,
                                batches=len(r.batches)))  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.config.interval)

    async def drain(self, timeout: float) -> None:
        self._stop.set()

    async def reload(self, config: Config) -> None:
        self.config = config.retention
