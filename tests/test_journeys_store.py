"""Triggers, events and the step runner on a real database with a fake clock: a sequence's
steps fire once each at their times, a cancel event stops what is pending, ``once_per``
holds, resent events start nothing twice, lost consent skips a step, a failed commit
leaves the step pending, and the privacy hooks export and erase a contact's rows."""

from __future__ import annotations

import json
import re
import sqlite3
from email import message_from_bytes

import pytest

from mtaserver.auth import hash_password
from mtaserver.contacts import ContactInput
from mtaserver.journeys import EventInput, TriggerError, events_input, trigger_from_json
from mtaserver.outreach import OutreachSender
from mtaserver.outreach.runner import StepRunner
from mtaserver.pipeline import Pipeline
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.journeys import JourneyStore, erase_for, export_for
from mtaserver.storage.sqlite.privacy import SqlitePrivacy
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.queue.values import IdentityCodec
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.templates import TemplateStore
from mtaserver.storage.sqlite.users import UserStore
from tests.support.clock import FakeClock

HASH = hash_password("correct horse battery", n=2**10)
T0 = 1_800_000_000.0
SEQUENCE = {
    "event": "signup",
    "steps": [
        {"wait": "0s", "template": "welcome"},
        {"wait": "1h", "template": "day1"},
        {"wait": "3d", "template": "day3"},
    ],
    "from": {"email": "hello@example.com", "name": "Example"},
}
CART = {
    "event": "cart",
    "steps": [{"wait": "1h", "template": "reminder"}],
    "cancel": ["purchase"],
    "once_per": "1d",
    "from": "shop@example.com",
}


class Env:
    def __init__(self, db: Database) -> None:
        self.clock = FakeClock(T0)
        self.db = db
        self.spool = Spool(db, clock=self.clock)
        self.contacts = ContactStore(db, self.clock)
        self.templates = TemplateStore(db, self.clock)
        self.journeys = JourneyStore(db, self.clock)
        self.users = UserStore(db)
        pipeline = Pipeline(spool=self.spool, new_queue_id=new_queue_id, hostname="mta.test")
        self.sender = OutreachSender(
            templates=self.templates, users=self.users, suppressions=SuppressionStore(db),
            preparer=lambda: pipeline, queue=self.spool, clock=self.clock,
            new_queue_id=new_queue_id, hostname="mta.test",
        )  # fmt: skip
        self.runner = StepRunner(self.journeys, self.sender, self.clock)

    def subjects(self) -> list[str]:
        conn = sqlite3.connect(self.db.path)
        try:
            rows = conn.execute("SELECT body FROM recipients ORDER BY rowid").fetchall()
            rows = rows if all(r[0] for r in rows) else conn.execute(
                "SELECT body FROM messages ORDER BY rowid").fetchall()  # fmt: skip
        finally:
            conn.close()
        return [str(message_from_bytes(r[0])["Subject"]) for r in rows]

    async def event(self, address: str, name: str, at: float | None = None,
                    props: str = "{}") -> None:  # fmt: skip
        got = await self.journeys.record_events(
            "alice", [EventInput(address, name, props, self.clock.now() if at is None else at)]
        )
        assert got.stored == 1


@pytest.fixture
async def env(db: Database) -> Env:
    e = Env(db)
    await e.users.add("alice", HASH, ["example.com"])
    for name in ("welcome", "day1", "day3", "reminder"):
        subject = name + ' {{insert contact.first_name "default=you"}}'
        await e.templates.put(name, subject, None, "hi {{event.properties.sku}}")
    await e.contacts.upsert("alice", ContactInput("ann@example.org", '{"first_name":"Ann"}'))
    await e.contacts.upsert("alice", ContactInput("bo@example.org", "{}"))
    return e


def test_trigger_validation_names_the_field() -> None:
    t = trigger_from_json(SEQUENCE, "welcome")
    assert [s.wait for s in t.steps] == [0.0, 3600.0, 259200.0] and t.once_per is None
    assert trigger_from_json(t.as_json()) == t  # stored form round-trips
    cases = [
        ({**SEQUENCE, "steps": []}, "steps"),
        ({**SEQUENCE, "steps": [{"wait": "3 days", "template": "x"}]}, "steps[0].wait"),
        ({**SEQUENCE, "event": "bad event"}, "event"),
        ({**SEQUENCE, "cancel": ["signup"]}, "cancel"),
        ({**SEQUENCE, "from": "nobody"}, "from.email"),
        ({**SEQUENCE, "when": 1}, "when"),
    ]
    for doc, field in cases:
        with pytest.raises(TriggerError) as exc:
            trigger_from_json(doc, "t")
        assert exc.value.field == field, (doc, str(exc.value))
    with pytest.raises(TriggerError) as exc:
        events_input({"events": [{"contact": "a@x.org", "event": "e", "occurred_at": 1}]}, T0)
    assert exc.value.field == "events[0].occurred_at"
    got = events_input({"contact": "A@X.org", "event": "e", "occurred_at": "2027-01-15T08:00:00Z"},
                       1_800_000_000.0)  # fmt: skip
    assert got[0].address == "a@x.org" and got[0].occurred_at == 1_800_000_000.0


