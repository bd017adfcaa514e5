"""Per-campaign and per-trigger-step numbers on a real database: messages queued by a
campaign's feeder and a trigger's step runner (fake clock), their outcomes written as the
delivery, bounce and tracking stages write them (``EventLog``), then read back run by run
and step by step. A trigger and another user's campaign of the same name never mix in."""

from __future__ import annotations

import sqlite3

from mtaserver.app.campaigns import Feeder
from mtaserver.auth import hash_password
from mtaserver.contacts import ContactInput
from mtaserver.journeys import EventInput, trigger_from_json
from mtaserver.model import Event
from mtaserver.outreach import OutreachSender
from mtaserver.outreach.runner import StepRunner
from mtaserver.pipeline import Pipeline
from mtaserver.storage.sqlite.campaigns import CampaignStore
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.journeys import JourneyStore
from mtaserver.storage.sqlite.outreach_stats import OutreachStats
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.segments import SegmentStore
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.templates import TemplateStore
from mtaserver.storage.sqlite.users import UserStore
from tests.support.clock import FakeClock

Value = str | int | float | bool | None
HASH = hash_password("correct horse battery", n=2**10)
HARD = (("source", "sync"), ("kind", "hard"), ("category", "unknown-recipient"),
        ("reason", "userunknown"), ("status", "5.1.1"))  # fmt: skip
SOFT = (("source", "async"), ("kind", "soft"), ("category", "mailbox-full"),
        ("reason", "mailboxfull"), ("status", "5.2.2"))  # fmt: skip


class Env:
    def __init__(self, db: Database) -> None:
        self.clock = FakeClock(1_800_000_000.0)
        self.db = db
        spool = Spool(db, clock=self.clock)
        self.contacts = ContactStore(db, self.clock)
        self.templates = TemplateStore(db, self.clock)
        self.journeys = JourneyStore(db, self.clock)
        self.campaigns = CampaignStore(db, self.clock)
        self.events = EventLog(db)
        pipeline = Pipeline(spool=spool, new_queue_id=new_queue_id, hostname="mta.test")
        sender = OutreachSender(
            templates=self.templates, users=UserStore(db), suppressions=SuppressionStore(db),
            preparer=lambda: pipeline, queue=spool, clock=self.clock,
            new_queue_id=new_queue_id, hostname="mta.test",
        )  # fmt: skip
        self.feeder = Feeder(self.campaigns, SegmentStore(db, self.clock), sender, self.clock)
        self.runner = StepRunner(self.journeys, sender, self.clock)

    def sent(self, tag: str) -> dict[str, str]:
        """address → queue id of the messages with the campaign tag ``tag``."""
        conn = sqlite3.connect(self.db.path)
        try:
            rows = conn.execute("SELECT r.address, r.queue_id FROM recipients r JOIN messages m "
                                "ON m.id = r.queue_id WHERE m.campaign = ?", (tag,)).fetchall()  # fmt: skip
        finally:
            conn.close()
        return dict(rows)

    async def outcome(self, qid: str, addr: str, kind: str, *data: tuple[str, Value]) -> None:
        await self.events.emit(Event(kind, self.clock.now(), qid, addr, data))

    async def hit(self, qid: str, kind: str, machine: bool = False) -> None:
        url = "https://example.com/" if kind == "click" else None
        await self.events.insert_hits(
            [(self.clock.now(), kind, qid, 0, "Mozilla/5.0", "127.0.0.9", machine, None, None, url)]
        )


