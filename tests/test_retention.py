"""Retention: kept bodies, delivery records and events go in small batches, on time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mtaserver.clock import SystemClock
from mtaserver.config import parse_config
from mtaserver.config.retention import FOREVER, RetentionConfig
from mtaserver.errors import ConfigError
from mtaserver.model import (
    Event,
    PreparedMessage,
    PreparedRecipient,
    RecipientState,
    RecipientUpdate,
)
from mtaserver.retention import Retention
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.outbox import WebhookOutbox
from mtaserver.storage.sqlite.queue import Spool

DAY = 86400.0


def msg(qid: str, n: int = 2, at: float | None = None) -> PreparedMessage:
    return PreparedMessage(
        queue_id=qid, sender="app@example.com",
        recipients=tuple(PreparedRecipient(f"r{i}@x.example", b"own\r\n" if i else None)
                         for i in range(n)),
        data=b"Subject: s\r\n\r\nbody\r\n", user=None, client_ip="127.0.0.1",
        received_at=time.time() if at is None else at,
    )  # fmt: skip


async def finish(spool: Spool, qid: str, n: int = 2) -> None:
    await spool.record(
        [RecipientUpdate(qid, i, RecipientState.DELIVERED, "250 ok") for i in range(n)]
    )


async def count(db: Database, sql: str) -> int:
    return int(await db.read(lambda c: c.execute(sql).fetchone()[0]))


async def test_records_and_events_are_deleted_in_batches(db: Database) -> None:
    spool = Spool(db)
    events = EventLog(db)
    await events.emit_many([Event(type="open", at=time.time() - 90 * DAY) for _ in range(25)])
    for i in range(12):
        await spool.enqueue(msg(f"OLD{i:02d}"))
        await finish(spool, f"OLD{i:02d}")
    await spool.enqueue(msg("PENDING"))  # not final: kept whatever its age
    r = Retention(Spool(db), EventLog(db), WebhookOutbox(db), RetentionConfig(records=30 * DAY, events=60 * DAY, batch_size=10),
                  SystemClock())  # fmt: skip
    # Nothing is old enough yet except the 25 events.
    res = await r.sweep()
    assert (res.records, res.events) == (0, 25)
    assert [n for kind, n in res.batches] == [10, 10, 5]
    # 31 days later the finished messages go; each commit holds at most batch_size rows.
    later = time.time() + 31 * DAY
    res = await r.sweep(now=later)
    assert res.records == 12 * 3  # 12 messages with 2 recipients each
    assert all(kind != "records" or n <= 10 for kind, n in res.batches)
    assert len([b for b in res.batches if b[0] == "records"]) >= 4
    assert await count(db, "SELECT count(*) FROM messages") == 1
    assert await count(db, "SELECT count(*) FROM recipients WHERE queue_id='PENDING'") == 2
    # The accepted/… events of those messages are still there (they follow `events`).
    assert await count(db, "SELECT count(*) FROM events WHERE type='accepted'") == 13
    res = await r.sweep(now=time.time() + 61 * DAY)
    assert await count(db, "SELECT count(*) FROM events WHERE type <> 'deleted'") == 0


async def test_bodies_kept_for_the_configured_time(db: Database) -> None:
    spool = Spool(db, keep_bodies=7 * DAY)
    await spool.enqueue(msg("KEEP"))
    await finish(spool, "KEEP")
    bodies = "SELECT count(*) FROM messages WHERE body IS NOT NULL"
    own = "SELECT count(*) FROM recipients WHERE body IS NOT NULL"
    assert (await count(db, bodies), await count(db, own)) == (1, 1)  # kept after delivery
    r = Retention(Spool(db), EventLog(db), WebhookOutbox(db), RetentionConfig(bodies=7 * DAY, records=FOREVER, events=FOREVER),
                  SystemClock())  # fmt: skip
    assert (await r.sweep(now=time.time() + 6 * DAY)).bodies == 0
    assert (await r.sweep(now=time.time() + 8 * DAY)).bodies == 1
    assert (await count(db, bodies), await count(db, own)) == (0, 0)
    assert await count(db, "SELECT count(*) FROM recipients") == 2  # records stay (forever)


async def test_default_drops_bodies_at_once_and_a_queued_body_is_never_swept(
    db: Database,
) -> None:
    spool = Spool(db)
    await spool.enqueue(msg("DONE"))
    await finish(spool, "DONE")
    await spool.enqueue(msg("QUEUED", at=time.time() - 400 * DAY))
    r = Retention(Spool(db), EventLog(db), WebhookOutbox(db), RetentionConfig(), SystemClock())
    res = await r.sweep(now=time.time() + 400 * DAY)
    assert res.bodies == 0 and res.records == 3
    assert await count(db, "SELECT count(*) FROM messages WHERE body IS NOT NULL") == 1


def test_retention_config(tmp_path: Path) -> None:
    def parse(body: str) -> RetentionConfig:
        return parse_config(
            f'[server]\ndata_dir = "{tmp_path}"\n{body}', tmp_path / "c.toml"
        ).retention

    cfg = parse(
        '[retention]\nbodies = "7d"\nrecords = "forever"\nevents = "90d"\nbatch_size = 100\n'
    )
    assert (cfg.bodies, cfg.records, cfg.events, cfg.batch_size) == (
        7 * DAY,
        FOREVER,
        90 * DAY,
        100,
    )
    assert parse("").bodies == 0 and parse("").events == 60 * DAY
    with pytest.raises(ConfigError, match=r"retention\.events: expected a duration"):
        parse('[retention]\nevents = "sixty days"\n')
    with pytest.raises(ConfigError, match=r"retention\.keep: unknown key"):
        parse('[retention]\nkeep = "1d"\n')


async def test_events_a_webhook_still_owes_are_kept(db: Database) -> None:
    from mtaserver.config.webhooks import WebhookConfig

    await WebhookOutbox(db).sync(
        [WebhookConfig("h", "http://127.0.0.1:9/", ("bounced",), b"s" * 16)]
    )
    old = time.time() - 90 * DAY
    await EventLog(db).emit(Event("bounced", old, "Q1"), Event("open", old, "Q1"))
    r = Retention(Spool(db), EventLog(db), WebhookOutbox(db), RetentionConfig(), SystemClock())
    assert (await r.sweep()).events == 1
    assert await count(db, "SELECT count(*) FROM events WHERE type='bounced'") == 1
    await db.write(lambda c: c.execute("DELETE FROM webhook_outbox"))
    assert (await r.sweep()).events == 1
