"""OutreachSender on a real database and the real pipeline: a stored template renders the
contact's attributes (a missing one as its declared default), consent gates every send,
a suppressed recipient is stored as dropped, and ``commit`` stores messages together with
the caller's own write — or, when that write raises, neither."""

from __future__ import annotations

import sqlite3
from email import message_from_bytes
from email.message import Message

import pytest

from mtaserver.auth import hash_password
from mtaserver.contacts import ContactInput
from mtaserver.outreach import Links, MergeInput, Outgoing, OutreachSender, Skipped
from mtaserver.outreach.merge import EventData
from mtaserver.outreach.send import Sender
from mtaserver.pipeline import Pipeline
from mtaserver.storage.sqlite.contacts import Contact, ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.templates import TemplateStore
from mtaserver.storage.sqlite.users import UserStore

HASH = hash_password("correct horse battery", n=2**10)
FROM = Sender("news@example.com", "Example News")
HTML = (
    '<p>Hello {{insert contact.first_name "default=there"}}, plan {{contact.plan}}'
    "{{#if event.name}} after {{event.name}} of {{event.properties.sku}}{{/if}}.</p>"
    '<a href="{{unsubscribe_url}}">unsubscribe</a> <a href="{{preferences_url}}">prefs</a>'
)


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


def links(queue_id: str, owner: str, address: str, sender_domain: str) -> Links:
    return Links(f"https://t.example/u/{queue_id}/{address}", f"https://t.example/p/{queue_id}")


class Env:
    def __init__(self, db: Database) -> None:
        self.clock = FakeClock(1_800_000_000.0)
        self.db = db
        self.spool = Spool(db, clock=self.clock)
        self.contacts = ContactStore(db, self.clock)
        self.templates = TemplateStore(db, self.clock)
        self.suppressions = SuppressionStore(db)
        self.users = UserStore(db)
        pipeline = Pipeline(spool=self.spool, new_queue_id=new_queue_id, hostname="mta.test")
        self.sender = OutreachSender(
            templates=self.templates, users=self.users, suppressions=self.suppressions,
            preparer=lambda: pipeline, queue=self.spool, clock=self.clock,
            new_queue_id=new_queue_id, hostname="mta.test", links=links,
        )  # fmt: skip


@pytest.fixture
async def env(db: Database) -> Env:
    e = Env(db)
    await e.users.add("alice", HASH, ["example.com"])
    await e.users.add("bob", HASH, ["example.net"])
    await e.templates.put("welcome", "Welcome, {{insert contact.first_name \"default=friend\"}}",
                          HTML, None)  # fmt: skip
    return e


async def contact(
    e: Env, address: str, attrs: str = "{}", consent: str | None = None, owner: str = "alice"
) -> Contact:
    c, _ = await e.contacts.upsert(owner, ContactInput(address, attrs, consent))
    return c


def parsed(o: Outgoing) -> Message:
    return message_from_bytes(o.message.data)


def html_of(m: Message) -> str:
    for part in m.walk():
        if part.get_content_type() == "text/html":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode()
    raise AssertionError("no html part")


async def test_renders_attributes_event_and_links(env: Env) -> None:
    c = await contact(env, "ann@example.org", '{"first_name":"Ann","plan":"pro"}')
    data = MergeInput(event=EventData("cart", {"sku": "A-1"}, 1_799_999_000.0))
    out = await env.sender.compose_and_prepare("alice", "welcome", c, data, from_=FROM,
                                               tags={"trigger": "t1", "step": 0})  # fmt: skip
    assert isinstance(out, Outgoing) and out.suppressed is None
    m = parsed(out)
    assert m["Subject"] == "Welcome, Ann" and m["To"] == "ann@example.org"
    assert "Example News" in m["From"]
    html = html_of(m)
    assert "Hello Ann, plan pro after cart of A-1." in html
    qid = out.message.queue_id
    assert f"https://t.example/u/{qid}/ann@example.org" in html
    assert f"https://t.example/p/{qid}" in html
    assert dict(out.event.data)["trigger"] == "t1" and out.event.queue_id == qid


async def test_missing_attributes_render_default_or_empty(env: Env) -> None:
    c = await contact(env, "bo@example.org")
    out = await env.sender.compose_and_prepare("alice", "welcome", c, MergeInput(), from_=FROM)
    assert isinstance(out, Outgoing)
    m = parsed(out)
    assert m["Subject"] == "Welcome, friend"
    assert "Hello there, plan ." in html_of(m)


