"""Triggers, events, the step runner and double opt-in on both backends: each case runs on a
SQLite file and on a private PostgreSQL server with the same inputs and must give the same
answers (sequences fire once each at their times, cancel and ``once_per`` hold, one
confirmation per membership, export and erase of a contact's rows). Then what only a
cluster has: two nodes' runners on one database fire every due step once between them."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from mtaserver.auth import hash_password
from mtaserver.config.storage import PostgresConfig
from mtaserver.contacts import ContactInput
from mtaserver.journeys import EventInput, trigger_from_json
from mtaserver.model import PreparedMessage, PreparedRecipient
from mtaserver.outreach import OutreachSender
from mtaserver.outreach.runner import StepRunner
from mtaserver.pipeline import Pipeline
from mtaserver.storage.postgres.contacts import PgContactStore
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.journeys import PgJourneyStore
from mtaserver.storage.postgres.optin import AlreadySent, PgOptInStore
from mtaserver.storage.postgres.queue import PgQueue
from mtaserver.storage.postgres.suppressions import PgSuppressionStore
from mtaserver.storage.postgres.templates import PgTemplateStore
from mtaserver.storage.postgres.users import PgUserStore
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.journeys import JourneyStore
from mtaserver.storage.sqlite.optin import OptInSettings, OptInStore
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.templates import TemplateStore
from mtaserver.storage.sqlite.users import UserStore
from tests.pg import PgServer, pg_dsn, pg_server  # noqa: F401
from tests.support.apiserver import ApiDaemon
from tests.support.clock import FakeClock
from tests.support.ports import free_port
from tests.test_journeys_e2e import acall

HASH = hash_password("correct horse battery", n=2**10)
T0 = 1_800_000_000.0
ADDR = "gail.dpr@x.test"
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


@dataclass
class Env:
    backend: str
    clock: FakeClock
    queue: Any
    journeys: Any
    optin: Any
    templates: Any
    users: Any
    suppressions: Any
    contacts: Any
    dsn: str = ""
    path: Path | None = None

    def runner(self, journeys: Any = None, queue: Any = None) -> StepRunner:
        q = queue or self.queue
        pipeline = Pipeline(spool=q, new_queue_id=new_queue_id, hostname="mta.test")
        sender = OutreachSender(
            templates=self.templates, users=self.users, suppressions=self.suppressions,
            preparer=lambda: pipeline, queue=q, clock=self.clock, new_queue_id=new_queue_id,
            hostname="mta.test",
        )  # fmt: skip
        return StepRunner(journeys or self.journeys, sender, self.clock)

    async def sql(self, query: str, *args: object) -> list[tuple[Any, ...]]:
        """Test-side reads and fixture rows (lists, memberships, many contacts at once)."""
        if self.backend == "sqlite":
            assert self.path is not None
            conn = sqlite3.connect(self.path)
            try:
                rows = conn.execute(query.replace("$1", "?").replace("$2", "?"), args).fetchall()
                conn.commit()
            finally:
                conn.close()
            return [tuple(r) for r in rows]
        c = await asyncpg.connect(self.dsn)
        try:
            return [tuple(r) for r in await c.fetch(query, *args)]
        finally:
            await c.close()

    async def subjects(self) -> list[str]:
        rows = await self.sql(
            "SELECT coalesce(r.body, m.body) FROM recipients r JOIN messages m "
            "ON m.id = r.queue_id ORDER BY m.received_at, m.id"
        )
        return sorted(str(message_from_bytes(bytes(r[0]))["Subject"]) for r in rows)

    async def contact(self, address: str, attrs: str = "{}", status: str = "subscribed") -> None:
        await self.contacts.upsert("alice", ContactInput(address, attrs, status))

    async def event(self, address: str, name: str, props: str = "{}") -> None:
        got = await self.journeys.record_events(
            "alice", [EventInput(address, name, props, self.clock.now())]
        )
        assert got.stored == 1


async def _prepare(e: Env) -> Env:
    await e.users.add("alice", HASH, ["example.com"])
    for name in ("welcome", "day1", "day3", "reminder"):
        subject = name + ' {{insert contact.first_name "default=you"}}'
        await e.templates.put(name, subject, None, "hi {{event.properties.sku}}")
    await e.contact("ann@example.org", '{"first_name":"Ann"}')
    await e.contact("bo@example.org")
    return e


@pytest.fixture(params=["sqlite", "postgresql"])
async def env(request: Any, tmp_path: Path) -> AsyncIterator[Env]:
    clock = FakeClock(T0)
    if request.param == "sqlite":
        db = Database(tmp_path / "mta.db")
        await db.open()
        spool = Spool(db, clock=clock)
        try:
            yield await _prepare(Env(
                "sqlite", clock, spool, JourneyStore(db, clock), OptInStore(db),
                TemplateStore(db, clock), UserStore(db), SuppressionStore(db, clock),
                ContactStore(db, clock), path=db.path,
            ))  # fmt: skip
        finally:
            await db.close()
        return
    dsn = request.getfixturevalue("pg_dsn")
    pg = PgDatabase(PostgresConfig(dsn=dsn, tls="disable", pool_size=4))
    await pg.open()
    try:
        yield await _prepare(Env(
            "postgresql", clock, PgQueue(pg, "node-a", clock=clock),
            PgJourneyStore(pg, clock, node="node-a"), PgOptInStore(pg),
            PgTemplateStore(pg, clock), PgUserStore(pg), PgSuppressionStore(pg, clock),
            PgContactStore(pg, clock),
            dsn=dsn,
        ))  # fmt: skip
    finally:
        await pg.close()


async def test_triggers_are_stored_replaced_and_deleted(env: Env) -> None:
    info, new = await env.journeys.put_trigger("alice", trigger_from_json(SEQUENCE, "welcome"))
    assert new and info.trigger.name == "welcome" and info.created_at == T0
    env.clock.advance(5)
    again, new = await env.journeys.put_trigger(
        "alice", trigger_from_json({**SEQUENCE, "enabled": False}, "welcome")
    )
    assert not new and again.id == info.id and again.updated_at == T0 + 5
    assert again.created_at == T0 and not again.trigger.enabled
    await env.journeys.put_trigger("alice", trigger_from_json(CART, "cart"))
    assert [t.trigger.name for t in await env.journeys.triggers("alice")] == ["cart", "welcome"]
    got = await env.journeys.get_trigger("alice", "welcome")
    assert got is not None and got.as_json() == again.as_json()
    assert await env.journeys.get_trigger("bob", "welcome") is None
    assert await env.journeys.delete_trigger("alice", "cart")
    assert not await env.journeys.delete_trigger("alice", "cart")


async def test_a_sequence_fires_each_step_once_at_its_time(env: Env) -> None:
    runner = env.runner()
    await env.journeys.put_trigger("alice", trigger_from_json(SEQUENCE, "welcome"))
    await env.event("ann@example.org", "signup")
    await env.event("ann@example.org", "signup")  # the same contact again: once, ever
    assert await env.journeys.next_due() == T0
    assert (await runner.run_once()).fired == 1
    assert (await runner.run_once()).fired == 0
    env.clock.advance(3599)
    assert (await runner.run_once()).fired == 0
    env.clock.advance(1)
    assert (await runner.run_once()).fired == 1
    env.clock.advance(3 * 86400)
    assert (await runner.run_once()).fired == 1
    assert await env.journeys.next_due() is None
    assert await env.subjects() == ["day1 Ann", "day3 Ann", "welcome Ann"]
    counts = await env.journeys.step_counts("alice", "welcome")
    assert {i: c["fired"] for i, c in counts.items()} == {0: 1, 1: 1, 2: 1}


async def test_cancel_once_per_unknown_and_lost_consent(env: Env) -> None:
    runner = env.runner()
    await env.journeys.put_trigger("alice", trigger_from_json(CART, "cart"))
    e = EventInput("ann@example.org", "cart", '{"sku":"A-1"}', T0)
    got = await env.journeys.record_events(
        "alice", [e, e, EventInput("zz@example.org", "cart", "{}", T0),
                  EventInput("bo@example.org", "view", "{}", T0)],
    )  # fmt: skip
    assert got.as_json() == {"stored": 3, "started": 1, "cancelled": 0,
                             "unknown_contacts": ["zz@example.org"]}  # fmt: skip
    await env.event("bo@example.org", "cart")
    env.clock.advance(600)
    got = await env.journeys.record_events(
        "alice", [EventInput("ann@example.org", "purchase", "{}", env.clock.now())]
    )
    assert got.cancelled == 1
    await env.event("bo@example.org", "cart")  # within once_per: no second reminder
    await env.contact("bo@example.org", status="unsubscribed")
    env.clock.advance(3600)
    stats = await runner.run_once()
    assert (stats.fired, stats.skipped) == (0, 1)  # bo lost consent; ann's was cancelled
    counts = await env.journeys.step_counts("alice", "cart")
    assert counts == {0: {"pending": 0, "fired": 0, "cancelled": 1, "skipped": 1}}
    env.clock.advance(86400)
    await env.event("ann@example.org", "cart")  # a day later: a new window
    env.clock.advance(3600)
    assert (await runner.run_once()).fired == 1
    assert await env.subjects() == ["reminder Ann"]


async def test_export_and_erase_of_a_contacts_rows(env: Env) -> None:
    await env.journeys.put_trigger("alice", trigger_from_json(SEQUENCE, "welcome"))
    await env.event("ann@example.org", "signup", props='{"plan":"pro"}')
    got = await env.journeys.export_for("alice", "ann@example.org")
    assert got["events"] == [{"event": "signup", "properties": {"plan": "pro"},
                              "occurred_at": "2027-01-15T08:00:00Z",
                              "received_at": "2027-01-15T08:00:00Z"}]  # fmt: skip
    assert [s["state"] for s in got["trigger_steps"]] == ["pending"] * 3
    everyone = await env.journeys.export_address("ann@example.org")
    assert list(everyone) == ["alice"] and everyone["alice"] == got
    assert await env.journeys.erase_for("ann@example.org") == 4
    assert await env.journeys.export_for("alice", "ann@example.org") == {
        "events": [], "trigger_steps": []}  # fmt: skip


async def test_optin_settings_pending_and_one_mark_per_membership(env: Env) -> None:
    await env.sql("INSERT INTO lists (owner, name, double_opt_in, created_at) "
                  "VALUES ('alice', 'news', 1, $1)", T0)  # fmt: skip
    assert await env.optin.settings("alice", "news") == OptInSettings()
    assert await env.optin.settings("alice", "nope") is None
    s = OptInSettings("news@example.com", "Please confirm", "Click {{confirm_url}}")
    assert await env.optin.set_settings("alice", "news", s) == s
    assert await env.optin.set_settings("alice", "nope", s) is None
    assert await env.optin.settings("alice", "news") == s
    rows = await env.sql("SELECT id FROM contacts ORDER BY address")
    (lid,) = (await env.sql("SELECT id FROM lists"))[0]
    for (cid,) in rows:
        await env.sql("INSERT INTO list_members (list_id, contact_id, status, added_at) "
                      "VALUES ($1, $2, 'unconfirmed', 1)", lid, cid)  # fmt: skip
    pending = await env.optin.pending()
    assert [(p.owner, p.list_name, p.address, p.settings) for p in pending] == [
        ("alice", "news", "ann@example.org", s),
        ("alice", "news", "bo@example.org", s),
    ]
    assert len(await env.optin.pending(after=(pending[0].list_id, pending[0].contact_id))) == 1
    m = PreparedMessage(
        queue_id=new_queue_id(T0), sender="no-reply@example.com",
        recipients=(PreparedRecipient(pending[0].address),), data=b"Subject: c\r\n\r\nc\r\n",
        user="alice", client_ip="127.0.0.1", received_at=T0,
    )  # fmt: skip
    mark = env.optin.mark_sent_op([(pending[0].list_id, pending[0].contact_id, m.queue_id)], T0)
    await env.queue.enqueue_many([m], also=mark)
    assert [p.address for p in await env.optin.pending()] == ["bo@example.org"]
    if env.backend == "postgresql":  # a second node queuing the same confirmation: kept once
        again = dataclasses.replace(m, queue_id=new_queue_id(T0 + 1))
        key = (pending[0].list_id, pending[0].contact_id, again.queue_id)
        with pytest.raises(AlreadySent):
            await env.queue.enqueue_many([again], also=env.optin.mark_sent_op([key], T0))
        assert await env.queue.show(again.queue_id) is None  # rolled back with the mark
    assert len(await env.sql("SELECT * FROM messages")) == 1


async def test_two_nodes_fire_each_due_step_once(pg_dsn: str) -> None:  # noqa: F811
    """Two nodes' runners on one database, polling together: every step is fired by one of
    them, each is queued once, and both take part (the claim skips the other's rows)."""
    clock = FakeClock(T0)
    dbs = [PgDatabase(PostgresConfig(dsn=pg_dsn, tls="disable", pool_size=4)) for _ in "ab"]
    for d in dbs:
        await d.open()
    try:
        a, b = dbs
        env = await _prepare(Env(
            "postgresql", clock, PgQueue(a, "node-a", clock=clock),
            PgJourneyStore(a, clock, node="node-a"), PgOptInStore(a), PgTemplateStore(a, clock),
            PgUserStore(a), PgSuppressionStore(a, clock), PgContactStore(a, clock), dsn=pg_dsn,
        ))  # fmt: skip
        await env.sql(
            "INSERT INTO contacts (owner, address, created_at, updated_at) "
            "SELECT 'alice', 'c' || i || '@example.org', $1, $1 FROM generate_series(1, 300) i",
            T0,
        )
        await env.journeys.put_trigger("alice", trigger_from_json(SEQUENCE, "welcome"))
        addresses = [r[0] for r in await env.sql("SELECT address FROM contacts")]
        await env.journeys.record_events(
            "alice", [EventInput(x, "signup", "{}", T0) for x in addresses]
        )
        runners = [
            env.runner(),
            env.runner(PgJourneyStore(b, clock, node="node-b"), PgQueue(b, "node-b", clock=clock)),
        ]
        for r in runners:
            r.batch = 20
        fired = [0, 0]

        async def drain(i: int) -> None:
            while (stats := await runners[i].run_once()).fired:
                fired[i] += stats.fired

        await asyncio.gather(drain(0), drain(1))
        assert sum(fired) == len(addresses) == 302 and min(fired) > 0, fired
        rows = await env.sql(
            "SELECT count(*), count(DISTINCT r.address) FROM recipients r "
            "JOIN messages m ON m.id = r.queue_id"
        )
        assert rows == [(302, 302)]
        counts = await env.journeys.step_counts("alice", "welcome")
        assert counts[0]["fired"] == 302 and counts[0]["pending"] == 0
    finally:
        for d in dbs:
            await d.close()


async def test_a_postgresql_node_sends_triggered_mail_to_the_mx(
    pg_server: PgServer,  # noqa: F811
    pg_dsn: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A daemon on PostgreSQL: a trigger put over /v1/triggers, an event posted to
    /v1/events, the mail at the test MX once, DKIM-signed, the step fired in the database."""
    (tmp_path / "pgpass").write_text(pg_server.password + "\n")
    api = ApiDaemon(tmp_path)
    api.cfg.set("storage", backend="postgresql", tls="disable", pool_size=4,
                dsn=pg_dsn.replace(f":{pg_server.password}@", "@"),
                password_file=str(tmp_path / "pgpass"))  # fmt: skip
    async with api:
        (tmp_path / "welcome.txt").write_text("hi {{contact.first_name}}")
        out = await asyncio.to_thread(
            api.daemon.cli, "template", "put", "welcome", "--subject",  # type: ignore[union-attr]
            'Welcome, {{insert contact.first_name "default=friend"}}',
            "--text", str(tmp_path / "welcome.txt"),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        await asyncio.to_thread(
            api.query,
            "INSERT INTO contacts (owner, address, attributes, created_at, updated_at) "
            "VALUES ('app', 'ann@dest.test', '{\"first_name\": \"Ann\"}', 1, 1)",
        )
        status, body = await acall(api, "PUT", "/v1/triggers/welcome", {
            "event": "signup", "steps": [{"wait": "0s", "template": "welcome"}],
            "from": {"email": "hello@example.com", "name": "Example"}})  # fmt: skip
        assert status == 201, body
        status, body = await acall(api, "POST", "/v1/events", {"events": [
            {"contact": "ann@dest.test", "event": "signup"},
            {"contact": "ann@dest.test", "event": "signup"},  # once per contact, ever
            {"contact": "nobody@dest.test", "event": "signup"}]})  # fmt: skip
        assert status == 202, body
        assert body == {"stored": 2, "started": 1, "cancelled": 0,
                        "unknown_contacts": ["nobody@dest.test"]}  # fmt: skip
        await api.wait_messages(1)
        (msg,) = api.sink.messages
        assert msg.rcpt_tos == ["ann@dest.test"] and api.dkim_ok(msg.data)
        assert message_from_bytes(msg.data)["Subject"] == "Welcome, Ann"
        status, body = await acall(api, "GET", "/v1/triggers/welcome")
        assert status == 200 and body["step_counts"]["0"]["fired"] == 1, body
        rows = await asyncio.to_thread(api.query, "SELECT state, lease_node FROM journey_steps")
        assert rows == [("fired", None)]


async def test_optin_confirm_and_privacy_requests_over_http_on_a_postgresql_node(
    pg_server: PgServer,  # noqa: F811
    pg_dsn: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A PostgreSQL node: a double opt-in member gets one confirmation mail, its link's POST
    confirms; the admin API exports the contact and erases it, keeping hashed proofs."""
    from tests.test_contacts_api import Client
    from tests.test_optin import LINK, OptInDaemon, body_of, mail_to

    (tmp_path / "pgpass").write_text(pg_server.password + "\n")
    api = OptInDaemon(tmp_path)
    api.cfg.set("storage", backend="postgresql", tls="disable", pool_size=4,
                dsn=pg_dsn.replace(f":{pg_server.password}@", "@"),
                password_file=str(tmp_path / "pgpass"))  # fmt: skip
    api.cfg.set("admin", listen=f"127.0.0.1:{free_port()}")
    async with api, aiohttp.ClientSession() as session:
        c = Client(api, session, api.key)
        st, _ = await c.call("POST", "/v1/lists", {"name": "news", "double_opt_in": True})
        assert st == 201
        assert (await c.call("POST", "/v1/lists/news/members", {"emails": [ADDR]}))[0] == 200
        [raw] = await mail_to(api, ADDR)
        link = LINK.search(body_of(raw))
        assert link and api.dkim_ok(raw)
        async with session.post(link.group(1), data={"confirm": "yes"}) as r:
            assert r.status == 200
        st, body = await c.call("GET", f"/v1/contacts/{ADDR}")
        assert body["consent"]["source"] == "confirm" and body["lists"][0]["confirmed_at"]
        token = (await asyncio.to_thread(
            api.daemon.cli, "admin", "token", "create", "--name", "ops")).stdout.strip()  # type: ignore[union-attr]  # fmt: skip
        host, port = api.cfg.address("admin", "listen")
        admin = f"http://{host}:{port}/api/v1/privacy"
        h = {"Authorization": f"Bearer {token}"}
        async with session.get(f"{admin}/export", params={"address": ADDR}, headers=h) as r:
            assert r.status == 200, await r.text()
            export = await r.json()
        assert [x["address"] for x in export["received"]] == [ADDR]  # the confirmation
        assert export["contacts"][0]["lists"][0]["status"] == "subscribed"
        async with session.post(f"{admin}/erase", json={"address": ADDR}, headers=h) as r:
            assert r.status == 200, await r.text()
            erased = await r.json()
        assert (erased["contacts"], erased["consent_proofs"], erased["recipients"]) == (1, 2, 1)
        async with session.get(f"{admin}/export", params={"address": ADDR}, headers=h) as r:
            again = await r.json()
        assert again["contacts"] == [] and again["received"] == []
        assert [(p["list_name"], p["source"]) for p in again["consent_proofs"]] == [
            (None, "confirm"), ("news", "confirm")]  # fmt: skip
    assert (await mail_to(api, ADDR)) == [raw]  # one confirmation, ever
