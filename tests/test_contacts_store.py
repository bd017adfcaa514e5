"""ContactStore on a real database: upsert merges attributes and keeps consent unless told,
an unsubscribe survives re-imports, search binds attribute paths (injection attempts are
refused by name), imports stream in chunks with per-line errors, exports page by keyset,
lists and memberships, owners never see each other's contacts, and the suppression hook
unsubscribes inside the caller's transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator

import pytest

from mtaserver.auth import hash_password
from mtaserver.contacts import (
    ContactError,
    ContactInput,
    ImportParser,
    LineError,
    RecordSplitter,
    attr_path,
    contact_input,
    normalize_address,
)
from mtaserver.storage.sqlite.contacts import ContactStore, unsubscribe_in
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.users import UserStore

HASH = hash_password("correct horse battery", n=2**10)


@pytest.fixture
async def store(db: Database) -> ContactStore:
    users = UserStore(db)
    await users.add("alice", HASH, ["example.com"])
    await users.add("bob", HASH, ["example.net"])
    return ContactStore(db)


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def ci(address: str, attrs: str = "{}", consent: str | None = None, **kw: object) -> ContactInput:
    return ContactInput(address, attrs, consent, **kw)  # type: ignore[arg-type]


async def test_upsert_merges_attributes_and_keeps_consent(store: ContactStore) -> None:
    c, created = await store.upsert("alice", ci("Ann@Example.org", '{"name":"Ann","plan":"free"}'))
    assert created and c.address == "ann@example.org" and c.consent_status == "subscribed"
    assert c.consent_source == "api" and c.attrs() == {"name": "Ann", "plan": "free"}
    c2, created = await store.upsert(
        "alice", ci("ann@example.org", '{"plan":"pro","name":null,"city":"Oslo"}'), "import"
    )
    assert not created
    assert c2.attrs() == {"plan": "pro", "city": "Oslo"}  # merged; null removed a field
    assert c2.consent_source == "api" and c2.consent_at == c.consent_at  # consent untouched
    assert c2.created_at == c.created_at and c2.updated_at >= c.updated_at
    # An explicit status applies; an unsubscribed contact stays so unless resubscribe.
    c3, _ = await store.upsert("alice", ci("ann@example.org", consent="unsubscribed"))
    assert c3.consent_status == "unsubscribed" and c3.attrs() == c2.attrs()
    c4, _ = await store.upsert("alice", ci("ann@example.org", consent="subscribed"), "import")
    assert c4.consent_status == "unsubscribed"
    c5, _ = await store.upsert(
        "alice", ci("ann@example.org", consent="subscribed", consent_ip="192.0.2.7",
                    resubscribe=True)
    )  # fmt: skip
    assert (c5.consent_status, c5.consent_ip) == ("subscribed", "192.0.2.7")


async def test_owners_are_isolated(store: ContactStore) -> None:
    await store.upsert("alice", ci("x@example.org", '{"plan":"pro"}'))
    await store.upsert("bob", ci("x@example.org", '{"plan":"free"}'))
    a, b = await store.get("alice", "x@example.org"), await store.get("bob", "x@example.org")
    assert a is not None and b is not None and a.id != b.id
    assert a.attrs() == {"plan": "pro"} and b.attrs() == {"plan": "free"}
    assert [c.owner for c in await store.search("bob", [("plan", "pro")])] == []
    await store.create_list("alice", "news")
    assert await store.get_list("bob", "news") is None
    assert await store.add_members("bob", "news", ["x@example.org"]) is None
    assert await store.search("bob", list_name="news") == []
    assert await store.delete("bob", "x@example.org")
    assert await store.get("alice", "x@example.org") is not None


async def test_search_binds_paths_and_refuses_bad_names(store: ContactStore) -> None:
    await store.upsert_many(
        "alice",
        [
            ci("a@x.test", '{"plan":"pro","age":30,"vip":true,"addr":{"city":"Oslo"}}'),
            ci("b@x.test", '{"plan":"pro","age":"30"}'),
            ci("c@x.test", '{"plan":"free"}', "unsubscribed"),
        ],
    )
    found = await store.search("alice", [("plan", "pro")])
    assert [c.address for c in found] == ["a@x.test", "b@x.test"]
    assert [c.address for c in await store.search("alice", [("age", "30")])] == [
        "a@x.test", "b@x.test"]  # fmt: skip
    assert [c.address for c in await store.search("alice", [("vip", "true")])] == ["a@x.test"]
    assert [c.address for c in await store.search("alice", [("addr.city", "Oslo")])] == [
        "a@x.test"]  # fmt: skip
    assert [c.address for c in await store.search("alice", status="unsubscribed")] == ["c@x.test"]
    page = await store.search("alice", [("plan", "pro")], after="a@x.test", limit=1)
    assert [c.address for c in page] == ["b@x.test"]
    # A value is data, never SQL.
    assert await store.search("alice", [("plan", "pro' OR 1=1 --")]) == []
    for name in ["x'); DROP TABLE contacts; --", 'a"b', "a..b", "1abc", "", "a.b.c.d.e", "$"]:
        with pytest.raises(ContactError) as err:
            await store.search("alice", [(name, "v")])
        assert err.value.field == f"attr.{name}"
    assert len(await store.search("alice")) == 3  # the table is still there


def test_attr_path_quotes_each_segment() -> None:
    assert attr_path("plan") == '$."plan"'
    assert attr_path("address.zip-code") == '$."address"."zip-code"'


def test_address_validation() -> None:
    assert normalize_address(" <Bob@Example.COM> ") == "bob@example.com"
    for bad in ["", "bob", "@x", "bob@", "a b@x", "a@b@c", "a@.x", "a\x00@x", 5, "x" * 400 + "@y"]:
        with pytest.raises(ContactError):
            normalize_address(bad)
    with pytest.raises(ContactError) as err:
        contact_input({"email": "a@x", "attributes": {"bad name": 1}}, "contacts[2].")
    assert err.value.field == "contacts[2].attributes.bad name"
    with pytest.raises(ContactError) as err:
        contact_input({"email": "a@x", "colour": "red"}, "contacts[0].")
    assert err.value.field == "contacts[0].colour"


CSV = (
    b"\xef\xbb\xbfemail,name,plan,consent_status\r\n"
    b"a@x.test,Ann,pro,\r\n"
    b'b@x.test,"Bob, Jr.","multi\nline",unconfirmed\r\n'
    b"not-an-address,Nope,pro,\r\n"
    b"c@x.test,Cy\r\n"
    b"\r\n"
    b"d@x.test,Di,free,maybe\r\n"
    b'e@x.test,"Eve ""E"" Smith",pro,\n'
    b"f@x.test,\xff\xfe,pro,\n"
)


@pytest.mark.parametrize("size", [1, 7, 1 << 16])
async def test_csv_import_reports_lines(store: ContactStore, size: int) -> None:
    result = await store.import_stream("alice", chunks(CSV, size), ImportParser("csv"))
    assert (result.rows, result.created, result.updated, result.failed) == (7, 3, 0, 4)
    lines = {e.line: e.message for e in result.errors}
    assert sorted(lines) == [5, 6, 8, 10]
    assert "email: not an email address" in lines[5]
    assert "2 fields, the header has 4" in lines[6]
    assert "consent_status: one of" in lines[8]
    assert lines[10] == "not UTF-8"
    b = await store.get("alice", "b@x.test")
    assert b is not None and b.attrs() == {"name": "Bob, Jr.", "plan": "multi\nline"}
    assert b.consent_status == "unconfirmed" and b.consent_source == "import"
    e = await store.get("alice", "e@x.test")
    assert e is not None and e.attrs()["name"] == 'Eve "E" Smith'
    # The same file again: everything updates, nothing new.
    again = await store.import_stream("alice", chunks(CSV, 4096), ImportParser("csv"))
    assert (again.created, again.updated) == (0, 3)


async def test_bad_header_stores_nothing(store: ContactStore) -> None:
    for data, what in [
        (b"name,plan\nAnn,pro\n", "exactly one 'email' column"),
        (b"email,x'); DROP TABLE contacts; --\na@x.test,1\n", "is not an attribute name"),
        (b"email,plan,PLAN\n", "appears twice"),
        (b"", "empty"),
    ]:
        with pytest.raises(ContactError) as err:
            await store.import_stream("alice", chunks(data, 5), ImportParser("csv"))
        assert what in str(err.value) and err.value.field == "header"
    assert await store.count("alice") == 0


async def test_jsonl_import_and_list(store: ContactStore) -> None:
    await store.create_list("alice", "news", double_opt_in=True)
    data = (
        b'{"email": "a@x.test", "attributes": {"plan": "pro"}}\n'
        b"{not json\n"
        b'{"email": "b@x.test", "consent": "subscribed"}\n'
        b'["a list"]\n'
        b'{"email": "a@x.test", "attributes": {"seen": 2}}'  # no final newline
    )
    result = await store.import_stream(
        "alice", chunks(data, 10), ImportParser("jsonl"), list_name="news"
    )
    assert (result.rows, result.created, result.updated, result.failed) == (5, 2, 1, 2)
    assert [e.line for e in result.errors] == [2, 4]
    a = await store.get("alice", "a@x.test")
    assert a is not None and a.attrs() == {"plan": "pro", "seen": 2}
    assert [(m.list_name, m.status) for m in a.lists] == [("news", "unconfirmed")]
    with pytest.raises(ContactError) as err:
        await store.import_stream("alice", chunks(data, 10), ImportParser("jsonl"),
                                  list_name="nope")  # fmt: skip
    assert err.value.field == "list"


def test_splitter_limits_a_record() -> None:
    split = RecordSplitter(csv_quotes=True, max_record=20)
    out = split.feed(b"a,b\n" + b"x" * 50 + b"\nc,d\n" + b'"open' + b"y" * 30 + b"\ne,f\n")
    out += split.close()
    assert out == [(1, b"a,b"), (2, None), (3, b"c,d"), (4, None), (5, b"e,f")]
    parsed = ImportParser("jsonl")
    items = parsed.feed(b'{"email":"a@x.test","attributes":{"n":"' + b"z" * 70000 + b'"}}\n')
    items += parsed.feed(b'{"email":"b@x.test"}\n') + parsed.close()
    assert isinstance(items[0], LineError) and items[0].line == 1
    assert isinstance(items[1], ContactInput) and items[1].address == "b@x.test"


async def test_export_pages_by_keyset(store: ContactStore) -> None:
    rows = [ci(f"u{i:03d}@x.test", f'{{"i":{i}}}') for i in range(25)]
    assert (await store.import_many("alice", rows)).created == 25
    await store.upsert("bob", ci("u000@x.test"))
    got = [c.address async for c in store.export("alice", page=4)]
    assert got == [r.address for r in rows]
    assert await store.attribute_names("alice") == ["i"]


async def test_lists_and_members(store: ContactStore) -> None:
    news = await store.create_list("alice", "news")
    with pytest.raises(ContactError, match="exists already"):
        await store.create_list("alice", "news")
    with pytest.raises(ContactError):
        await store.create_list("alice", "bad name!")
    assert await store.add_members("alice", "news", ["a@x.test", "b@x.test", "a@x.test"]) == 2
    assert await store.add_members("alice", "news", ["a@x.test"]) == 0
    members = await store.members("alice", "news", limit=1)
    assert members is not None and [m.contact.address for m in members] == ["a@x.test"]
    rest = await store.members("alice", "news", after=members[0].contact.id)
    assert rest is not None and [(m.contact.address, m.status) for m in rest] == [
        ("b@x.test", "subscribed")]  # fmt: skip
    assert (await store.get_list("alice", "news")).members == 2  # type: ignore[union-attr]
    renamed = await store.update_list("alice", "news", new_name="weekly", double_opt_in=True)
    assert renamed is not None and renamed.id == news.id and renamed.double_opt_in
    assert await store.remove_member("alice", "weekly", "a@x.test") is True
    assert await store.remove_member("alice", "weekly", "a@x.test") is False
    assert await store.remove_member("alice", "news", "a@x.test") is None
    assert [x.name for x in await store.lists("alice")] == ["weekly"]
    assert await store.delete_list("alice", "weekly")
    assert await store.get("alice", "b@x.test") is not None  # the contact stays
    assert await store.search("alice", list_name="weekly") == []


async def test_delete_contact_drops_memberships(store: ContactStore, db: Database) -> None:
    await store.create_list("alice", "news")
    await store.add_members("alice", "news", ["a@x.test"])
    assert await store.delete("alice", "A@X.test")
    assert not await store.delete("alice", "a@x.test")
    n = await db.read(lambda c: c.execute("SELECT count(*) FROM list_members").fetchone()[0])
    assert n == 0


async def test_unsubscribe_in_callers_transaction(store: ContactStore, db: Database) -> None:
    for owner in ("alice", "bob"):
        await store.upsert(owner, ci("gone@x.test"))
    # Scoped to a sending domain: only the domain's owner's contact changes.
    n = await db.write(lambda c: unsubscribe_in(c, "Gone@X.test", "complaint", 5.0,
                                                sender_domain="example.com"))  # fmt: skip
    assert n == 1
    a, b = await store.get("alice", "gone@x.test"), await store.get("bob", "gone@x.test")
    assert a is not None and (a.consent_status, a.consent_source) == ("unsubscribed", "complaint")
    assert b is not None and b.consent_status == "subscribed"
    # Global (a dead address): every owner's. A failing write rolls the change back too.

    def failing(conn: sqlite3.Connection) -> None:
        unsubscribe_in(conn, "gone@x.test", "bounce", 6.0)
        raise RuntimeError("the suppression insert failed")

    with pytest.raises(RuntimeError):
        await db.write(failing)
    b = await store.get("bob", "gone@x.test")
    assert b is not None and b.consent_status == "subscribed"
    assert await db.write(lambda c: unsubscribe_in(c, "gone@x.test", "bounce", 7.0)) == 1
    b = await store.get("bob", "gone@x.test")
    assert b is not None and (b.consent_source, b.consent_at) == ("bounce", 7.0)


async def test_double_opt_in_confirmation(store: ContactStore) -> None:
    await store.create_list("alice", "news", double_opt_in=True)
    await store.upsert("alice", ci("gone@x.test", consent="unsubscribed"))
    await store.add_members("alice", "news", ["new@x.test", "gone@x.test"])
    new = await store.get("alice", "new@x.test")
    assert new is not None and new.consent_status == "unconfirmed"
    assert [m.status for m in new.lists] == ["unconfirmed"]
    assert not await store.confirm_member("bob", "news", "new@x.test")  # not bob's list
    assert await store.confirm_member("alice", "news", "new@x.test", "198.51.100.4")
    assert not await store.confirm_member("alice", "news", "new@x.test")  # once
    new = await store.get("alice", "new@x.test")
    assert new is not None and (new.consent_status, new.consent_source, new.consent_ip) == (
        "subscribed", "confirm", "198.51.100.4")  # fmt: skip
    assert new.lists[0].status == "subscribed" and new.lists[0].confirmed_at is not None
    assert await store.confirm_member("alice", "news", "gone@x.test")
    gone = await store.get("alice", "gone@x.test")
    assert gone is not None and gone.consent_status == "unsubscribed"  # an unsubscribe stands
