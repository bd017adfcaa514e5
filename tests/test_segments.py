"""Segments: the filter language parsed (errors name the JSON path of the bad node) and
compiled to SQL by the real store on a real database — comparisons on attributes and
fields, date arithmetic, consent, lists, engagement from real open/click/bounce rows written
by the queue, tracking and event owners; injection through names, operators and values is
refused or matches exactly what it says; another tenant's list and engagement are never
reached; keyset paging returns every match once while contacts are inserted between pages."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from mtaserver.auth import hash_password
from mtaserver.contacts import ContactConflict, ContactInput
from mtaserver.model import Event, PreparedMessage, PreparedRecipient
from mtaserver.segments import (
    MAX_DEPTH,
    MAX_NODES,
    And,
    AttrCmp,
    DaysAgo,
    Engaged,
    InList,
    Not,
    SegmentError,
    SegmentNotFound,
    parse,
    parse_text,
)
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.segments import SegmentStore, select_sql, where_sql
from mtaserver.storage.sqlite.tracking import SqlTrackingStore
from mtaserver.storage.sqlite.users import UserStore
from tests.support.clock import FakeClock

HASH = hash_password("correct horse battery", n=2**10)
DAY = 86400.0
EVIL = ["x') OR 1=1 --", "x' OR '1'='1", '"; DROP TABLE contacts; --', "a\x00b", "%", "_"]


# -- the language (pure) --------------------------------------------------------------------
def field_of(obj: Any) -> str | None:
    with pytest.raises(SegmentError) as e:
        parse(obj)
    return e.value.field


def test_parse_builds_nodes() -> None:
    f = parse({"and": [{"attr": "plan", "eq": "pro"}, {"opened": False},
                       {"attr": "last_order", "gt": {"days_ago": 30}},
                       {"in_list": "news", "status": ["subscribed"]}]})  # fmt: skip
    assert f == And((
        AttrCmp("plan", "eq", "pro"),
        Not(Engaged("open")),
        AttrCmp("last_order", "gt", DaysAgo(30.0)),
        InList("news", ("subscribed",)),
    ))  # fmt: skip
    assert parse({"and": []}) == And(())
    assert parse_text('{"clicked": {"days": 7, "human": true}}') == Engaged("click", 7, True)


@pytest.mark.parametrize(
    ("obj", "where"),
    [
        ({"and": [{"consent": "subscribed"}, {}, {"attr": "x') OR 1=1 --", "eq": 1}]},
         "filter.and[1]"),
        ({"and": [{"consent": "subscribed"}, {"consent": "subscribed"},
                  {"attr": "x') OR 1=1 --", "eq": 1}]}, "filter.and[2].attr"),
        ({"attr": 'a"."b', "eq": 1}, "filter.attr"),
        ({"attr": "$.plan", "eq": 1}, "filter.attr"),
        ({"attr": 5, "eq": 1}, "filter.attr"),
        ({"attr": "plan", "= 1 OR 1=1 --": "x"}, "filter.= 1 OR 1=1 --"),
        ({"attr": "plan", "eq": 1, "ne": 2}, "filter"),
        ({"attr": "plan", "eq": None}, "filter.eq"),
        ({"attr": "plan", "eq": {"x": 1}}, "filter.eq"),
        ({"attr": "plan", "eq": [1]}, "filter.eq"),
        ({"attr": "plan", "in": [1, None]}, "filter.in[1]"),
        ({"attr": "plan", "in": ["a", ["b"]]}, "filter.in[1]"),
        ({"attr": "plan", "in": ["a", {"$gt": ""}]}, "filter.in[1]"),
        ({"attr": "plan", "in": [True]}, "filter.in[0]"),
        ({"attr": "plan", "in": []}, "filter.in"),
        ({"attr": "plan", "in": "abc"}, "filter.in"),
        ({"attr": "n", "eq": 2**64}, "filter.eq"),
        ({"attr": "n", "gt": True}, "filter.gt"),
        ({"attr": "n", "contains": ""}, "filter.contains"),
        ({"attr": "n", "exists": "yes"}, "filter.exists"),
        ({"attr": "d", "eq": {"days_ago": 3}}, "filter.eq"),
        ({"attr": "d", "gt": {"days_ago": -3}}, "filter.gt.days_ago"),
        ({"attr": "d", "gt": {"date": "yesterday"}}, "filter.gt.date"),
        ({"attr": "d", "gt": {"weeks_ago": 1}}, "filter.gt"),
        ({"field": "password", "eq": "x"}, "filter.field"),
        ({"field": "created_at", "eq": "2026-01-01"}, "filter.eq"),
        ({"field": "email", "eq": 5}, "filter.eq"),
        ({"consent": "maybe"}, "filter.consent"),
        ({"consent": ["subscribed", "x"]}, "filter.consent[1]"),
        ({"in_list": "x' OR 1=1 --"}, "filter.in_list"),
        ({"in_list": "news", "status": "gone"}, "filter.status"),
        ({"in_list": "news", "owner": "bob"}, "filter.owner"),
        ({"opened": {"days": 0}}, "filter.opened.days"),
        ({"opened": {"days": "30"}}, "filter.opened.days"),
        ({"opened": {"since": 3}}, "filter.opened.since"),
        ({"bounced": {"kind": "mild"}}, "filter.bounced.kind"),
        ({"or": []}, "filter.or"),
        ({"not": [{"consent": "subscribed"}]}, "filter.not"),
        ({"attr": "plan", "eq": "x", "or": []}, "filter"),
        ([], "filter"),
    ],
)  # fmt: skip
def test_errors_name_the_bad_node(obj: Any, where: str) -> None:
    assert field_of(obj) == where


def test_limits() -> None:
    deep: Any = {"consent": "subscribed"}
    for _ in range(MAX_DEPTH + 1):
        deep = {"not": deep}
    assert (field_of(deep) or "").startswith("filter.not.not")
    wide = {"or": [{"consent": "subscribed"}] * MAX_NODES}
    assert field_of(wide) == f"filter.or[{MAX_NODES - 1}]"
    many = {"or": [{"opened": True}] * 11}
    assert field_of(many) == "filter.or[10]"
    for text in ('{"attr":"n","eq":NaN}', '{"attr":"n","eq":Infinity}', "{", "[" * 100_000):
        with pytest.raises(SegmentError) as e:
            parse_text(text)
        assert e.value.field == "filter"
    with pytest.raises(SegmentError):
        parse_text(b"{" + b" " * 70_000 + b"}")


# -- compiled, on a real database -----------------------------------------------------------
@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
async def stores(db: Database, clock: FakeClock) -> tuple[ContactStore, SegmentStore]:
    users = UserStore(db)
    await users.add("alice", HASH, ["example.com"])
    await users.add("bob", HASH, ["example.net"])
    contacts = ContactStore(db, clock)
    for owner in ("alice", "bob"):
        await contacts.upsert_many(owner, [
            ContactInput("ann@x.test", '{"name":"Ann","plan":"pro","age":"34","tags":["vip","eu"],'
                         '"last_order":"2027-01-01T10:00:00Z","vip":true}'),
            ContactInput("ben@x.test", '{"name":"Ben","plan":"free","age":19,'
                         '"last_order":"2026-06-01"}', "unconfirmed"),
            ContactInput("cat@y.test", '{"name":"x\' OR \'1\'=\'1","plan":"pro","age":61.5,'
                         '"address":{"city":"Oslo"},"vip":false}'),
            ContactInput("dan@y.test", '{"name":"Dan"}', "unsubscribed"),
        ])  # fmt: skip
    return contacts, SegmentStore(db, clock)


async def matches(seg: SegmentStore, obj: Any, owner: str = "alice") -> list[str]:
    flt = parse(obj)
    got = [a for _, a in await seg.page(owner, flt, None)]
    assert await seg.count(owner, flt) == len(got)
    return got


@pytest.mark.parametrize(
    ("obj", "want"),
    [
        ({"and": []}, "ann ben cat dan"),
        ({"attr": "plan", "eq": "pro"}, "ann cat"),
        ({"attr": "plan", "ne": "pro"}, "ben"),  # dan has no plan: a comparison needs one
        ({"not": {"attr": "plan", "eq": "pro"}}, "ben dan"),
        ({"attr": "age", "gt": 30}, "ann cat"),  # "34" from a CSV compares as a number
        ({"attr": "age", "lte": 19}, "ben"),
        ({"attr": "age", "in": [19, 34]}, "ann ben"),
        ({"attr": "age", "in": ["34", "nope"]}, "ann"),
        ({"attr": "name", "gte": "B"}, "ben cat dan"),
        ({"attr": "name", "starts_with": "D"}, "dan"),
        ({"attr": "name", "ends_with": "en"}, "ben"),
        ({"attr": "name", "contains": "OR"}, "cat"),
        ({"attr": "tags", "contains": "vip"}, "ann"),
        ({"attr": "tags", "contains": "vi"}, ""),  # an array holds elements, not substrings
        ({"attr": "address.city", "eq": "Oslo"}, "cat"),
        ({"attr": "address", "exists": True}, "cat"),
        ({"attr": "plan", "exists": False}, "dan"),
        ({"attr": "vip", "eq": True}, "ann"),
        ({"attr": "vip", "ne": True}, "cat"),
        ({"attr": "last_order", "gt": {"days_ago": 30}}, "ann"),  # now is 2027-01-15
        ({"attr": "last_order", "lt": {"date": "2026-12-31"}}, "ben"),
        ({"attr": "last_order", "gte": {"days_from_now": 0}}, ""),
        ({"field": "email", "ends_with": "@Y.TEST"}, "cat dan"),
        ({"field": "email", "in": ["ann@x.test", "x' OR 1=1 --"]}, "ann"),
        ({"field": "created_at", "gte": {"days_ago": 1}}, "ann ben cat dan"),
        ({"field": "created_at", "lt": "2020-01-01"}, ""),
        ({"consent": "subscribed"}, "ann cat"),
        ({"consent": ["unconfirmed", "unsubscribed"]}, "ben dan"),
        ({"or": [{"attr": "plan", "eq": "free"}, {"consent": "unsubscribed"}]}, "ben dan"),
        ({"not": {"or": [{"attr": "age", "gt": 30}, {"attr": "age", "lt": 30}]}}, "dan"),
    ],
)  # fmt: skip
async def test_language_end_to_end(
    stores: tuple[ContactStore, SegmentStore], obj: Any, want: str
) -> None:
    _, seg = stores
    got = await matches(seg, obj)
    assert [a.split("@")[0] for a in got] == want.split()


async def test_injection_through_values_matches_only_the_literal(
    stores: tuple[ContactStore, SegmentStore],
) -> None:
    _, seg = stores
    # cat's name IS the classic injection string: it matches exactly that contact, no other.
    assert await matches(seg, {"attr": "name", "eq": "x' OR '1'='1"}) == ["cat@y.test"]
    for evil in EVIL:
        for op in ("eq", "contains", "starts_with", "gt"):
            flt = parse({"attr": "name", op: evil})
            sql, params = select_sql("alice", flt, now=0)
            assert (len(evil) < 3 or evil not in sql) and evil in params
        assert await matches(seg, {"attr": "plan", "eq": evil}) == []
        assert await matches(seg, {"attr": "plan", "in": [evil, "'", '"', 1.5, -3]}) == []
        assert await matches(seg, {"field": "email", "eq": evil}) == []
    # The tables are all still there and whole.
    assert await seg.count("alice", parse({"and": []})) == 4


async def test_sql_carries_no_names_and_uses_the_index(
    db: Database, stores: tuple[ContactStore, SegmentStore]
) -> None:
    flt = parse({"and": [{"attr": "address.city", "eq": "Oslo"}, {"in_list": "news"},
                         {"opened": {"days": 3}}, {"bounced": True}]})  # fmt: skip
    where, params = where_sql("alice", flt, 0)
    assert "city" not in where and "news" not in where and "alice" not in where
    assert '$."address"."city"' in params and "news" in params and params[0] == "alice"
    sql = f"SELECT c.id FROM contacts c WHERE {where} AND c.address > ? ORDER BY c.address LIMIT 9"

    def plan(conn: sqlite3.Connection) -> list[str]:
        return [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (*params, ""))]

    steps = await db.read(plan)
    assert "(owner=? AND address>?)" in steps[0], steps  # keyset walk, no sort
    assert not any("TEMP B-TREE" in s for s in steps), steps


async def test_lists_are_the_owners_own(
    db: Database, stores: tuple[ContactStore, SegmentStore]
) -> None:
    contacts, seg = stores
    await contacts.create_list("bob", "vip")
    await contacts.add_members("bob", "vip", ["ann@x.test", "ben@x.test", "cat@y.test"])
    flt = parse({"in_list": "vip"})
    # Bob's list name in alice's filter: refused where it is checked, empty where it runs.
    with pytest.raises(SegmentError) as e:
        await seg.save("alice", "v", {"and": [{"consent": "subscribed"}, {"in_list": "vip"}]})
    assert e.value.field == "filter.and[1].in_list"
    with pytest.raises(SegmentError):
        await seg.check("alice", flt)
    assert await seg.count("alice", flt) == 0 and await seg.page("alice", flt, None) == []
    sql, params = select_sql("alice", flt)
    assert await db.read(lambda conn: conn.execute(sql, params).fetchall()) == []
    assert [a for _, a in await seg.page("bob", flt, None)] == [
        "ann@x.test", "ben@x.test", "cat@y.test"]  # fmt: skip
    # Alice's own list of the same name: her members only, with the status asked for.
    await contacts.create_list("alice", "vip", double_opt_in=True)
    await contacts.add_members("alice", "vip", ["dan@y.test"])
    await contacts.add_members("alice", "vip", ["ann@x.test"], status="subscribed")
    assert await matches(seg, {"in_list": "vip"}) == ["ann@x.test", "dan@y.test"]
    assert await matches(seg, {"in_list": "vip", "status": "unconfirmed"}) == ["dan@y.test"]
    ids = {cid for cid, _ in await seg.page("alice", flt, None)}
    bob_ids = {cid for cid, _ in await seg.page("bob", flt, None)}
    assert not ids & bob_ids


async def _send(db: Database, owner: str, rcpts: list[str], at: float) -> str:
    qid = new_queue_id(at)
    await Spool(db).enqueue(PreparedMessage(
        queue_id=qid, sender=f"news@{'example.com' if owner == 'alice' else 'example.net'}",
        recipients=tuple(PreparedRecipient(r) for r in rcpts),
        data=b"From: news@example.com\r\nSubject: hi\r\n\r\nhello\r\n", user=owner,
        client_ip="127.0.0.1", received_at=at, message_id=f"{qid}@mta.test", campaign="c",
    ))  # fmt: skip
    return qid


async def test_engagement_from_real_rows_of_the_owner(
    db: Database, stores: tuple[ContactStore, SegmentStore], clock: FakeClock
) -> None:
    _, seg = stores
    now = clock.now()
    # Alice mailed ann (as ANN@X.TEST), ben and cat; bob mailed the same addresses.
    qa = await _send(db, "alice", ["ANN@X.TEST", "ben@x.test", "cat@y.test"], now - 40 * DAY)
    qb = await _send(db, "bob", ["ann@x.test", "ben@x.test", "cat@y.test", "dan@y.test"],
                     now - 40 * DAY)  # fmt: skip
    hits = SqlTrackingStore(db)
    await hits.write_rows([
        (now - 2 * DAY, "open", qa, 0, "Mozilla/5.0", "127.0.0.1", False, None, None, None),
        (now - 35 * DAY, "open", qa, 1, "Mozilla/5.0", "127.0.0.1", False, None, None, None),
        (now - 1 * DAY, "open", qa, 2, "GoogleImageProxy", "127.0.0.2", True, "proxy",
         "google", None),
        (now - 1 * DAY, "click", qa, 0, "Mozilla/5.0", "127.0.0.1", False, None, None,
         "https://example.com/a"),
        # bob's opens and clicks of the same people are bob's, never alice's
        (now - 1 * DAY, "open", qb, 1, "Mozilla/5.0", "127.0.0.1", False, None, None, None),
        (now - 1 * DAY, "click", qb, 2, "Mozilla/5.0", "127.0.0.1", False, None, None,
         "https://example.net/b"),
        (now - 1 * DAY, "open", qb, 3, "Mozilla/5.0", "127.0.0.1", False, None, None, None),
    ])  # fmt: skip
    await EventLog(db).emit(
        Event("bounced", now - 3 * DAY, qa, "cat@y.test", (("kind", "hard"), ("source", "sync"))),
        Event("bounced", now - 50 * DAY, qa, "ben@x.test", (("kind", "soft"),)),
        Event("bounced", now - 1 * DAY, qb, "ann@x.test", (("kind", "hard"),)),
    )

    async def who(obj: Any, owner: str = "alice") -> str:
        return " ".join(a.split("@")[0] for a in await matches(seg, obj, owner))

    assert await who({"opened": True}) == "ann ben cat"
    assert await who({"opened": {"days": 30}}) == "ann cat"
    assert await who({"opened": {"days": 30, "human": True}}) == "ann"
    assert await who({"opened": False}) == "dan"  # never opened: includes never mailed
    assert await who({"not": {"opened": {"days": 30}}}) == "ben dan"
    assert await who({"clicked": {"days": 7}}) == "ann"
    assert await who({"clicked": False}) == "ben cat dan"
    assert await who({"bounced": True}) == "cat"  # hard, ever
    assert await who({"bounced": {"kind": "soft"}}) == "ben"
    assert await who({"bounced": {"kind": "any", "days": 10}}) == "cat"
    assert await who({"bounced": False}) == "ann ben dan"
    assert await who({"and": [{"opened": True}, {"not": {"bounced": True}}]}) == "ann ben"
    # The same questions for bob see only bob's mail.
    assert await who({"opened": True}, "bob") == "ben dan"
    assert await who({"clicked": True}, "bob") == "cat"
    assert await who({"bounced": True}, "bob") == "ann"
    clock.advance(3 * DAY)  # the window moves with the clock a saved segment runs at
    assert await who({"opened": {"days": 4}}) == "cat"


async def test_paging_returns_every_match_once_across_inserts(
    stores: tuple[ContactStore, SegmentStore],
) -> None:
    contacts, seg = stores
    n = 2500
    await contacts.import_many("alice", [
        ContactInput(f"p{i:05d}@page.test", f'{{"plan":"{"pro" if i % 2 else "free"}"}}')
        for i in range(n)
    ])  # fmt: skip
    flt = parse(
        {"and": [{"attr": "plan", "eq": "pro"}, {"field": "email", "ends_with": "@page.test"}]}
    )
    before = {f"p{i:05d}@page.test" for i in range(1, n, 2)}
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        rows = await seg.page("alice", flt, after, limit=300)
        if not rows:
            break
        pages += 1
        seen += [a for _, a in rows]
        after = rows[-1][1]
        if len(rows) < 300:
            break
        # Between pages: a match behind the cursor, one ahead of it, one that stops matching.
        k = pages
        await contacts.upsert_many("alice", [
            ContactInput(f"p00000-{k}@page.test", '{"plan":"pro"}'),  # behind: not seen
            ContactInput(f"p99999-{k}@page.test", '{"plan":"pro"}'),  # ahead: seen once
        ])  # fmt: skip
    assert len(seen) == len(set(seen)), "an address came twice"
    assert before <= set(seen)
    assert {a for a in seen if a.startswith("p99999-")} == {
        f"p99999-{k}@page.test" for k in range(1, pages)}  # fmt: skip
    assert not any(a.startswith("p00000-") for a in seen)
    assert seen == sorted(seen) and pages == 5


async def test_select_sql_inside_a_transaction(
    db: Database, stores: tuple[ContactStore, SegmentStore]
) -> None:
    _, seg = stores
    flt = parse({"attr": "plan", "eq": "pro"})
    sql, params = select_sql("alice", flt)

    def snapshot(conn: sqlite3.Connection) -> list[tuple[int, str]]:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS audience (contact_id INTEGER, address TEXT)")
        conn.execute(f"INSERT INTO audience {sql}", params)
        rows = conn.execute("SELECT contact_id, address FROM audience").fetchall()
        conn.execute("DROP TABLE audience")
        return rows

    assert await db.write(snapshot) == await seg.page("alice", flt, None)


async def test_saved_segments(stores: tuple[ContactStore, SegmentStore], clock: FakeClock) -> None:
    contacts, seg = stores
    await contacts.create_list("alice", "news")
    doc = {"and": [{"in_list": "news"}, {"attr": "plan", "eq": "pro"}]}
    made, created = await seg.save("alice", "pro-news", doc, create=True)
    assert created and made.as_json()["filter"] == doc
    with pytest.raises(ContactConflict):
        await seg.save("alice", "pro-news", doc, create=True)
    clock.advance(10)
    again, created = await seg.save("alice", "pro-news", {"consent": "subscribed"})
    assert not created and again.updated_at == made.updated_at + 10
    assert again.created_at == made.created_at
    assert [s.name for s in await seg.list_all("alice")] == ["pro-news"]
    assert await seg.list_all("bob") == [] and await seg.get("bob", "pro-news") is None
    assert await seg.resolve("alice", "pro-news") == parse({"consent": "subscribed"})
    assert await seg.resolve("alice", ' {"consent": "unsubscribed"}') == parse(
        {"consent": "unsubscribed"})  # fmt: skip
    with pytest.raises(SegmentNotFound):
        await seg.resolve("bob", "pro-news")
    with pytest.raises(SegmentError) as e:
        await seg.resolve("alice", "x' OR 1=1")
    assert e.value.field == "segment"
    with pytest.raises(SegmentError) as e:
        await seg.save("alice", "bad", {"attr": "x') OR 1=1 --", "eq": 1})
    assert e.value.field == "filter.attr" and await seg.get("alice", "bad") is None
    assert not await seg.delete("bob", "pro-news")
    assert await seg.delete("alice", "pro-news") and await seg.get("alice", "pro-news") is None
