"""Contacts, lists and segments on both backends: each store case runs once on a SQLite file
and once on a real PostgreSQL server (``tests/pg.py``) with the same inputs and the same
expected answers — attribute merges (RFC 7396), the consent rules, typed search, imports
with duplicates and bad lines, lists and double opt-in, preferences, and the segment
language over attributes, fields, lists and engagement from real event rows. Then a node
on PostgreSQL serves the /v1 contacts and segments routes over HTTP, and ``mtaserver
contacts import`` writes into the cluster's database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mtaserver.config.storage import PostgresConfig
from mtaserver.contacts import ContactConflict, ContactError, ContactInput, ImportParser
from mtaserver.model import Event, PreparedMessage, PreparedRecipient
from mtaserver.segments import SegmentError, SegmentNotFound, parse
from mtaserver.storage.postgres.activity import PgActivityStore
from mtaserver.storage.postgres.contacts import PgContactStore
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.events import PgEventLog
from mtaserver.storage.postgres.queue import PgQueue
from mtaserver.storage.postgres.segments import PgSegmentStore
from mtaserver.storage.postgres.users import PgUserStore
from mtaserver.storage.sqlite.activity import ActivityStore
from mtaserver.storage.sqlite.contacts import ContactStore, Upserted
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.segments import SegmentStore
from mtaserver.storage.sqlite.users import UserStore
from tests.pg import PgServer, pg_dsn, pg_server  # noqa: F401
from tests.support.clock import FakeClock
from tests.support.daemon import Daemon, TestConfig
from tests.support.ports import free_port

T0 = 1_800_000_000.0  # 2027-01-15
DAY = 86400.0


@dataclass(frozen=True)
class Stores:
    backend: str
    clock: FakeClock
    contacts: Any
    segments: Any
    activity: Any
    queue: Any
    events: Any


@pytest.fixture(params=["sqlite", "postgresql"])
async def s(request: Any, tmp_path: Path) -> AsyncIterator[Stores]:
    clock = FakeClock(T0)
    if request.param == "sqlite":
        db = Database(tmp_path / "mta.db")
        await db.open()
        try:
            for name in ("alice", "bob"):
                await UserStore(db, clock).add(name, "x", [f"{name}.example"])
            yield Stores("sqlite", clock, ContactStore(db, clock), SegmentStore(db, clock),
                         ActivityStore(db), Spool(db, clock=clock), EventLog(db))  # fmt: skip
        finally:
            await db.close()
        return
    pg = PgDatabase(PostgresConfig(dsn=request.getfixturevalue("pg_dsn"), tls="disable",
                                   pool_size=4))  # fmt: skip
    await pg.open()
    try:
        for name in ("alice", "bob"):
            await PgUserStore(pg, clock).add(name, "x", [f"{name}.example"])
        yield Stores("postgresql", clock, PgContactStore(pg, clock), PgSegmentStore(pg, clock),
                     PgActivityStore(pg), PgQueue(pg, "node-a", clock=clock),
                     PgEventLog(pg))  # fmt: skip
    finally:
        await pg.close()


def ci(address: str, attrs: str = "{}", consent: str | None = None, **kw: Any) -> ContactInput:
    return ContactInput(address, attrs, consent, **kw)


def names(found: list[Any]) -> list[str]:
    return [c.address.split("@")[0] for c in found]


async def test_contacts_merge_consent_and_search(s: Stores) -> None:
    st = s.contacts
    c, created = await st.upsert(
        "alice",
        ci("Ann@X.test", '{"name":"Ann","plan":"pro","age":30,"a":{"city":"Oslo","z":"1"}}'),
    )
    assert created and c.address == "ann@x.test" and c.consent_status == "subscribed"
    s.clock.advance(10)
    c, created = await st.upsert(
        "alice", ci("ann@x.test", '{"plan":null,"a":{"z":null},"n":"30","b":[null]}',
                    "unsubscribed"), "import",
    )  # fmt: skip
    assert not created
    assert c.attrs() == {"name": "Ann", "age": 30, "a": {"city": "Oslo"}, "n": "30", "b": [None]}
    assert (c.consent_status, c.consent_source, c.consent_at) == ("unsubscribed", "import", T0 + 10)
    c, _ = await st.upsert("alice", ci("ann@x.test", consent="subscribed"))
    assert c.consent_status == "unsubscribed"  # only a resubscribe undoes an unsubscribe
    c, _ = await st.upsert("alice", ci("ann@x.test", consent="subscribed", resubscribe=True))
    assert (c.consent_status, c.consent_source) == ("subscribed", "api")
    # One chunk naming an address twice: applied in order, as row by row.
    got = await st.upsert_many("alice", [ci("b@x.test", '{"x":1}'), ci("c@x.test", '{"flag":true}'),
                                          ci("b@x.test", '{"y":2}', "unconfirmed")])  # fmt: skip
    assert got == Upserted(2, 1)
    b = await st.get("alice", "B@x.test")
    assert b.attrs() == {"x": 1, "y": 2} and b.consent_status == "unconfirmed"
    await st.upsert("bob", ci("ann@x.test", '{"plan":"bob"}'))
    # Typed search: "30" finds the number and the string, "1" the number 1 and true (as SQLite).
    assert names(await st.search("alice", [("age", "30")])) == ["ann"]
    assert names(await st.search("alice", [("n", "30")])) == ["ann"]
    assert names(await st.search("alice", [("x", "1")])) == ["b"]
    assert names(await st.search("alice", [("flag", "true")])) == ["c"]
    assert names(await st.search("alice", [("a.city", "Oslo")])) == ["ann"]
    assert names(await st.search("alice", status="unconfirmed")) == ["b"]
    assert names(await st.search("alice", after="ann@x.test", limit=1)) == ["b"]
    with pytest.raises(ContactError):
        await st.search("alice", [("x') OR 1=1 --", "1")])
    assert await st.attribute_names("alice") == ["a", "age", "b", "flag", "n", "name", "x", "y"]
    assert await st.count("alice") == 3 and await st.count("bob") == 1
    assert [c.address async for c in st.export("alice", page=2)] == [
        "ann@x.test", "b@x.test", "c@x.test"]  # fmt: skip
    assert await st.delete("alice", "c@x.test") and not await st.delete("alice", "c@x.test")
    assert (await st.get("bob", "ann@x.test")).attrs() == {"plan": "bob"}


async def test_lists_members_and_preferences(s: Stores) -> None:
    st = s.contacts
    news = await st.create_list("alice", "news", double_opt_in=True)
    assert news.name == "news" and news.double_opt_in
    with pytest.raises(ContactConflict):
        await st.create_list("alice", "news")
    await st.create_list("alice", "deals")
    await st.create_list("bob", "news")
    assert await st.add_members("alice", "news", ["a@x.test", "b@x.test", "a@x.test"]) == 2
    assert await st.add_members("alice", "deals", ["a@x.test"], status="subscribed") == 1
    assert await st.add_members("alice", "nope", ["a@x.test"]) is None
    a = await st.get("alice", "a@x.test")
    assert a.consent_status == "unconfirmed"
    assert [(m.list_name, m.status) for m in a.lists] == [("deals", "subscribed"),
                                                           ("news", "unconfirmed")]  # fmt: skip
    assert [(x.name, x.members) for x in await st.lists("alice")] == [("deals", 1), ("news", 2)]
    assert not await st.may_receive("alice", "a@x.test")
    assert await st.confirm_member("alice", "news", "a@x.test", "192.0.2.1")
    assert not await st.confirm_member("alice", "news", "a@x.test")
    a = await st.get("alice", "a@x.test")
    assert (a.consent_status, a.consent_source, a.consent_ip) == ("subscribed", "confirm",
                                                                  "192.0.2.1")  # fmt: skip
    assert await st.may_receive("alice", "a@x.test", "news")
    assert not await st.may_receive("alice", "b@x.test", "news")
    page = await st.members("alice", "news", limit=1)
    assert [m.contact.address for m in page] == ["a@x.test"] and page[0].status == "subscribed"
    rest = await st.members("alice", "news", after=page[0].contact.id)
    assert [(m.contact.address, m.status) for m in rest] == [("b@x.test", "unconfirmed")]
    p = await st.set_preferences("alice", "b@x.test", ["deals"], "192.0.2.2")
    assert p.consent_status == "subscribed" and p.consent_source == "preferences"
    assert [(m.list_name, m.status) for m in p.lists] == [("deals", "subscribed"),
                                                           ("news", "unsubscribed")]  # fmt: skip
    assert await st.set_preferences("alice", "zz@x.test", []) is None
    assert await st.leave_all_lists("alice", "b@x.test") == 1
    with pytest.raises(ContactConflict):
        await st.update_list("alice", "deals", new_name="news")
    moved = await st.update_list("alice", "deals", new_name="offers", double_opt_in=True)
    assert moved.name == "offers" and moved.double_opt_in and moved.members == 2
    assert await st.remove_member("alice", "offers", "a@x.test")
    assert not await st.remove_member("alice", "offers", "a@x.test")
    assert await st.delete_list("alice", "offers") and await st.get_list("alice", "offers") is None
    assert (await st.get_list("bob", "news")).members == 0


CSV = (
    b"email,name,plan,consent_status\r\n"
    b"a@x.test,Ann,pro,\r\n"
    b'b@x.test,"Bob, Jr.",free,unconfirmed\r\n'
    b"not-an-address,Nope,pro,\r\n"
    b"a@x.test,Ann2,,\r\n"
    b"d@x.test,Di,free,maybe\r\n"
)


async def test_import_stream_and_many(s: Stores) -> None:
    st = s.contacts
    await st.create_list("alice", "news")

    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(data), 7):
            yield data[i : i + 7]

    r = await st.import_stream("alice", chunks(CSV), ImportParser("csv"), list_name="news")
    assert (r.rows, r.created, r.updated, r.failed) == (5, 2, 1, 2)
    assert sorted(e.line for e in r.errors) == [4, 6]
    a = await st.get("alice", "a@x.test")
    assert a.attrs() == {"name": "Ann2", "plan": "pro"} and a.consent_source == "import"
    assert [m.list_name for m in a.lists] == ["news"]
    with pytest.raises(ContactError):
        await st.import_stream("alice", chunks(CSV), ImportParser("csv"), list_name="nope")
    rows = [ci(f"u{i:04d}@x.test", json.dumps({"i": i})) for i in range(2500)]
    assert await st.import_many("alice", rows, list_name="news") == Upserted(2500, 0)
    assert await st.import_many("alice", rows[:10]) == Upserted(0, 10)
    assert (await st.get_list("alice", "news")).members == 2502


async def _fill(s: Stores) -> None:
    for owner in ("alice", "bob"):
        await s.contacts.upsert_many(owner, [
            ci("ann@x.test", '{"name":"Ann","plan":"pro","age":"34","tags":["vip","eu"],'
               '"last_order":"2027-01-01T10:00:00Z","vip":true}'),
            ci("ben@x.test", '{"name":"Ben","plan":"free","age":19,'
               '"last_order":"2026-06-01"}', "unconfirmed"),
            ci("cat@y.test", '{"name":"x\' OR \'1\'=\'1","plan":"pro","age":61.5,'
               '"address":{"city":"Oslo"},"vip":false,"when":"2027-01-10 08:00+02:00"}'),
            ci("dan@y.test", '{"name":"Dan","when":"2027-02-31"}', "unsubscribed"),
        ])  # fmt: skip


LANGUAGE = [
    ({"and": []}, "ann ben cat dan"),
    ({"attr": "plan", "eq": "pro"}, "ann cat"),
    ({"attr": "plan", "ne": "pro"}, "ben"),
    ({"not": {"attr": "plan", "eq": "pro"}}, "ben dan"),
    ({"attr": "age", "gt": 30}, "ann cat"),
    ({"attr": "age", "lte": 19}, "ben"),
    ({"attr": "age", "in": [19, 34]}, "ann ben"),
    ({"attr": "age", "in": ["34", "nope"]}, "ann"),
    ({"attr": "age", "eq": "61.5"}, "cat"),
    ({"attr": "name", "gte": "B"}, "ben cat dan"),
    ({"attr": "name", "lt": "a"}, "ann ben dan"),  # byte order: upper case first
    ({"attr": "name", "starts_with": "D"}, "dan"),
    ({"attr": "name", "ends_with": "en"}, "ben"),
    ({"attr": "name", "contains": "OR"}, "cat"),
    ({"attr": "tags", "contains": "vip"}, "ann"),
    ({"attr": "tags", "contains": "vi"}, ""),
    ({"attr": "address.city", "eq": "Oslo"}, "cat"),
    ({"attr": "address", "exists": True}, "cat"),
    ({"attr": "plan", "exists": False}, "dan"),
    ({"attr": "vip", "eq": True}, "ann"),
    ({"attr": "vip", "ne": True}, "cat"),
    ({"attr": "last_order", "gt": {"days_ago": 30}}, "ann"),
    ({"attr": "last_order", "lt": {"date": "2026-12-31"}}, "ben"),
    ({"attr": "last_order", "gte": {"days_from_now": 0}}, ""),
    ({"attr": "when", "lt": {"date": "2027-01-10T06:00:01Z"}}, "cat"),  # +02:00 is 06:00 UTC
    ({"attr": "when", "gt": {"date": "2027-03-03"}}, ""),  # Feb 31 rolls to Mar 3, as SQLite
    ({"attr": "when", "gte": {"date": "2027-03-03"}}, "dan"),
    ({"field": "email", "ends_with": "@Y.TEST"}, "cat dan"),
    ({"field": "email", "in": ["ann@x.test", "x' OR 1=1 --"]}, "ann"),
    ({"field": "email", "gt": "b"}, "ben cat dan"),
    ({"field": "email", "contains": "@y"}, "cat dan"),
    ({"field": "created_at", "gte": {"days_ago": 1}}, "ann ben cat dan"),
    ({"field": "created_at", "lt": "2020-01-01"}, ""),
    ({"consent": "subscribed"}, "ann cat"),
    ({"consent": ["unconfirmed", "unsubscribed"]}, "ben dan"),
    ({"or": [{"attr": "plan", "eq": "free"}, {"consent": "unsubscribed"}]}, "ben dan"),
    ({"not": {"or": [{"attr": "age", "gt": 30}, {"attr": "age", "lt": 30}]}}, "dan"),
    ({"attr": "name", "eq": "x' OR '1'='1"}, "cat"),
    ({"attr": "plan", "in": ["x' OR 1=1 --", "'", 1.5, -3]}, ""),
]


async def who(s: Stores, obj: Any, owner: str = "alice") -> str:
    flt = parse(obj)
    got = [a for _, a in await s.segments.page(owner, flt, None)]
    assert await s.segments.count(owner, flt) == len(got)
    return " ".join(a.split("@")[0] for a in got)


async def test_segment_language(s: Stores) -> None:
    await _fill(s)
    wrong = [(obj, want, got) for obj, want in LANGUAGE if (got := await who(s, obj)) != want]
    assert not wrong, wrong


async def test_segments_lists_engagement_and_saved(s: Stores) -> None:
    await _fill(s)
    st, seg = s.contacts, s.segments
    await st.create_list("bob", "vip")
    await st.add_members("bob", "vip", ["ann@x.test", "ben@x.test"])
    with pytest.raises(SegmentError) as e:
        await seg.save("alice", "v", {"and": [{"consent": "subscribed"}, {"in_list": "vip"}]})
    assert e.value.field == "filter.and[1].in_list"
    assert (
        await who(s, {"in_list": "vip"}) == ""
        and await who(s, {"in_list": "vip"}, "bob") == "ann ben"
    )
    await st.create_list("alice", "vip", double_opt_in=True)
    await st.add_members("alice", "vip", ["dan@y.test"])
    await st.add_members("alice", "vip", ["cat@y.test"], status="subscribed")
    assert await who(s, {"in_list": "vip", "status": "unconfirmed"}) == "dan"
    # Engagement from the owner's own messages' events (bob's are bob's).
    now = s.clock.now()
    qids = {}
    for owner in ("alice", "bob"):
        qids[owner] = new_queue_id(now)
        await s.queue.enqueue(PreparedMessage(
            queue_id=qids[owner], sender=f"news@{owner}.example",
            recipients=tuple(PreparedRecipient(r) for r in ("ann@x.test", "ben@x.test", "cat@y.test")),
            data=b"Subject: hi\r\n\r\nhello\r\n", user=owner, client_ip="127.0.0.1",
            received_at=now - 40 * DAY, message_id=f"{qids[owner]}@mta.test",
        ))  # fmt: skip
    qa, qb = qids["alice"], qids["bob"]
    await s.events.emit(
        Event("open", now - 2 * DAY, qa, "ANN@X.TEST"),
        Event("open", now - 35 * DAY, qa, "ben@x.test"),
        Event("open", now - DAY, qa, "cat@y.test", (("machine", True),)),
        Event("click", now - DAY, qa, "ann@x.test", (("url", "https://e.example/a"),)),
        Event("open", now - DAY, qb, "dan@y.test"),
        Event("bounced", now - 3 * DAY, qa, "cat@y.test", (("kind", "hard"),)),
        Event("bounced", now - 50 * DAY, qa, "ben@x.test", (("kind", "soft"),)),
        Event("bounced", now - DAY, qb, "ann@x.test", (("kind", "hard"),)),
    )
    assert await who(s, {"opened": True}) == "ann ben cat"
    assert await who(s, {"opened": {"days": 30}}) == "ann cat"
    assert await who(s, {"opened": {"days": 30, "human": True}}) == "ann"
    assert await who(s, {"opened": False}) == "dan"
    assert await who(s, {"clicked": {"days": 7}}) == "ann"
    assert await who(s, {"bounced": True}) == "cat"
    assert await who(s, {"bounced": {"kind": "soft"}}) == "ben"
    assert await who(s, {"bounced": {"kind": "any", "days": 10}}) == "cat"
    assert await who(s, {"and": [{"opened": True}, {"not": {"bounced": True}}]}) == "ann ben"
    assert await who(s, {"opened": True}, "bob") == "dan"
    # The contact's timeline: the owner's message and its events, oldest first.
    line = await s.activity.timeline("alice", "ann@x.test")
    assert [a.as_json()["type"] for a in line] == ["queued", "clicked"]  # opens were ANN@X.TEST
    assert [a.type for a in await s.activity.timeline("alice", "cat@y.test")] == [
        "queued", "bounced", "open"]  # fmt: skip
    # Saved segments: create, replace, list, resolve, page by keyset, delete.
    made, created = await seg.save("alice", "pros", {"attr": "plan", "eq": "pro"}, create=True)
    assert created and made.name == "pros"
    with pytest.raises(ContactConflict):
        await seg.save("alice", "pros", {"and": []}, create=True)
    s.clock.advance(5)
    again, created = await seg.save("alice", "pros", {"consent": "subscribed"})
    assert not created and again.id == made.id and again.updated_at == T0 + 5
    assert [x.name for x in await seg.list_all("alice")] == ["pros"] and await seg.list_all(
        "bob"
    ) == []
    flt = await seg.resolve("alice", "pros")
    first = await seg.page("alice", flt, None, limit=1)
    assert [a for _, a in first] == ["ann@x.test"]
    assert [a for _, a in await seg.page("alice", flt, first[-1][1])] == ["cat@y.test"]
    assert await seg.resolve("alice", '{"and":[]}') == parse({"and": []})
    with pytest.raises(SegmentNotFound):
        await seg.resolve("bob", "pros")
    assert await seg.delete("alice", "pros") and await seg.get("alice", "pros") is None


async def test_migrate_copies_contacts_lists_and_segments(tmp_path: Path, pg_dsn: str) -> None:  # noqa: F811
    """``storage migrate --to postgresql``: the SQLite node's contacts, lists, memberships
    and segments arrive verified (jsonb attributes hashed by value), and answer the same."""
    clock = FakeClock(T0)
    db = Database(tmp_path / "mta.db")
    await db.open()
    for name in ("alice", "bob"):
        await UserStore(db, clock).add(name, "x", [f"{name}.example"])
    lite = Stores("sqlite", clock, ContactStore(db, clock), SegmentStore(db, clock),
                  ActivityStore(db), Spool(db, clock=clock), EventLog(db))  # fmt: skip
    await _fill(lite)
    await lite.contacts.upsert("alice", ci("e@x.test", '{"n":1e3,"f":1.0,"s":"x\\u00e9"}'))
    await lite.contacts.create_list("alice", "vip", double_opt_in=True)
    await lite.contacts.add_members("alice", "vip", ["ann@x.test", "cat@y.test"])
    await lite.segments.save("alice", "pros", {"attr": "plan", "eq": "pro"})
    before = [(obj, await who(lite, obj)) for obj, _ in LANGUAGE[:12]]
    await db.close()
    pg = PgDatabase(PostgresConfig(dsn=pg_dsn, tls="disable", pool_size=2))
    await pg.open()
    try:
        from mtaserver.storage.postgres.copy import copy_sqlite

        done = {t.table: t.rows for t in await copy_sqlite(tmp_path / "mta.db", pg)}
        assert (done["contacts"], done["lists"], done["list_members"], done["segments"]) == (
            9, 1, 2, 1)  # fmt: skip
        pgs = Stores("postgresql", clock, PgContactStore(pg, clock), PgSegmentStore(pg, clock),
                     PgActivityStore(pg), PgQueue(pg, "n", clock=clock), PgEventLog(pg))  # fmt: skip
        assert [(obj, await who(pgs, obj)) for obj, _ in LANGUAGE[:12]] == before
        assert await who(pgs, {"in_list": "vip"}) == "ann cat"
        assert (await pgs.segments.get("alice", "pros")).filter == '{"attr":"plan","eq":"pro"}'
        e = await pgs.contacts.get("alice", "e@x.test")
        assert e.attrs() == {"n": 1000, "f": 1.0, "s": "xé"}
        # New rows take ids after the copied ones.
        made = await pgs.contacts.create_list("alice", "new")
        assert made.id == 2
    finally:
        await pg.close()


async def test_a_postgresql_node_serves_contacts_lists_and_segments(
    tmp_path: Path,
    pg_server: PgServer,  # noqa: F811
    pg_dsn: str,  # noqa: F811
) -> None:
    """The /v1 routes over HTTP on a node whose storage is PostgreSQL, and the CLI's
    contacts import and segments count against the same cluster database."""
    db = PgDatabase(PostgresConfig(dsn=pg_dsn, tls="disable", pool_size=2))
    await db.open()
    await PgUserStore(db).add("app", "scrypt$unused", ["sender.test"])
    (tmp_path / "pgpass").write_text(pg_server.password + "\n")
    cfg = TestConfig(tmp_path, tls=False)
    cfg.set("storage", backend="postgresql", dsn=pg_dsn.replace(f":{pg_server.password}@", "@"),
            password_file=str(tmp_path / "pgpass"), tls="disable", pool_size=4)  # fmt: skip
    cfg.set("api", listen=f"127.0.0.1:{free_port()}")
    daemon = Daemon(cfg)
    await asyncio.to_thread(daemon.start)
    try:
        (tmp_path / "in.csv").write_bytes(CSV)
        out = await asyncio.to_thread(daemon.cli, "contacts", "import", "--user", "app",
                                      "--list", "news", str(tmp_path / "in.csv"))  # fmt: skip
        assert out.returncode == 1 and "5 rows: 2 created, 1 updated, 2 refused" in out.stdout
        assert "line 4:" in out.stderr
        key = (await asyncio.to_thread(daemon.cli, "apikey", "create", "--user", "app",
                                       "--scopes", "contacts.read,contacts.write")).stdout.strip()  # fmt: skip
        host, port = cfg.address("api", "listen")
        base = f"http://{host}:{port}"
        h = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(headers=h) as http:

            async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
                async with http.request(method, base + path, json=body) as r:
                    return r.status, (None if r.status == 204 else await r.json())

            st, c = await call("PUT", "/v1/contacts", {"email": "Eve@X.test",
                                                       "attributes": {"plan": "pro", "age": 41}})  # fmt: skip
            assert st == 201 and c["email"] == "eve@x.test" and c["attributes"]["age"] == 41
            st, c = await call("PUT", "/v1/contacts", {"contacts": [
                {"email": "eve@x.test", "attributes": {"age": None}}, {"email": "fay@x.test"}]})  # fmt: skip
            assert (st, c) == (200, {"created": 1, "updated": 1})
            st, c = await call("GET", "/v1/contacts/eve@x.test")
            assert st == 200 and c["attributes"] == {"plan": "pro"}
            st, found = await call("GET", "/v1/contacts?attr.plan=pro")
            assert st == 200 and [x["email"] for x in found["contacts"]] == [
                "a@x.test",
                "eve@x.test",
            ]
            st, lst = await call("POST", "/v1/lists", {"name": "vip", "double_opt_in": False})
            assert st == 201 and lst["name"] == "vip"
            assert (await call("POST", "/v1/lists", {"name": "vip"}))[0] == 409
            st, added = await call("POST", "/v1/lists/vip/members", {"emails": ["eve@x.test",
                                                                             "new@x.test"]})  # fmt: skip
            assert (st, added) == (200, {"added": 2})
            st, lists = await call("GET", "/v1/lists")
            assert [(x["name"], x["members"]) for x in lists["lists"]] == [("news", 2), ("vip", 2)]
            st, members = await call("GET", "/v1/lists/vip/members")
            assert [m["email"] for m in members["members"]] == ["eve@x.test", "new@x.test"]
            flt = {"and": [{"in_list": "vip"}, {"attr": "plan", "eq": "pro"}]}
            st, seg = await call("POST", "/v1/segments", {"name": "vip-pros", "filter": flt})
            assert st == 201 and seg["filter"] == flt
            st, bad = await call("POST", "/v1/segments/count", {"filter": {"in_list": "nope"}})
            assert st == 400 and "no list 'nope'" in json.dumps(bad)
            assert await call("POST", "/v1/segments/count", {"segment": "vip-pros"}) == (
                200, {"count": 1})  # fmt: skip
            st, page = await call("GET", "/v1/segments/vip-pros/contacts")
            assert st == 200 and [x["email"] for x in page["contacts"]] == ["eve@x.test"]
            st, names = await call("GET", "/v1/segments")
            assert [x["name"] for x in names["segments"]] == ["vip-pros"]
            st, act = await call("GET", "/v1/contacts/eve@x.test/activity")
            assert (st, act["activity"]) == (200, [])
            assert (await call("DELETE", "/v1/contacts/fay@x.test"))[0] == 204
            assert (await call("GET", "/v1/contacts/fay@x.test"))[0] == 404
        out = await asyncio.to_thread(daemon.cli, "segments", "count", "--user", "app",
                                      "--filter", '{"in_list": "news"}')  # fmt: skip
        assert out.returncode == 0 and out.stdout.strip() == "2", out.stderr
        out = await asyncio.to_thread(daemon.cli, "contacts", "show", "--user", "app", "a@x.test")
        assert out.returncode == 0 and json.loads(out.stdout)["attributes"]["name"] == "Ann2"
    finally:
        code = await asyncio.to_thread(daemon.stop)
        await db.close()
    assert code == 0, daemon.log()[-3000:]
