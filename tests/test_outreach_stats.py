"""Per-campaign and per-trigger-step numbers on a real database: messages queued by a
campaign's feeder and a trigger's step runner (fake clock), their outcomes written as the
delivery, bounce and tracking stages write them (``EventLog``), then read back run by run
and step by step. A trigger and another user's campaign of the same name never mix in."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import sqlite3
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mtaserver.app.campaigns import Feeder
from mtaserver.auth import hash_password
from mtaserver.cli import main
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
from mtaserver.storage.sqlite.tokens import TokenStore
from mtaserver.storage.sqlite.users import UserStore
from tests.support.admin import AdminClient
from tests.support.clock import FakeClock
from tests.support.daemon import free_port
from tests.support.mxsink import wait_for
from tests.test_journeys_e2e import acall, contacts
from tests.test_optin import OptInDaemon
from tests.tracking.conftest import BROWSER

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
    assert {k: got[k] for k in ("audience", "pending", "cancelled", "skipped", "queued", "suppressed",
                                "sent", "delivered", "deferred", "unsubscribed",
                                "complained")} == {
        "audience": 6, "pending": 0, "cancelled": 0, "skipped": {"unsubscribed": 1}, "queued": 5,
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


# -- end to end ---------------------------------------------------------------------------------
PROMO_HTML = '<p>Hi {{contact.email}}</p><p><a href="https://shop.example.com/spring">Shop</a></p>'


def _links(raw: bytes) -> tuple[list[str], list[str], str]:
    """(pixels, tracked links, one-click unsubscribe URL) of a delivered message."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    html = next(p for p in msg.walk() if p.get_content_type() == "text/html").get_content()
    pixels = re.findall(r'<img src="([^"]+\.gif)"', html)
    links = re.findall(r'href="(http://127\.0\.0\.1:\d+/c/[^"]+)"', html)
    (unsub,) = (u for u in re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))
                if u.startswith("http"))  # fmt: skip
    return pixels, links, unsub


