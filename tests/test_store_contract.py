"""The storage owners' contract, run against both backends: each case below runs once on a
SQLite file and once on a real PostgreSQL server (``tests/pg.py``), through the public
methods the rest of the daemon calls. This is how "both backends keep the same behaviour"
is checked without running the whole suite twice: an owner ported to PostgreSQL gets its
cases here, and a difference between the two implementations fails one parameter.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mtaserver.auth import UserError
from mtaserver.config.storage import PostgresConfig
from mtaserver.config.webhooks import WebhookConfig
from mtaserver.model import Event, PreparedMessage, PreparedRecipient, Stats, TrackedRecipient
from mtaserver.storage.postgres.apikeys import PgApiKeyStore
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.events import PgEventLog
from mtaserver.storage.postgres.idempotency import PgApiIntake
from mtaserver.storage.postgres.outbox import PgWebhookOutbox
from mtaserver.storage.postgres.queue import PgQueue
from mtaserver.storage.postgres.reports import PgReports
from mtaserver.storage.postgres.suppressions import PgSuppressionStore
from mtaserver.storage.postgres.templates import PgTemplateStore
from mtaserver.storage.postgres.tokens import PgTokenStore
from mtaserver.storage.postgres.tracking import PgTrackingStore
from mtaserver.storage.postgres.users import PgUserStore
from mtaserver.storage.sqlite.apikeys import TOUCH_EVERY, ApiKeyError, ApiKeyStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.idempotency import ApiIntake, IdemAnswer
from mtaserver.storage.sqlite.outbox import Settlement, WebhookOutbox
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.reports import Reports
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.templates import TemplateStore, TemplateStoreError
from mtaserver.storage.sqlite.tokens import TokenError, TokenStore
from mtaserver.storage.sqlite.tracking import SqlTrackingStore
from mtaserver.storage.sqlite.users import UserStore
from tests.pg import pg_dsn, pg_server  # noqa: F401
from tests.support.clock import FakeClock

T0 = 1_800_000_000.0


@dataclass(frozen=True)
class Stores:
    """Every ported owner of one backend, over one fresh database and one fake clock."""

    backend: str
    clock: FakeClock
    queue: Any
    events: Any
    users: Any
    suppressions: Any
    apikeys: Any
    intake: Any
    templates: Any
    tokens: Any
    reports: Any
    outbox: Any
    tracking: Any


@pytest.fixture(params=["sqlite", "postgresql"])
async def s(request: Any, tmp_path: Path) -> AsyncIterator[Stores]:
    clock = FakeClock(T0)
    if request.param == "sqlite":
        db = Database(tmp_path / "mta.db")
        await db.open()
        spool = Spool(db, clock=clock)
        try:
            yield Stores(
                "sqlite", clock, spool, EventLog(db), UserStore(db, clock),
                SuppressionStore(db, clock), ApiKeyStore(db, clock), ApiIntake(db, spool),
                TemplateStore(db, clock), TokenStore(db, clock), Reports(db),
                WebhookOutbox(db), SqlTrackingStore(db),
            )  # fmt: skip
        finally:
            await db.close()
        return
    pg = PgDatabase(PostgresConfig(dsn=request.getfixturevalue("pg_dsn"), tls="disable",
                                   pool_size=4))  # fmt: skip
    await pg.open()
    queue = PgQueue(pg, "node-a", clock=clock)
    try:
        yield Stores(
            "postgresql", clock, queue, PgEventLog(pg), PgUserStore(pg, clock),
            PgSuppressionStore(pg, clock), PgApiKeyStore(pg, clock), PgApiIntake(pg, queue),
            PgTemplateStore(pg, clock), PgTokenStore(pg, clock), PgReports(pg),
            PgWebhookOutbox(pg), PgTrackingStore(pg),
        )  # fmt: skip
    finally:
        await pg.close()


def message(rcpts: list[str], *, batch_id: str | None = None, at: float = T0) -> PreparedMessage:
    return PreparedMessage(
        queue_id=new_queue_id(time.time()),
        sender="app@example.com",
        recipients=tuple(PreparedRecipient(r) for r in rcpts),
        data=b"Subject: hi\r\n\r\nbody\r\n",
        user="app",
        client_ip="127.0.0.1",
        received_at=at,
        batch_id=batch_id,
    )


async def states(s: Stores, queue_id: str) -> list[str]:
    info = await s.queue.show(queue_id)
    return [] if info is None else [r.state for r in info.recipients]


async def types(s: Stores, queue_id: str) -> list[str]:
    return [e.type for e in await s.events.page(queue_id=queue_id)]


# -- users, suppressions, events (ported first) ---------------------------------------------
async def test_users(s: Stores) -> None:
    await s.users.add("App", "scrypt$hash", ["Example.COM"])
    with pytest.raises(UserError, match="already exists"):
        await s.users.add("app", "x", ["example.com"])
    found = await s.users.lookup("app")
    assert found is not None and found[1] == "scrypt$hash" and found[0].owns("example.com")
    await s.users.set_password("app", "scrypt$new")
    assert [(u.name, u.domains) for u in await s.users.list()] == [("app", ("example.com",))]
    await s.users.remove("app")
    assert await s.users.lookup("app") is None
    with pytest.raises(UserError, match="no such user"):
        await s.users.remove("app")


async def test_suppressions(s: Stores) -> None:
    sup = s.suppressions
    made = await sup.apply("Gone@X.example", "userunknown", sender_domain="shop.example",
                           source="sync", reply="550 5.1.1 no such user")  # fmt: skip
    assert made is not None and made.scope is None
    assert (await sup.check("gone@x.example", "other.example")).reason == "userunknown"
    await sup.apply("c@x.example", "feedback", sender_domain="shop.example", source="complaint")
    assert await sup.check("c@x.example", "shop.example") is not None
    assert await sup.check("c@x.example", "other.example") is None
    assert await sup.apply("f@x.example", "mailboxfull", sender_domain=None, source="x") is None
    assert [r for _, r in await sup.soft_bounces("f@x.example")] == ["mailboxfull"]
    await sup.add("t@x.example", "manual", expires_at=T0 + 100)
    s.clock.advance(200)
    assert await sup.check("t@x.example", None) is None
    assert await sup.purge_expired() == 1
    assert sorted(e.address for e in await sup.list()) == ["c@x.example", "gone@x.example"]
    assert await sup.remove("gone@x.example", all_scopes=True) == 1


async def test_events(s: Stores) -> None:
    assert await s.events.last_id() == 0
    await s.events.emit(Event("open", T0, "Q1", "a@x.example", data=(("idx", 0),)))
    await s.events.emit_many([Event("click", T0 + 1, "Q1", "a@x.example"),
                              Event("open", T0 + 2, "Q2", None)])  # fmt: skip
    first = await s.events.last_id()
    rows = await s.events.after(0, 10)
    assert [t for _, t, _ in rows] == ["open", "click", "open"] and rows[-1][0] == first
    assert [e.type for e in await s.events.page(queue_id="Q1")] == ["open", "click"]
    page = await s.events.page(after=rows[0][0], types=["open"])
    assert [(e.type, e.queue_id) for e in page] == [("open", "Q2")]
    assert (await s.events.page(queue_id="Q1", limit=1))[0].data == {"idx": 0}
    assert await s.events.prune_events(T0 + 1.5, 100) == 2


# -- the HTTP send API's owners ---------------------------------------------------------------
async def test_api_keys(s: Stores) -> None:
    info, key = await s.apikeys.create("app", frozenset({"mail.send"}), "ci")
    assert key.startswith("SG." + info.key_id + ".") and info.active
    with pytest.raises(ApiKeyError, match="unknown scopes"):
        await s.apikeys.create("app", frozenset({"mail.everything"}))
    await s.apikeys.create("other", frozenset({"mail.send", "contacts.read"}))
    seen = await s.apikeys.verify(key)
    assert seen is not None and seen.user == "app" and seen.scopes == {"mail.send"}
    assert await s.apikeys.verify(key + "x") is None and await s.apikeys.verify("nope") is None
    (listed,) = await s.apikeys.list("app")
    assert listed.last_used_at == T0  # touched at the first use
    s.clock.advance(TOUCH_EVERY / 2)
    await s.apikeys.verify(key)
    assert (await s.apikeys.list("app"))[0].last_used_at == T0  # not again within a minute
    s.clock.advance(TOUCH_EVERY)
    await s.apikeys.verify(key)
    assert (await s.apikeys.list("app"))[0].last_used_at == s.clock.now()
    assert sorted(k.user for k in await s.apikeys.list()) == ["app", "other"]
    revoked = await s.apikeys.revoke(info.key_id)
    assert revoked.revoked_at == s.clock.now() and not revoked.active
    assert await s.apikeys.verify(key) is None
    s.clock.advance(5)
    assert (await s.apikeys.revoke(info.key_id)).revoked_at == revoked.revoked_at
    with pytest.raises(ApiKeyError, match="no API key"):
        await s.apikeys.revoke("missing")


def answer(idem: str, at: float, body: str = '{"ok":1}') -> IdemAnswer:
    return IdemAnswer("key1", idem, "fp", 202, "X1", body, at)


async def test_idempotent_commit(s: Stores) -> None:
    first = message(["a@x.example", "b@y.example"])
    assert await s.intake.commit([first], [], answer("k", T0)) is None
    assert await states(s, first.queue_id) == ["queued", "queued"]
    # A retry with the same key queues nothing and gets the first answer.
    again = message(["a@x.example"])
    prior = await s.intake.commit([again], [], answer("k", T0 + 1, "second"))
    assert prior == answer("k", T0) and await s.queue.show(again.queue_id) is None
    assert await s.intake.lookup("key1", "k", T0 - 10) == answer("k", T0)
    assert await s.intake.lookup("key1", "k", T0 + 0.5) is None  # outside the window
    # Past the window the key is free again: the stale answer is replaced.
    late = message(["c@x.example"])
    assert await s.intake.commit([late], [], answer("k", T0 + 100), stale_before=T0 + 50) is None
    assert (await s.intake.lookup("key1", "k", T0)).created_at == T0 + 100
    # Several messages with no key: all queued, with their events.
    two = [message(["d@x.example"]), message(["e@x.example"])]
    ev = [Event("api_message", T0, two[0].queue_id, data=(("x_message_id", "X2"),))]
    assert await s.intake.commit(two, ev, None) is None
    assert await types(s, two[0].queue_id) == ["accepted", "api_message"]
    assert await s.intake.purge(T0 + 50) == 0 and await s.intake.purge(T0 + 101) == 1


async def test_send_batches(s: Stores) -> None:
    b = await s.queue.create_batch("app")
    assert await s.queue.batch(b.batch_id) == b and b.status is None
    assert await s.queue.list_batches("app") == ()
    one = message(["a@x.example", "b@x.example"], batch_id=b.batch_id)
    await s.queue.enqueue_many([one])
    change = await s.queue.set_batch_status(b.batch_id, "pause")
    assert change is not None and change.held == 2 and change.batch.status == "pause"
    later = message(["c@x.example"], batch_id=b.batch_id)
    await s.queue.enqueue_many([later])  # queued into a paused batch: held at intake
    assert await states(s, later.queue_id) == ["held"]
    assert [x.batch_id for x in await s.queue.list_batches("app")] == [b.batch_id]
    resumed = await s.queue.set_batch_status(b.batch_id, None)
    assert resumed is not None and resumed.released == 3
    cancelled = await s.queue.set_batch_status(b.batch_id, "cancel")
    assert cancelled is not None and cancelled.cancelled == 3
    assert await states(s, one.queue_id) == ["suppressed", "suppressed"]
    assert (await types(s, one.queue_id)).count("cancelled") == 2
    assert await s.queue.set_batch_status("missing", "pause") is None
    with pytest.raises(ValueError, match="batch status"):
        await s.queue.set_batch_status(b.batch_id, "stop")


async def test_templates(s: Stores) -> None:
    t = s.templates
    v1 = await t.put("welcome", "Hi {{name}}", None, "Hello {{name}}")
    assert v1.template_id.startswith("d-") and v1.versions == (1,) and v1.active_version == 1
    s.clock.advance(10)
    v2 = await t.put(v1.template_id, "Hi again", "<p>x</p>", None)
    assert v2.versions == (1, 2) and v2.active_version == 2 and v2.updated_at == T0 + 10
    assert (await t.get("welcome")).subject == "Hi again"
    assert (await t.get(v1.template_id)).html == "<p>x</p>"
    with pytest.raises(TemplateStoreError, match="exists"):
        await t.put("welcome", None, None, "x", only_new=True)
    with pytest.raises(TemplateStoreError, match="no template"):
        await t.put("other", None, None, "x", create=False)
    with pytest.raises(TemplateStoreError, match="template html"):
        await t.put("broken", None, "{{#if}}", None)
    with pytest.raises(TemplateStoreError, match="needs html or text"):
        await t.put("empty", "s", None, None)
    assert (await t.activate("welcome", 1)).active_version == 1
    assert (await t.version("welcome")).text == "Hello {{name}}"
    assert (await t.version("welcome", 2)).subject == "Hi again"
    with pytest.raises(TemplateStoreError, match="no version 3"):
        await t.activate("welcome", 3)
    await t.put("second", None, None, "y")
    assert [i.name for i in await t.list()] == ["second", "welcome"]
    info, versions = await t.versions("welcome")
    assert info.name == "welcome" and [v.version for v in versions] == [1, 2]
    assert (await t.delete("welcome")).versions == (1, 2)
    assert await t.get("welcome") is None and await t.info(v1.template_id) is None
    with pytest.raises(TemplateStoreError, match="no template"):
        await t.delete("welcome")


# -- the admin API's owners -------------------------------------------------------------------
async def test_admin_tokens(s: Stores) -> None:
    info, token = await s.tokens.create("ops")
    assert token.startswith("mta_") and info.active and info.name == "ops"
    with pytest.raises(TokenError, match="live token named 'ops' exists"):
        await s.tokens.create("ops")
    with pytest.raises(TokenError, match="not all digits"):
        await s.tokens.create("123")
    assert (await s.tokens.verify(token)).id == info.id
    assert await s.tokens.verify("mta_wrong") is None and await s.tokens.verify("x") is None
    assert (await s.tokens.list())[0].last_used_at == T0
    revoked = await s.tokens.revoke("ops")
    assert revoked.revoked_at == T0 and await s.tokens.verify(token) is None
    again, _ = await s.tokens.create("ops")  # a revoked token frees its name
    assert again.id > info.id
    assert (await s.tokens.revoke(str(info.id))).revoked_at == T0  # by id: already revoked
    assert [t.name for t in await s.tokens.list(include_revoked=False)] == ["ops"]
    assert len(await s.tokens.list()) == 2
    with pytest.raises(TokenError, match="no token with id 99"):
        await s.tokens.revoke("99")
    with pytest.raises(TokenError, match="no live token named 'gone'"):
        await s.tokens.revoke("gone")


async def test_cohort_stats(s: Stores) -> None:
    a = message(["a@x.example", "b@x.example", "c@x.example"])
    old = message(["z@x.example"], at=T0 - 1000)  # outside the cohort
    await s.queue.enqueue_many([a, old])
    q = a.queue_id

    def ev(type_: str, rcpt: str | None, **data: object) -> Event:
        return Event(type_, T0 + 1, q, rcpt, data=tuple(data.items()))  # type: ignore[arg-type]

    await s.events.emit_many([
        ev("delivered", "a@x.example", idx=0), ev("delivered", "b@x.example", idx=1),
        ev("deferred", "c@x.example", idx=2), ev("bounced", "c@x.example", idx=2, kind="hard"),
        ev("complaint", "b@x.example"), ev("unsubscribe", "b@x.example"),
        Event("delivered", T0, old.queue_id, "z@x.example"),
    ])  # fmt: skip
    # Hits go through the tracking batch insert: the address is joined in from the queue.
    await s.events.insert_hits([
        (T0 + 2, "open", q, 0, "UA", "1.2.3.4", False, None, None, None),
        (T0 + 3, "open", q, 0, "UA", "1.2.3.4", False, None, None, None),
        (T0 + 3, "open", q, 1, "Scanner", "5.6.7.8", True, "scanner", None, None),
        (T0 + 4, "click", q, 0, "UA", "1.2.3.4", False, None, None, "https://x.example/"),
    ])  # fmt: skip
    got = await s.reports.cohort(T0 - 1, None, None, float("inf"))
    assert got == Stats(1, 3, 2, 1, 1, 0, 1, 1, 1, 1, 2, 1, 1, 0)
    assert (await s.reports.cohort(T0 - 1, None, "someone-else", float("inf"))).messages == 0
    assert (await s.reports.cohort(T0 - 2000, None, "app", T0 - 1)).delivered == 1
    (click,) = await s.events.page(types=["click"])
    assert click.recipient == "a@x.example"
    assert click.data == {"idx": 0, "user": "app", "user_agent": "UA", "client_ip": "1.2.3.4",
                          "machine": False, "url": "https://x.example/"}  # fmt: skip


# -- the webhook outbox ----------------------------------------------------------------------
def hook(name: str, *events: str) -> WebhookConfig:
    return WebhookConfig(name, f"http://127.0.0.1:9/{name}", events, b"secret")


async def due(s: Stores, webhook: str, *, context: bool = False) -> list[Any]:
    """What the dispatcher would send now (it asks again only after settling)."""
    return await s.outbox.due(webhook, s.clock.now(), 100, context=context)


async def test_outbox_order_per_message_and_settling(s: Stores) -> None:
    assert await s.outbox.sync([hook("all"), hook("bounces", "bounced")]) == 0
    m = message(["a@x.example"])
    await s.queue.enqueue_many([m])  # its 'accepted' event: one row for "all"
    q = m.queue_id
    await s.events.emit_many([Event("delivered", T0 + 1, q, "a@x.example", data=(("idx", 0),)),
                              Event("bounced", T0 + 2, q, "a@x.example"),
                              Event("open", T0 + 3, None, "b@x.example")])  # fmt: skip
    assert [(b.webhook, b.pending, b.waiting) for b in await s.outbox.backlog()] == [
        ("all", 2, 2), ("bounces", 1, 0)]  # fmt: skip
    first = await due(s, "all")
    assert [(i.queue_id, i.event.type) for i in first] == [(q, "accepted"), (None, "open")]
    assert json.loads(first[0].body)["webhook"] == "all"
    (bounce,) = await due(s, "bounces")
    assert bounce.event.type == "bounced"
    busy = [bounce.id, *(i.id for i in first)]
    assert await s.outbox.next_due(busy) is None  # the rest of the message waits behind
    # Delivered: the next row of the message becomes pending; retry: due again later.
    await s.outbox.settle([Settlement(first[0], "delivered", s.clock.now()),
                           Settlement(first[1], "retry", s.clock.now() + 60, "503")])  # fmt: skip
    (second,) = await due(s, "all")
    assert second.event.type == "delivered" and second.event.data == {"idx": 0}
    assert await s.outbox.next_due([bounce.id, second.id]) == s.clock.now() + 60
    await s.outbox.settle([Settlement(second, "failed", s.clock.now(), "gave up")])
    (third,) = await due(s, "all")  # a given-up row lets the next one go
    assert third.event.type == "bounced"
    await s.outbox.settle([Settlement(third, "delivered", s.clock.now())])
    assert [(b.webhook, b.pending, b.waiting, b.failed) for b in await s.outbox.backlog()] == [
        ("all", 1, 0, 1), ("bounces", 1, 0, 0)]  # fmt: skip
    # The operator retries the given-up row; retention prunes given-up rows by age.
    assert await s.outbox.retry_failed("all", s.clock.now()) == 1
    (again,) = await due(s, "all")
    assert again.id == second.id and again.attempts == 0
    await s.outbox.settle([Settlement(again, "failed", s.clock.now(), "x")])
    assert await s.outbox.prune_failed(s.clock.now() + 1, 10) == 1
    # A webhook taken out of the config loses its rows; with none left, events add none.
    assert await s.outbox.sync([hook("all")]) == 1
    assert await s.outbox.sync([]) == 1
    await s.events.emit(Event("delivered", T0, q, "a@x.example"))
    assert await s.outbox.backlog() == []


async def test_outbox_context_for_sendgrid_events(s: Stores) -> None:
    await s.outbox.sync([hook("sg")])
    m = message(["a@x.example", "b@x.example"])
    api = (("x_message_id", "XM1"), ("categories", '["welcome"]'),
           ("custom_args", '{"k": "v"}'), ("asm_group_id", 7))  # fmt: skip
    await s.queue.enqueue_many([m], [Event("api_message", T0, m.queue_id, data=api)])
    await s.events.emit(Event("delivered", T0 + 1, m.queue_id, "b@x.example", data=(("idx", 1),)))
    items = await due(s, "sg", context=True)
    assert [i.event.type for i in items] == ["accepted"]
    ctx = items[0].context
    assert ctx.x_message_id == "XM1" and ctx.categories == ("welcome",)
    assert ctx.custom_args == (("k", "v"),) and ctx.asm_group_id == 7 and not ctx.is_dsn
    assert ctx.recipients == ((0, "a@x.example"), (1, "b@x.example"))
    await s.outbox.settle([Settlement(i, "delivered", T0) for i in items])
    items = await due(s, "sg", context=True)
    assert [i.event.type for i in items] == ["api_message"]
    assert items[0].context.recipients == ()
    await s.outbox.settle([Settlement(i, "delivered", T0) for i in items])
    (delivered,) = await due(s, "sg", context=True)
    assert delivered.context.recipients == ((1, "b@x.example"),)


# -- tracking --------------------------------------------------------------------------------
async def test_tracking_lookup_and_hits(s: Stores) -> None:
    m = PreparedMessage(
        queue_id=new_queue_id(time.time()), sender="news@shop.example",
        recipients=(PreparedRecipient("a@x.example"), PreparedRecipient("b@x.example")),
        data=b"Subject: hi\r\n\r\nbody\r\n", user="app", client_ip="127.0.0.1",
        received_at=T0, campaign="spring",
    )  # fmt: skip
    await s.queue.enqueue_many([m])
    q = m.queue_id
    await s.events.emit(Event("delivered", T0 + 5, q, "b@x.example", data=(("idx", 1),)))
    found = await s.tracking.lookup([(q, 1), (q, 0), (q, 1), (q, 7), ("nope", 0)])
    assert found == {
        (q, 0): TrackedRecipient("a@x.example", "news@shop.example", "spring", "app", "queued",
                                 None),
        (q, 1): TrackedRecipient("b@x.example", "news@shop.example", "spring", "app", "queued",
                                 T0 + 5),
    }  # fmt: skip
    assert await s.tracking.lookup([]) == {}
    await s.tracking.write_rows([(T0 + 6, "open", q, 1, "UA", "1.2.3.4", False, None, None, None),
                                 (T0 + 7, "open", "gone", 0, "UA", "", True, "bot", None, None)])  # fmt: skip
    opens = await s.events.page(types=["open"])
    assert [(e.queue_id, e.recipient) for e in opens] == [(q, "b@x.example"), ("gone", None)]
    assert opens[0].data["campaign"] == "spring" and opens[1].data == {
        "idx": 0, "user_agent": "UA", "client_ip": "", "machine": True, "reason": "bot"}  # fmt: skip
    await s.tracking.emit(Event("unsubscribe", T0 + 8, q, "a@x.example"))
    assert (await types(s, q))[-1] == "unsubscribe"


# -- PostgreSQL only: several nodes dispatch from one outbox -----------------------------------
async def test_two_nodes_never_post_the_same_outbox_row(pg_dsn: str) -> None:  # noqa: F811
    dbs = [PgDatabase(PostgresConfig(dsn=pg_dsn, tls="disable", pool_size=2)) for _ in range(2)]
    for d in dbs:
        await d.open()
    try:
        a, b = PgWebhookOutbox(dbs[0], lease=60), PgWebhookOutbox(dbs[1], lease=60)
        await a.sync([hook("all")])
        await PgEventLog(dbs[0]).emit_many(
            [Event("open", T0, None, f"r{i}@x.example") for i in range(10)]
        )
        got_a = await a.due("all", T0, 4)
        got_b = await b.due("all", T0, 100)
        assert len(got_a) == 4 and len(got_b) == 6
        assert not {i.id for i in got_a} & {i.id for i in got_b}
        # The dispatcher's limit counts what it holds: nothing more until it settles.
        assert await a.due("all", T0, 4) == []
        await a.settle([Settlement(got_a[0], "delivered", T0)])
        assert await a.due("all", T0, 4) == []  # every other row is leased to b
        # b dies holding six rows: once its lease runs out, a sends them (and its own three
        # again: the dispatcher skips those, it still has them in flight).
        taken = await a.due("all", T0 + 61, 100)
        assert sorted(i.id for i in taken) == sorted(i.id for i in [*got_a[1:], *got_b])
    finally:
        for d in dbs:
            await d.close()