async def test_a_sequence_fires_each_step_once_at_its_time(env: Env) -> None:
    await env.journeys.put_trigger("alice", trigger_from_json(SEQUENCE, "welcome"))
    await env.event("ann@example.org", "signup")
    await env.event("ann@example.org", "signup")  # the same contact again: once, ever
    assert (await env.runner.run_once()).fired == 1
    assert (await env.runner.run_once()).fired == 0
    assert env.subjects() == ["welcome Ann"]
    env.clock.advance(3599)
    assert (await env.runner.run_once()).fired == 0
    env.clock.advance(1)
    assert (await env.runner.run_once()).fired == 1
    env.clock.advance(3 * 86400)
    assert (await env.runner.run_once()).fired == 1
    env.clock.advance(30 * 86400)
    assert (await env.runner.run_once()).fired == 0
    assert env.subjects() == ["welcome Ann", "day1 Ann", "day3 Ann"]
    counts = await env.journeys.step_counts("alice", "welcome")
    assert {i: c["fired"] for i, c in counts.items()} == {0: 1, 1: 1, 2: 1}


async def test_cancel_event_stops_the_reminder_and_once_per_holds(env: Env) -> None:
    await env.journeys.put_trigger("alice", trigger_from_json(CART, "cart"))
    await env.event("ann@example.org", "cart", props='{"sku":"A-1"}')
    await env.event("bo@example.org", "cart", props='{"sku":"B-2"}')
    env.clock.advance(600)
    await env.event("ann@example.org", "purchase")
    await env.event("bo@example.org", "cart")  # within once_per: no second reminder
    env.clock.advance(3600)
    assert (await env.runner.run_once()).fired == 1
    assert env.subjects() == ["reminder you"]  # bo's only; ann's was cancelled
    counts = await env.journeys.step_counts("alice", "cart")
    assert counts[0]["cancelled"] == 1 and counts[0]["fired"] == 1
    env.clock.advance(86400)
    await env.event("ann@example.org", "cart")  # a day later: a new window
    env.clock.advance(3600)
    assert (await env.runner.run_once()).fired == 1


async def test_resent_event_and_unknown_contact(env: Env) -> None:
    await env.journeys.put_trigger("alice", trigger_from_json({**CART, "once_per": "1s"}, "c"))
    e = EventInput("ann@example.org", "cart", "{}", T0)
    got = await env.journeys.record_events("alice", [e, e, EventInput("zz@example.org", "cart",
                                                                      "{}", T0)])  # fmt: skip
    assert (got.stored, got.started, got.unknown) == (2, 1, ("zz@example.org",))


async def test_lost_consent_skips_and_failed_commit_keeps_pending(env: Env) -> None:
    await env.journeys.put_trigger("alice", trigger_from_json(SEQUENCE, "welcome"))
    await env.event("ann@example.org", "signup")
    await env.event("bo@example.org", "signup")

    class Boom(Exception):
        pass

    real = env.spool.enqueue_many

    async def failing(*a: object, **k: object) -> None:
        raise Boom

    env.spool.enqueue_many = failing  # type: ignore[method-assign]
    with pytest.raises(Boom):
        await env.runner.run_once()
    env.spool.enqueue_many = real  # type: ignore[method-assign]
    await env.contacts.upsert("alice", ContactInput("bo@example.org", "{}", "unsubscribed"))
    stats = await env.runner.run_once()
    assert (stats.fired, stats.skipped) == (1, 1)
    assert env.subjects() == ["welcome Ann"]


async def test_export_and_erase(env: Env) -> None:
    await env.journeys.put_trigger("alice", trigger_from_json(SEQUENCE, "welcome"))
    await env.event("ann@example.org", "signup", props='{"plan":"pro"}')
    got = await env.journeys.export_for("alice", "ann@example.org")
    assert got["events"][0]["properties"] == {"plan": "pro"}  # type: ignore[index]
    assert len(got["trigger_steps"]) == 3  # type: ignore[arg-type]
    assert await env.journeys.export_for("bob", "ann@example.org") == {
        "events": [], "trigger_steps": []}  # fmt: skip
    assert await env.journeys.erase_for("ann@example.org") == 4
    got = await env.journeys.export_for("alice", "ann@example.org")
    assert json.dumps(got) == '{"events": [], "trigger_steps": []}'
    assert callable(export_for) and callable(erase_for)


async def test_privacy_export_and_erase_cover_events(env: Env) -> None:
    """The privacy requests reach the journeys' rows through contact_data_owners."""
    await env.journeys.put_trigger("alice", trigger_from_json(SEQUENCE, "welcome"))
    await env.event("ann@example.org", "signup", props='{"plan":"pro"}')
    privacy = SqlitePrivacy(env.db)
    got = await privacy.export(
        "Ann@Example.org", re.compile(re.escape("ann@example.org"), re.I), IdentityCodec(),
        bodies=False, generated_at=env.clock.now(),
    )  # fmt: skip
    journeys = got["contact_data"]["journeys"]
    assert list(journeys) == ["alice"]
    assert journeys["alice"]["events"][0]["properties"] == {"plan": "pro"}
    await privacy.erase_contacts("ann@example.org", env.clock.now())
    assert await env.journeys.export_address("ann@example.org") == {}
    conn = sqlite3.connect(env.db.path)
    try:
        left = conn.execute("SELECT count(*) FROM contact_events").fetchone()[0]
        left += conn.execute("SELECT count(*) FROM journey_steps").fetchone()[0]
    finally:
        conn.close()
    assert left == 0