async def test_campaign_numbers_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon sends a campaign to five contacts through the test MX: one address is
    refused (550 5.1.1), one person opens, one clicks, one unsubscribes (one-click), one
    does nothing. The admin API (validated against its openapi.json) and
    ``mtaserver stats --campaign`` count exactly that; a one-step trigger's step apart."""
    api = OptInDaemon(tmp_path)
    api.cfg.data["tracking"].update(opens=True, clicks=True, unsubscribe=True,
                                    scanner_window="1ms", burst_window="1ms")  # fmt: skip
    api.cfg.set("admin", listen=f"127.0.0.1:{free_port()}")
    api.sink.rcpt_replies["bad@dest.test"] = "550 5.1.1 no such user"
    people = [f"{p}@dest.test" for p in ("bad", "opener", "clicker", "leaver", "quiet")]
    async with api, aiohttp.ClientSession(headers={"User-Agent": BROWSER}) as http:
        assert api.daemon is not None
        db = Database(api.cfg.database)
        await db.open()
        try:
            token = (await TokenStore(db).create("stats"))[1]
        finally:
            await db.close()
        host, port = api.cfg.address("admin", "listen")
        admin = AdminClient(f"http://{host}:{port}", token)

        def get(path: str, **query: str) -> Any:
            return admin.ok("GET", path, query=query)

        await asyncio.to_thread(admin.ok, "POST", "/api/v1/templates", 201,
                                body={"name": "promo", "subject": "Spring", "html": PROMO_HTML})  # fmt: skip
        await contacts(api, *({"email": a} for a in people))
        assert (await acall(api, "POST", "/v1/lists", {"name": "news"}))[0] == 201
        assert (await acall(api, "POST", "/v1/lists/news/members", {"emails": people}))[0] == 200
        st, body = await acall(api, "POST", "/v1/campaigns", {"name": "spring",
                               "template": "promo", "from": "news@example.com", "list": "news"})  # fmt: skip
        assert st == 201, body
        assert (await acall(api, "POST", "/v1/campaigns/spring/start"))[0] == 200
        st, _ = await acall(api, "PUT", "/v1/triggers/welcome", {
            "event": "signup", "steps": [{"wait": "0s", "template": "promo"}],
            "from": "hello@example.com"})  # fmt: skip
        assert st == 201
        assert (await acall(api, "POST", "/v1/events",
                            {"contact": "quiet@dest.test", "event": "signup"}))[0] == 202  # fmt: skip

        def final() -> int:  # not counting the bounce's DSN to the sender
            return int(api.query("SELECT count(*) FROM recipients r JOIN messages m ON "
                                 "m.id = r.queue_id WHERE NOT m.is_dsn AND r.state IN "
                                 "('delivered', 'bounced')")[0][0])  # fmt: skip

        await wait_for(lambda: final() == 6, 30)  # 5 of the campaign, 1 of the trigger
        by_rcpt = {r.rcpt_tos[0]: r.data for r in api.sink.messages}
        pixels, _, _ = _links(by_rcpt["opener@dest.test"])
        _, links, _ = _links(by_rcpt["clicker@dest.test"])
        _, _, unsub = _links(by_rcpt["leaver@dest.test"])
        async with http.get(pixels[0]) as r:
            assert r.status == 200
        async with http.get(links[0], allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "https://shop.example.com/spring"
        async with http.post(unsub, data={"List-Unsubscribe": "One-Click"}) as r:
            assert r.status == 200

        path = "/api/v1/campaigns/spring/stats"

        def counted() -> bool:
            t = get(path, user="app")["total"]
            return bool(t["opened"]["human"] + t["clicked"]["human"] >= 2 and t["unsubscribed"])

        await wait_for(counted, 30)
        report = await asyncio.to_thread(get, path, user="app")
        total = report["total"]
        assert report["campaign"] == {"user": "app", "name": "spring", "status": "done"}
        assert {k: total[k] for k in ("audience", "queued", "sent", "delivered",
                                      "unsubscribed", "complained")} == {
            "audience": 5, "queued": 5, "sent": 5, "delivered": 4, "unsubscribed": 1,
            "complained": 0,
        }  # fmt: skip
        assert total["bounced"] == {"total": 1, "hard": 1, "soft": 0,
                                    "by_category": {"unknown-recipient": 1},
                                    "by_reason": {"userunknown": 1}}  # fmt: skip
        assert total["opened"] == {"unique_human": 1, "unique_machine": 0, "human": 1,
                                   "machine": 0}  # fmt: skip
        assert total["clicked"] == {"unique_human": 1, "unique_machine": 0, "human": 1,
                                    "machine": 0}  # fmt: skip
        assert total["rates"]["open_rate"] == 0.25 and total["rates"]["bounce_rate"] == 0.2
        assert [r["queued"] for r in report["runs"]] == [5]
        trig = await asyncio.to_thread(get, "/api/v1/triggers/welcome/stats", user="app",
                                       since="1h")  # fmt: skip
        (step,) = trig["steps"]
        assert (step["template"], step["queued"], step["delivered"]) == ("promo", 1, 1)
        assert trig["total"]["opened"]["human"] == 0  # the campaign's hits are not its

        out = await asyncio.to_thread(api.daemon.cli, "stats", "--json", "--campaign", "spring",
                                      "--user", "app")  # fmt: skip
        assert out.returncode == 0 and json.loads(out.stdout) == report, out.stderr
        cfg = str(api.cfg.path)
        args = ["stats", "-c", cfg, "--user", "app"]
        assert await asyncio.to_thread(main, [*args, "--trigger", "welcome"]) == 0
        text = capsys.readouterr().out
        assert "step 0 (promo): pending 0, cancelled 0, skipped 0" in text, text
        assert await asyncio.to_thread(main, [*args, "--campaign", "spring"]) == 0
        text = capsys.readouterr().out
        assert "bounced       1  (hard 1, soft 0; 20.0%)  [unknown-recipient 1]" in text, text


def test_stats_benchmark_agrees_with_the_cohort(tmp_path: Path) -> None:
    """bench.outreach_stats on a small campaign (smoke test, not a figure): the campaign
    report and the tag cohort count the same messages, deliveries and opens, and the
    report reads events only through their (queue_id, recipient) index."""
    from bench.outreach_stats import NAME, OWNER, build
    from mtaserver.storage.sqlite import outreach_stats as sql
    from mtaserver.storage.sqlite.outreach_stats import campaign_report
    from mtaserver.storage.sqlite.reports import cohort_stats

    build(tmp_path / "b.db", 600)
    conn = sqlite3.connect(tmp_path / "b.db")
    try:
        rep, cohort = campaign_report(conn, OWNER, NAME), cohort_stats(conn, 0.0, NAME, OWNER)
        for name in ("CAMPAIGN_COUNTS", "CAMPAIGN_BOUNCES", "TRIGGER_COUNTS", "TRIGGER_BOUNCES"):
            plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + getattr(sql, name),
                                               {"id": 1, "since": 0})]  # fmt: skip
            # a campaign's or trigger's own rows, then each message's events by index
            assert "SEARCH e USING INDEX events_queue_recipient (queue_id=?)" in plan, plan
            assert not any(p.startswith(("SCAN e", "SCAN cr", "SCAN r ")) for p in plan), plan
    finally:
        conn.close()
    assert rep is not None
    t = rep.total
    assert (t.queued, t.delivered, t.bounced) == (cohort.messages, cohort.delivered, 12)
    assert (t.opens.unique_human, t.clicks.unique_human, t.unsubscribed, t.complained) == (
        cohort.unique_human_opens, cohort.unique_human_clicks, cohort.unsubscribes,
        cohort.complaints)  # fmt: skip
    assert dict(t.bounce_kinds) == {"hard": 6, "soft": 6} and t.opens.unique_machine == 16
