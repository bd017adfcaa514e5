"""The feeder on a real database and the real pipeline: a run queues every snapshot row
exactly once (counted in the queue), a contact added after the start gets nothing, a paused
run queues nothing, and a weekly cron campaign fires at 09:00 Berlin time on both sides of
the spring change (fake clock)."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from mtaserver.app.campaigns import Feeder
from mtaserver.auth import hash_password
from mtaserver.cron import next_fire, parse, zone
from mtaserver.outreach import OutreachSender
from mtaserver.pipeline import Pipeline
from mtaserver.storage.sqlite.campaigns import CampaignStore
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.segments import SegmentStore
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.templates import TemplateStore
from mtaserver.storage.sqlite.users import UserStore
from tests.support.clock import FakeClock

BERLIN = zone("Europe/Berlin")


async def setup(
    db: Database, clock: FakeClock, members: int
) -> tuple[Feeder, CampaignStore, ContactStore]:
    spool = Spool(db, clock=clock)
    await UserStore(db).add("alice", hash_password("pw-pw-pw-pw", n=2**10), ["example.com"])
    templates = TemplateStore(db, clock)
    await templates.put(
        "digest", "Digest for {{contact.email}}", "<p>Hi {{contact.email}}</p>", None
    )
    pipeline = Pipeline(spool=spool, new_queue_id=new_queue_id, hostname="mta.test")
    sender = OutreachSender(
        templates=templates,
        users=UserStore(db),
        suppressions=SuppressionStore(db),
        preparer=lambda: pipeline,
        queue=spool,
        clock=clock,
        new_queue_id=new_queue_id,
        hostname="mta.test",
    )
    contacts = ContactStore(db, clock)
    await contacts.create_list("alice", "news")
    await contacts.add_members("alice", "news", [f"u{i:04d}@example.org" for i in range(members)])
    store = CampaignStore(db, clock)
    return Feeder(store, SegmentStore(db, clock), sender, clock, batch=50), store, contacts


async def queued(db: Database, campaign: str) -> list[str]:
    def fn(conn: sqlite3.Connection) -> list[str]:
        return [
            r[0]
            for r in conn.execute(
                "SELECT r.address FROM recipients r JOIN messages m ON m.id = r.queue_id "
                "WHERE m.campaign = ?",
                (campaign,),
            )
        ]

    return await db.read(fn)


async def test_run_queues_each_snapshot_row_once(db: Database) -> None:
    clock = FakeClock()
    feeder, store, contacts = await setup(db, clock, 220)
    c = await store.create(
        "alice", "weekly", "digest", "news@example.com", audience_kind="list", audience="news"
    )
    await store.set_status(c.id, "scheduled", clock.now())
    assert await feeder.tick()  # started, first batch fed
    await contacts.add_members("alice", "news", ["late@example.org"])
    await store.set_status(c.id, "paused")
    assert not await feeder.tick()
    assert len(await queued(db, "weekly")) == 50
    await store.set_status(c.id, "running")
    while await feeder.tick():
        pass
    got = await queued(db, "weekly")
    assert len(got) == len(set(got)) == 220 and "late@example.org" not in got
    done = await store.get("alice", "weekly")
    assert done is not None and done.status == "done"
    [run] = await store.runs(c.id)
    assert (run.audience, run.queued, run.status) == (220, 220, "done")


async def test_weekly_nine_oclock_across_the_spring_change(db: Database) -> None:
    clock = FakeClock(datetime.fromisoformat("2026-03-16T00:00:00+00:00").timestamp())
    feeder, store, _ = await setup(db, clock, 3)
    c = await store.create(
        "alice",
        "digest",
        "digest",
        "news@example.com",
        audience_kind="list",
        audience="news",
        schedule="cron",
        cron="0 9 * * MON",
        tz="Europe/Berlin",
    )
    await store.set_status(c.id, "scheduled", next_fire(parse("0 9 * * MON"), clock.now(), BERLIN))
    for _ in range(4):
        cur = await store.get("alice", "digest")
        assert cur is not None and cur.next_run_at is not None
        clock.advance(cur.next_run_at - clock.now())
        while await feeder.tick():
            pass
    runs = await store.runs(c.id)
    walls = [datetime.fromtimestamp(r.fire_at, BERLIN).isoformat() for r in runs]
    assert walls == [
        "2026-03-16T09:00:00+01:00",
        "2026-03-23T09:00:00+01:00",
        "2026-03-30T09:00:00+02:00",
        "2026-04-06T09:00:00+02:00",
    ]
    assert all(r.queued == 3 for r in runs)
    assert len(await queued(db, "digest")) == 12


async def test_campaign_messages_are_the_stats_cohort(db: Database) -> None:
    """``mtaserver stats --campaign NAME --user OWNER`` counts a campaign's messages: each
    carries the campaign's name as its X-Mtaserver-Campaign tag."""
    from mtaserver.storage.sqlite.reports import Reports

    clock = FakeClock()
    feeder, store, _ = await setup(db, clock, 30)
    c = await store.create(
        "alice", "promo", "digest", "news@example.com", audience_kind="list", audience="news"
    )
    await store.set_status(c.id, "scheduled", clock.now())
    while await feeder.tick():
        pass
    stats = await Reports(db).cohort(0.0, "promo", "alice", float("inf"))
    assert (stats.messages, stats.accepted) == (30, 30)
    assert (await Reports(db).cohort(0.0, "promo", "bob", float("inf"))).messages == 0


async def test_feeder_waits_while_the_queue_holds_its_in_flight_bound(db: Database) -> None:
    clock = FakeClock()
    feeder, store, _ = await setup(db, clock, 120)
    feeder.max_in_flight = 50  # nothing delivers here: the queue keeps what was fed
    c = await store.create(
        "alice", "capped", "digest", "news@example.com", audience_kind="list", audience="news"
    )
    await store.set_status(c.id, "scheduled", clock.now())
    assert await feeder.tick()
    assert not await feeder.tick()  # 50 due recipients queued: hold back
    assert len(await queued(db, "capped")) == 50
    feeder.max_in_flight = 1000
    while await feeder.tick():
        pass
    assert len(await queued(db, "capped")) == 120


async def test_feeder_spends_the_users_rate(db: Database) -> None:
    from mtaserver.ratelimit import RateLimiter

    clock = FakeClock()
    feeder, store, _ = await setup(db, clock, 40)
    limiter = RateLimiter(10.0, 10.0, clock)  # 10 messages/s, burst 10
    feeder.user_rate = lambda: limiter
    c = await store.create(
        "alice", "rated", "digest", "news@example.com", audience_kind="list", audience="news"
    )
    await store.set_status(c.id, "scheduled", clock.now())
    await feeder.tick()
    assert len(await queued(db, "rated")) == 10
    assert not await feeder.tick()  # no token left at this instant
    for _ in range(3):  # at most a burst of 10 is saved up per second waited
        clock.advance(1.0)
        await feeder.tick()
    assert len(await queued(db, "rated")) == 40