@pytest.mark.parametrize("consent", ["unconfirmed", "unsubscribed"])
async def test_only_subscribed_contacts_get_mail(env: Env, consent: str) -> None:
    c = await contact(env, "cy@example.org", consent=consent)
    out = await env.sender.compose_and_prepare("alice", "welcome", c, MergeInput(), from_=FROM)
    assert out == Skipped("cy@example.org", consent)


async def test_sender_template_and_owner_are_checked(env: Env) -> None:
    c = await contact(env, "di@example.org")
    other = Sender("x@example.net")
    out = await env.sender.compose_and_prepare("alice", "welcome", c, MergeInput(), from_=other)
    assert isinstance(out, Skipped) and out.reason == "sender"
    out = await env.sender.compose_and_prepare("alice", "nope", c, MergeInput(), from_=FROM)
    assert isinstance(out, Skipped) and out.reason == "template"
    out = await env.sender.compose_and_prepare("bob", "welcome", c, MergeInput(), from_=other)
    assert isinstance(out, Skipped) and out.reason == "owner"


async def test_suppressed_recipient_is_stored_dropped(env: Env) -> None:
    await env.suppressions.add("ed@example.org", "hard-bounce")
    c = await contact(env, "ed@example.org")
    out = await env.sender.compose_and_prepare("alice", "welcome", c, MergeInput(), from_=FROM)
    assert isinstance(out, Outgoing) and out.suppressed is not None
    await env.sender.commit([out])
    info = await env.spool.show(out.message.queue_id)
    assert info is not None and [r.state for r in info.recipients] == ["suppressed"]


class Refused(Exception):
    pass


async def test_commit_stores_messages_with_the_callers_write_or_nothing(env: Env) -> None:
    c = await contact(env, "fi@example.org", '{"first_name":"Fi"}')
    a = await env.sender.compose_and_prepare("alice", "welcome", c, MergeInput(), from_=FROM)
    b = await env.sender.compose_and_prepare("alice", "welcome", c, MergeInput(), from_=FROM)
    assert isinstance(a, Outgoing) and isinstance(b, Outgoing)
    seen: list[int] = []

    def also(conn: sqlite3.Connection) -> None:  # stands in for an owner's write
        seen.append(conn.execute("SELECT count(*) FROM messages").fetchone()[0])

    await env.sender.commit([a], also)
    assert seen == [1]  # ran in the same transaction, after the message was inserted

    def refuse(conn: sqlite3.Connection) -> None:
        raise Refused

    with pytest.raises(Refused):
        await env.sender.commit([b], refuse)
    assert await env.spool.show(a.message.queue_id) is not None
    assert await env.spool.show(b.message.queue_id) is None
    assert await env.spool.body(a.message.queue_id) is not None


class CountingUsers(UserStore):
    """The real user store, counting lookups."""

    calls = 0

    async def lookup(self, name: str):  # type: ignore[no-untyped-def]
        self.calls += 1
        return await super().lookup(name)


async def test_resolve_once_then_compose_each_as_compose_and_prepare(env: Env) -> None:
    """A batch looks the user and template up once; every message is what
    compose_and_prepare makes, and a template edited mid-batch does not mix versions."""
    users = CountingUsers(env.db)
    env.sender._users = users  # the same sender, its user store counted
    people = [await contact(env, f"p{i}@example.org", f'{{"first_name":"P{i}"}}') for i in range(5)]
    resolved = await env.sender.resolve("alice", "welcome", FROM)
    await env.templates.put("welcome", "Changed", "<p>changed</p>", None)
    outs = [await env.sender.compose(resolved, p, MergeInput()) for p in people]
    assert users.calls == 1
    assert all(isinstance(o, Outgoing) for o in outs)
    subjects = [parsed(o)["Subject"] for o in outs if isinstance(o, Outgoing)]
    assert subjects == [f"Welcome, P{i}" for i in range(5)]  # the version resolved
    one = await env.sender.compose_and_prepare("alice", "welcome", people[0], MergeInput(),
                                               from_=FROM)  # fmt: skip
    assert isinstance(one, Outgoing) and parsed(one)["Subject"] == "Changed"
    unsub = await contact(env, "u@example.org", consent="unsubscribed")
    bad = await env.sender.resolve("alice", "nope", FROM)
    assert await env.sender.compose(bad, unsub, MergeInput()) == Skipped("u@example.org",
                                                                          "unsubscribed")  # fmt: skip
    got = await env.sender.compose(bad, people[0], MergeInput())
    assert isinstance(got, Skipped) and got.reason == "template"
