"""Local-time campaigns and the feeder's failure paths, on a real database and the real
pipeline with a fake clock.

* "09:00 at the contact's local time" on the day Europe/Berlin springs forward: contacts in
  Tokyo, Berlin and New York are each queued at their own 09:00 and not one step before;
  one without a ``timezone`` and one with a bogus one at 09:00 in the campaign's fallback
  zone; the campaign is running until the last of them is fed, then done.
* The cron form per contact ("0 9 * * *" local) over three days, including Pago Pago
  (UTC-11), whose 09:00 comes after the next day's run has started: once a day each, at
  09:00 local.
* A pause racing the finish: whichever commits first wins, the other is refused.
* Cancel moves the pending rows to ``cancelled``; a cancel interrupted before that (a killed
  CLI) is swept by the feeder.
* A campaign whose segment was deleted fails with the reason and the feeder keeps feeding
  the others (it used to raise out of ``tick`` and restart in a loop).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from mtaserver.campaigns import CampaignStateError, LocalDue, definition, transition
from mtaserver.contacts import ContactInput
from mtaserver.cron import zone
from mtaserver.storage.sqlite.campaigns import Campaign, CampaignStore
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.segments import SegmentStore
from tests.support.clock import FakeClock
from tests.test_campaigns_feed import setup

HOUR = 3600.0


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def first_queued(db: Database, campaign: str) -> dict[str, list[float]]:
    """Address → the clock times its messages of ``campaign`` were queued at."""

    def fn(conn: sqlite3.Connection) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for addr, t in conn.execute(
            "SELECT r.address, m.received_at FROM recipients r JOIN messages m "
            "ON m.id = r.queue_id WHERE m.campaign = ? ORDER BY m.received_at",
            (campaign,),
        ):
            out.setdefault(addr, []).append(t)
        return out

    return await db.read(fn)


async def people(contacts: ContactStore, zones: Mapping[str, object]) -> None:
    for addr, tz in zones.items():
        attrs = "{}" if tz is None else json.dumps({"timezone": tz})
        await contacts.upsert("alice", ContactInput(addr, attrs))
    await contacts.add_members("alice", "zones", list(zones))


async def local_campaign(store: CampaignStore, name: str, **kw: object) -> Campaign:
    d = definition(name, "digest", "news@example.com", list_name="zones", **kw)
    c = await store.create("alice", d.name, d.template, d.from_email, audience_kind="list",
                           audience=d.audience, schedule=d.schedule, cron=d.cron, tz=d.tz,
                           local_at=d.local_at)  # fmt: skip
    return await store.act(c, "start")


async def test_each_contact_at_its_own_nine_oclock(db: Database) -> None:
    clock = FakeClock(at("2026-03-28T12:00:00+00:00"))
    feeder, store, contacts = await setup(db, clock, 0)
    await contacts.create_list("alice", "zones")
    await people(contacts, {"tokyo@example.org": "Asia/Tokyo",
                            "berlin@example.org": "Europe/Berlin",
                            "ny@example.org": "America/New_York",
                            "none@example.org": None, "bogus@example.org": "Mars/Olympus",
                            "number@example.org": 5})  # fmt: skip
    c = await local_campaign(store, "nine", local_time="09:00", date="2026-03-29",
                             tz="America/Sao_Paulo")  # fmt: skip
    assert (c.schedule, c.local_at, c.next_run_at) == (
        "local", "2026-03-29T09:00", at("2026-03-28T19:00:00+00:00"))  # UTC+14 first  # fmt: skip
    want = {
        "tokyo@example.org": at("2026-03-29T09:00:00+09:00"),
        "berlin@example.org": at("2026-03-29T09:00:00+02:00"),  # CEST since 01:00 UTC
        "ny@example.org": at("2026-03-29T09:00:00-04:00"),  # EDT since March 8
        "none@example.org": at("2026-03-29T09:00:00-03:00"),  # the fallback zone
        "bogus@example.org": at("2026-03-29T09:00:00-03:00"),
        "number@example.org": at("2026-03-29T09:00:00-03:00"),
    }
    assert c.next_run_at is not None
    hours = [clock.now() + HOUR * i for i in range(30)]
    for t in sorted({*hours, *(w - 1 for w in want.values())}):  # and a second before each
        clock.advance(t - clock.now())
        while await feeder.tick():
            pass
        got = await first_queued(db, "nine")
        for addr, times in got.items():  # never before its 09:00, and exactly at it
            assert times == [want[addr]], (addr, times, clock.now())
        current = await store.get("alice", "nine")
        assert current is not None
        # running until the last row is fed: rows waiting for their zone keep it open
        expect = "done" if len(got) == len(want) else "running"
        assert current.status == ("scheduled" if t < c.next_run_at else expect), t
    assert set(await first_queued(db, "nine")) == set(want)
    done = await store.get("alice", "nine")
    assert done is not None and done.status == "done"
    [run] = await store.runs(c.id)
    assert (run.audience, run.queued, run.status) == (6, 6, "done")


async def test_cron_per_contact_daily_across_overlapping_runs(db: Database) -> None:
    clock = FakeClock(at("2026-06-01T00:00:00+00:00"))
    feeder, store, contacts = await setup(db, clock, 0)
    await contacts.create_list("alice", "zones")
    zones = {"tokyo@example.org": "Asia/Tokyo", "pago@example.org": "Pacific/Pago_Pago",
             "ny@example.org": "America/New_York"}  # fmt: skip
    await people(contacts, zones)
    c = await local_campaign(store, "daily", cron="0 9 * * *", local=True)
    assert c.schedule == "local" and c.next_run_at == at("2026-06-01T19:00:00+00:00")
    end = at("2026-06-05T00:00:00+00:00")
    while clock.now() < end:
        while await feeder.tick():
            pass
        clock.advance(HOUR)
    got = await first_queued(db, "daily")
    for addr, tz in zones.items():
        walls = [datetime.fromtimestamp(t, ZoneInfo(tz)).strftime("%m-%d %H:%M") for t in got[addr]]
        assert walls[:3] == ["06-02 09:00", "06-03 09:00", "06-04 09:00"], (addr, walls)
        assert len(walls) == len(set(walls)), walls  # never twice
    runs = await store.runs(c.id)
    # Pago Pago's 09:00 (20:00 UTC) comes after the next run starts (19:00 UTC): they overlap
    assert [r.status for r in runs[:3]] == ["done"] * 3 and all(r.queued == 3 for r in runs[:3])


async def test_a_pause_racing_the_finish_cannot_both_win(db: Database) -> None:
    clock = FakeClock()
    feeder, store, _ = await setup(db, clock, 10)
    c = await store.create("alice", "race", "digest", "news@example.com",
                           audience_kind="list", audience="news")  # fmt: skip
    c = await store.act(c, "start")
    assert await feeder.tick()  # started and fed all 10
    running = await store.get("alice", "race")
    assert running is not None and running.status == "running"
    [run] = await store.runs(c.id)
    assert await store.finish_run(run.id)  # the feeder's finish commits first ...
    with pytest.raises(CampaignStateError, match="running to done"):
        await store.act(running, "pause")  # ... so the pause read before it is refused
    after = await store.get("alice", "race")
    assert after is not None and after.status == "done"
    assert not await store.set_status(c.id, "paused", expect=("running",))

    c2 = await store.create("alice", "race2", "digest", "news@example.com",
                            audience_kind="list", audience="news")  # fmt: skip
    c2 = await store.act(c2, "start")
    feeder.batch = 5
    assert await feeder.tick()
    c2 = await store.act(await store.get("alice", "race2"), "pause")  # type: ignore[arg-type]
    [run2] = await store.runs(c2.id)
    assert not await store.finish_run(run2.id)  # paused (and rows pending): no finish
    assert (await store.get("alice", "race2")).status == "paused"  # type: ignore[union-attr]


async def test_cancel_marks_pending_rows_cancelled(db: Database) -> None:
    clock = FakeClock()
    feeder, store, _ = await setup(db, clock, 120)  # batch 50
    c = await store.create("alice", "stop", "digest", "news@example.com",
                           audience_kind="list", audience="news")  # fmt: skip
    c = await store.act(c, "start")
    assert await feeder.tick()
    c = await store.act(await store.get("alice", "stop"), "cancel")  # type: ignore[arg-type]
    assert c.status == "cancelled"
    [run] = await store.runs(c.id)
    assert run.status == "cancelled"
    assert await store.counts(run.id) == {"queued": 50, "cancelled": 70}
    assert not await feeder.tick()
    assert len(await first_queued(db, "stop")) == 50

    # a cancel whose row sweep never ran (the CLI was killed): the feeder sweeps it
    c2 = await store.create("alice", "stop2", "digest", "news@example.com",
                            audience_kind="list", audience="news")  # fmt: skip
    c2 = await store.act(c2, "start")
    assert await feeder.tick()
    assert await store.set_status(c2.id, "cancelled")
    [run2] = await store.runs(c2.id)
    assert (await store.counts(run2.id))["pending"] == 70
    assert await store.cancel_rows(c2.id, limit=30) == 70  # 30 + 30 + 10, one write each
    assert await store.counts(run2.id) == {"queued": 50, "cancelled": 70}
    c3 = await store.create("alice", "stop3", "digest", "news@example.com",
                            audience_kind="list", audience="news")  # fmt: skip
    c3 = await store.act(c3, "start")
    assert await feeder.tick()
    assert await store.set_status(c3.id, "cancelled")
    assert not await feeder.tick()  # nothing fed, and the rows swept
    [run3] = await store.runs(c3.id)
    assert await store.counts(run3.id) == {"queued": 50, "cancelled": 70}


async def test_deleted_segment_fails_that_campaign_and_the_others_feed(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    feeder, store, _ = await setup(db, clock, 20)
    segments = SegmentStore(db, clock)
    await segments.save("alice", "fans", {"in_list": "news"}, create=True)
    gone = await store.create("alice", "gone", "digest", "news@example.com",
                              audience_kind="segment", audience="fans")  # fmt: skip
    assert await segments.delete("alice", "fans")
    ok = await store.create("alice", "fine", "digest", "news@example.com",
                            audience_kind="list", audience="news")  # fmt: skip
    await store.act(gone, "start")
    await store.act(ok, "start")
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            await feeder.tick()
    failed = await store.get("alice", "gone")
    assert failed is not None and failed.status == "failed"
    assert failed.failure is not None and "fans" in failed.failure, failed.failure
    assert failed.next_run_at is None
    assert sum("campaign_failed" in r.getMessage() for r in caplog.records) == 1  # once
    assert len(await first_queued(db, "fine")) == 20
    with pytest.raises(CampaignStateError, match="failed"):
        await store.act(failed, "resume")


def test_local_due_dst_and_fallback() -> None:
    berlin = zone("Europe/Berlin")
    gap = LocalDue(datetime(2026, 3, 29, 2, 30), zone("UTC"))
    assert gap("Europe/Berlin") == at("2026-03-29T03:00:00+02:00")  # the clocks jump
    fold = LocalDue(datetime(2026, 10, 25, 2, 30), berlin)
    assert fold("Europe/Berlin") == at("2026-10-25T02:30:00+02:00")  # the first pass
    assert fold(None) == fold("no/such") == fold(["x"]) == fold("Europe/Berlin")
    assert fold("../../etc/passwd") == fold("Europe/Berlin")


def test_local_definitions() -> None:
    d = definition("n", "t", "a@example.com", list_name="l", local_time="2026-12-08T09:00")
    assert (d.schedule, d.local_at, d.tz) == ("local", "2026-12-08T09:00", "UTC")
    d = definition("n", "t", "a@example.com", list_name="l", cron="0 9 * * MON", local=True,
                   tz="Europe/Berlin")  # fmt: skip
    assert (d.schedule, d.cron, d.local_at) == ("local", "0 9 * * MON", None)
    from mtaserver.contacts import ContactError

    for kw, field in [
        ({"local_time": "09:00"}, "date"), ({"local_time": "9am", "date": "2026-12-08"}, "local_time"),
        ({"local_time": "09:00", "date": "08/12/2026"}, "date"),
        ({"local_time": "2026-12-08T09:00+01:00"}, "local_time"),
        ({"local_time": "2026-12-08T09:00", "date": "2026-12-08"}, "date"),
        ({"local_time": "2026-12-08T09:00", "send_at": 5}, "local_time"),
        ({"local": True}, "local"), ({"date": "2026-12-08"}, "date"),
        ({"cron": "@daily", "local": "yes"}, "local"),
    ]:  # fmt: skip
        with pytest.raises(ContactError) as exc:
            definition("n", "t", "a@example.com", list_name="l", **kw)  # type: ignore[arg-type]
        assert exc.value.field == field, (kw, exc.value)
    start = transition("start", "n", "draft", schedule="local", send_at=None, cron="0 9 * * MON",
                       tz="UTC", next_run_at=None, paused_run=False,
                       now=at("2026-03-27T12:00:00+00:00"))  # fmt: skip
    assert start == ("scheduled", at("2026-03-29T19:00:00+00:00"))  # Monday 09:00 at UTC+14