async def test_campaign_and_trigger_numbers_per_run_and_step(db: Database) -> None:
    env = Env(db)
    users = UserStore(db)
    for user in ("alice", "bob"):
        await users.add(user, HASH, ["example.com"])
    await env.templates.put("promo", "Promo", None, "hi")
    await env.templates.put("tips", "Tips", None, "tips")
    people = [f"p{i}@dest.test" for i in range(6)]
    await env.contacts.create_list("alice", "news")
    await env.contacts.add_members("alice", "news", people)
    await env.contacts.upsert("alice", ContactInput(people[5], consent="unsubscribed"))
    await env.contacts.create_list("bob", "news")
    await env.contacts.add_members("bob", "news", ["b0@dest.test"])
    for owner in ("alice", "bob"):  # the same name twice: only alice's is asked for
        c = await env.campaigns.create(owner, "promo", "promo", "news@example.com",
                                       audience_kind="list", audience="news")  # fmt: skip
        await env.campaigns.set_status(c.id, "scheduled", env.clock.now())
    while await env.feeder.tick():
        pass
    sent = env.sent("promo")
    assert set(sent) == set(people[:5]) | {"b0@dest.test"}
    q = [sent[a] for a in people[:5]]
    await env.outcome(q[0], people[0], "deferred", ("category", "rate-limited"))
    await env.outcome(q[0], people[0], "delivered")
    await env.outcome(q[1], people[1], "bounced", *HARD)
    for i in (2, 3, 4):
        await env.outcome(q[i], people[i], "delivered")
    await env.outcome(sent["b0@dest.test"], "b0@dest.test", "delivered")
    await env.hit(sent["b0@dest.test"], "open")
    await env.hit(q[2], "open")
    await env.hit(q[2], "open")
    await env.hit(q[2], "open", machine=True)
    await env.hit(q[3], "open", machine=True)  # an image proxy: not a person
    await env.hit(q[3], "click")
    await env.outcome(q[4], people[4], "unsubscribe", ("idx", 0))
    await env.outcome(q[4], people[4], "complaint", ("idx", 0))

    # a trigger of the same name: two steps, one cancelled for p1
    trig = {"event": "signup", "steps": [{"wait": "0s", "template": "promo"},
            {"wait": "1d", "template": "tips"}], "cancel": ["purchase"],
            "from": "hello@example.com"}  # fmt: skip
    await env.journeys.put_trigger("alice", trigger_from_json(trig, "promo"))
    now = env.clock.now()
    await env.journeys.record_events("alice", [EventInput(people[0], "signup", "{}", now),
                                               EventInput(people[1], "signup", "{}", now)])  # fmt: skip
    assert (await env.runner.run_once()).fired == 2
    await env.journeys.record_events("alice", [EventInput(people[1], "purchase", "{}", now)])
    env.clock.advance(86400)
    assert (await env.runner.run_once()).fired == 1
    assert set(env.sent("trigger:promo")) == set(people[:2])  # its tag: not "promo"
    conn = sqlite3.connect(db.path)
    try:
        rows = conn.execute(
            "SELECT s.step, c.address, s.queue_id FROM journey_steps s JOIN "
            "contacts c ON c.id = s.contact_id WHERE s.state = 'fired'"
        ).fetchall()
    finally:
        conn.close()
    fired = {(step, a): qid for step, a, qid in rows}
    await env.outcome(fired[(0, people[0])], people[0], "delivered")
    await env.hit(fired[(0, people[0])], "open")
    await env.outcome(fired[(0, people[1])], people[1], "bounced", *SOFT)
    await env.outcome(fired[(1, people[0])], people[0], "delivered")
    await env.hit(fired[(1, people[0])], "click")
    await env.hit(fired[(1, people[0])], "click", machine=True)

    stats = OutreachStats(db)
    rep = await stats.campaign("alice", "promo")
    assert rep is not None and len(rep.runs) == 1
    got = rep.as_json()["total"]
    assert {k: got[k] for k in ("audience", "pending", "skipped", "queued", "suppressed",
                                "sent", "delivered", "deferred", "unsubscribed",
                                "complained")} == {
        "audience": 6, "pending": 0, "skipped": {"unsubscribed": 1}, "queued": 5,
        "suppressed": 0, "sent": 5, "delivered": 4, "deferred": 1, "unsubscribed": 1,
        "complained": 1,
    }  # fmt: skip
    assert got["bounced"] == {"total": 1, "hard": 1, "soft": 0,
                              "by_category": {"unknown-recipient": 1},
                              "by_reason": {"userunknown": 1}}  # fmt: skip
    assert got["opened"] == {"unique_human": 1, "unique_machine": 2, "human": 2, "machine": 2}
    assert got["clicked"] == {"unique_human": 1, "unique_machine": 0, "human": 1, "machine": 0}
    assert got["rates"]["open_rate"] == 0.25 and got["rates"]["bounce_rate"] == 0.2
    assert rep.as_json()["runs"][0]["queued"] == 5

    other = await stats.campaign("bob", "promo")
    assert other is not None and other.total.queued == 1 and other.total.opens.human == 1
    assert await stats.campaign("alice", "nope") is None
    assert await stats.campaign("carol", "promo") is None

    t = await stats.trigger("alice", "promo")
    assert t is not None
    s0, s1 = t.as_json()["steps"]
    assert (s0["step"], s0["template"], s0["queued"], s0["delivered"]) == (0, "promo", 2, 1)
    assert s0["bounced"]["soft"] == 1 and s0["bounced"]["by_category"] == {"mailbox-full": 1}
    assert s0["opened"]["unique_human"] == 1 and s0["clicked"]["human"] == 0
    assert (s1["template"], s1["queued"], s1["cancelled"], s1["pending"]) == ("tips", 1, 1, 0)
    assert s1["clicked"] == {"unique_human": 1, "unique_machine": 1, "human": 1, "machine": 1}
    assert t.total.queued == 3 and t.total.bounced == 1
    assert await stats.trigger("bob", "promo") is None
    later = await stats.trigger("alice", "promo", since=env.clock.now() + 1)
    assert later is not None and later.total.queued == 0 and later.steps[1].cancelled == 0
