"""Campaigns on PostgreSQL: the store contract on both backends, and several nodes.

Each ``b`` case runs once on a SQLite file and once on a private PostgreSQL server, through
the feeder and the real pipeline with a fake clock, and asserts the same literal answers
on both: the life cycle (conditional status changes, failed, cancelled rows), a run fed in
batches with a pause and a late contact, its per-run stats by queue-id attribution, and a
local-time run whose rows fall due at 09:00 in each contact's zone. Then PostgreSQL only:
two nodes feeding one run queue each recipient exactly once and share the work, and a
node that claimed rows and died has them taken over once its lease ends.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mtaserver.app.campaigns import Feeder
from mtaserver.app.pgops import as_sqlite_owner
from mtaserver.auth import hash_password
from mtaserver.campaigns import CampaignStateError, definition
from mtaserver.clock import SystemClock
from mtaserver.config.storage import PostgresConfig
from mtaserver.contacts import ContactConflict, ContactInput
from mtaserver.model import Event
from mtaserver.outreach import OutreachSender
from mtaserver.pipeline import Pipeline
from mtaserver.storage.postgres import campaigns as pgc
from mtaserver.storage.postgres import segments as pgs
from mtaserver.storage.postgres.contacts import PgContactStore
from mtaserver.storage.postgres.copy import copy_sqlite
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.events import PgEventLog
from mtaserver.storage.postgres.outreach_stats import PgOutreachStats
from mtaserver.storage.postgres.queue import PgQueue
from mtaserver.storage.postgres.suppressions import PgSuppressionStore
from mtaserver.storage.postgres.templates import PgTemplateStore
from mtaserver.storage.postgres.users import PgUserStore
from mtaserver.storage.sqlite.campaigns import CampaignStore
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.outreach_stats import OutreachStats
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.segments import SegmentStore
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.templates import TemplateStore
from mtaserver.storage.sqlite.users import UserStore
from tests.pg import PgServer, pg_dsn, pg_server  # noqa: F401
from tests.support.clock import FakeClock
from tests.support.daemon import Daemon, TestConfig
from tests.support.mxsink import SinkGroup, eventually, wait_for
from tests.support.ports import free_port

HOUR = 3600.0
HASH = hash_password("pw-pw-pw-pw", n=2**10)
_QUEUED = (
    "SELECT r.address, m.received_at, m.id FROM recipients r JOIN messages m "
    "ON m.id = r.queue_id WHERE m.campaign = {} ORDER BY m.received_at, r.address"
)


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@dataclass
class B:
    """One backend's campaign store, feeder and readers over one fresh database."""

    name: str
    clock: FakeClock
    store: Any
    segments: Any
    feeder: Feeder
    stats: Any
    events: Any
    raw: Any  # SQLite Database | PgDatabase, for the test's own reads

    async def people(self, members: Mapping[str, object], lst: str = "news") -> None:
        """Contacts (address → ``timezone`` attribute, ``"unsub"``: unsubscribed) on ``lst``,
        through the backend's contact store."""
        contacts: Any = (
            ContactStore(self.raw, self.clock)
            if isinstance(self.raw, Database)
            else PgContactStore(self.raw, self.clock)
        )
        if await contacts.get_list("alice", lst) is None:
            await contacts.create_list("alice", lst)
        for addr, tz in members.items():
            attrs = json.dumps({"timezone": tz}) if tz not in (None, "unsub") else "{}"
            consent = "unsubscribed" if tz == "unsub" else None
            await contacts.upsert("alice", ContactInput(addr, attrs, consent))
        await contacts.add_members("alice", lst, list(members))

    async def queued(self, campaign: str) -> list[tuple[str, float, str]]:
        """(address, queued at, queue id) of every recipient ``campaign`` queued."""
        if isinstance(self.raw, Database):

            def fn(conn: sqlite3.Connection) -> list[tuple[str, float, str]]:
                return [(a, t, q) for a, t, q in conn.execute(_QUEUED.format("?"), (campaign,))]

            return await self.raw.read(fn)
        async with self.raw.connection() as conn:
            return [(a, t, q) for a, t, q in await conn.fetch(_QUEUED.format("$1"), campaign)]

    async def create(self, name: str, **kw: Any) -> Any:
        d = definition(name, "digest", "news@example.com", **({"list_name": "news"} | kw))
        return await self.store.create(
            "alice", d.name, d.template, d.from_email, audience_kind=d.audience_kind,
            audience=d.audience, schedule=d.schedule, send_at=d.send_at, cron=d.cron,
            tz=d.tz, local_at=d.local_at,
        )  # fmt: skip

    async def drain(self) -> None:
        while await self.feeder.tick():
            pass


def _sender(clock: FakeClock, queue: Any, templates: Any, users: Any, supp: Any) -> OutreachSender:
    pipeline = Pipeline(spool=queue, new_queue_id=new_queue_id, hostname="mta.test")
    return OutreachSender(
        templates=templates, users=users, suppressions=supp, preparer=lambda: pipeline,
        queue=queue, clock=clock, new_queue_id=new_queue_id, hostname="mta.test",
    )  # fmt: skip


async def pg_backend(pg: PgDatabase, clock: FakeClock, node: str = "node-a") -> B:
    queue = PgQueue(pg, node, clock=clock)
    templates = PgTemplateStore(pg, clock)
    sender = _sender(clock, queue, templates, PgUserStore(pg, clock), PgSuppressionStore(pg, clock))
    store = pgc.PgCampaignStore(pg, clock, node_id=node)
    segments = pgs.PgSegmentStore(pg, clock)
    feeder = Feeder(as_sqlite_owner(store), as_sqlite_owner(segments), sender, clock, batch=50,
                    select=pgs.select_sql, list_sql=pgc.list_audience_sql)  # fmt: skip
    return B("postgresql", clock, store, segments, feeder, PgOutreachStats(pg), PgEventLog(pg), pg)


async def pg_setup(pg: PgDatabase, clock: FakeClock) -> None:
    await PgUserStore(pg, clock).add("alice", HASH, ["example.com"])
    await PgTemplateStore(pg, clock).put("digest", "Digest {{contact.email}}", "<p>Hi</p>", None)


async def sqlite_backend(db: Database, clock: FakeClock) -> B:
    spool = Spool(db, clock=clock)
    await UserStore(db).add("alice", HASH, ["example.com"])
    templates = TemplateStore(db, clock)
    await templates.put("digest", "Digest {{contact.email}}", "<p>Hi</p>", None)
    sender = _sender(clock, spool, templates, UserStore(db), SuppressionStore(db))
    store, segments = CampaignStore(db, clock), SegmentStore(db, clock)
    feeder = Feeder(store, segments, sender, clock, batch=50)
    return B("sqlite", clock, store, segments, feeder, OutreachStats(db), EventLog(db), db)


@pytest.fixture(params=["sqlite", "postgresql"])
async def b(request: Any, tmp_path: Path) -> AsyncIterator[B]:
    clock = FakeClock(at("2026-03-28T12:00:00+00:00"))
    if request.param == "sqlite":
        db = Database(tmp_path / "mta.db")
        await db.open()
        try:
            yield await sqlite_backend(db, clock)
        finally:
            await db.close()
        return
    dsn = request.getfixturevalue("pg_dsn")
    pg = PgDatabase(PostgresConfig(dsn=dsn, tls="disable", pool_size=4))
    await pg.open()
    try:
        await pg_setup(pg, clock)
        yield await pg_backend(pg, clock)
    finally:
        await pg.close()


async def test_life_cycle_and_conditional_status_changes(b: B) -> None:
    c = await b.create("weekly")
    with pytest.raises(ContactConflict, match="exists already"):
        await b.create("weekly")
    assert (c.status, c.next_run_at, c.failure) == ("draft", None, None)
    started = await b.store.act(c, "start")
    assert (started.status, started.next_run_at) == ("scheduled", b.clock.now())
    with pytest.raises(CampaignStateError, match="changed from draft to scheduled"):
        await b.store.act(c, "cancel")  # read before the start: refused, nothing written
    paused = await b.store.act(started, "pause")
    assert paused.status == "paused"
    assert not await b.store.set_status(c.id, "running", expect=("scheduled",))
    resumed = await b.store.act(paused, "resume")
    assert resumed.status == "scheduled"  # no run yet: back to waiting for its fire
    with pytest.raises(CampaignStateError, match="is scheduled; start needs it draft"):
        await b.store.act(resumed, "start")
    gone = await b.store.act(resumed, "cancel")
    assert (gone.status, gone.next_run_at) == ("cancelled", None)
    other = await b.store.act(await b.create("other", cron="0 9 * * MON", tz="Europe/Berlin"),
                              "start")  # fmt: skip
    assert other.next_run_at == at("2026-03-30T09:00:00+02:00")
    assert await b.store.fail(other.id, "segment: no segment 'x'")
    assert not await b.store.fail(other.id, "twice")
    failed = await b.store.get("alice", "other")
    assert (failed.status, failed.failure, failed.next_run_at) == (
        "failed", "segment: no segment 'x'", None)  # fmt: skip
    assert [x.name for x in await b.store.list_all("alice")] == ["other", "weekly"]
    assert await b.store.get("bob", "weekly") is None and await b.store.list_all("bob") == []


async def test_a_run_queues_each_snapshot_row_once_with_exact_stats(b: B) -> None:
    await b.people(
        {f"u{i:03d}@example.org": None for i in range(119)} | {"gone@example.org": "unsub"}
    )
    c = await b.store.act(await b.create("promo"), "start")
    assert await b.feeder.tick()  # started, first batch fed
    await b.people({"late@example.org": None})
    await b.store.act(await b.store.get("alice", "promo"), "pause")
    assert not await b.feeder.tick()
    assert len(await b.queued("promo")) == 50
    await b.store.act(await b.store.get("alice", "promo"), "resume")
    await b.drain()
    got = await b.queued("promo")
    addrs = [a for a, _, _ in got]
    assert len(addrs) == len(set(addrs)) == 119 and "late@example.org" not in addrs
    assert (await b.store.get("alice", "promo")).status == "done"
    [run] = await b.store.runs(c.id)
    assert (run.audience, run.queued, run.skipped, run.status) == (120, 119, 1, "done")
    assert await b.store.counts(run.id) == {"queued": 119, "skipped": 1}
    # what became of the messages, attributed by queue id
    t = b.clock.now()
    qid = {a: q for a, _, q in got}
    evs = [Event("delivered", t, q, a) for a, q in list(qid.items())[2:]]
    evs += [Event("bounced", t, qid[a], a, (("kind", "hard"), ("category", "bad-mailbox")))
            for a in ("u000@example.org", "u001@example.org")]  # fmt: skip
    one, two = qid["u002@example.org"], qid["u003@example.org"]
    evs += [Event("open", t, one, "u002@example.org"), Event("open", t + 5, one, "u002@example.org"),
            Event("open", t, two, "u003@example.org", (("machine", True),)),
            Event("click", t, one, "u002@example.org", (("url", "https://x.example/"),)),
            Event("unsubscribe", t, two, "u003@example.org")]  # fmt: skip
    await b.events.emit(*evs)
    rep = (await b.stats.campaign("alice", "promo")).as_json()
    total = rep["total"]
    assert (total["audience"], total["pending"], total["skipped"]) == (120, 0, {"unsubscribed": 1})
    assert (total["queued"], total["sent"], total["delivered"]) == (119, 119, 117)
    assert total["bounced"] == {"total": 2, "hard": 2, "soft": 0,
                                "by_category": {"bad-mailbox": 2}, "by_reason": {"undefined": 2}}  # fmt: skip
    assert total["opened"] == {"unique_human": 1, "unique_machine": 1, "human": 2, "machine": 1}
    assert total["clicked"] == {"unique_human": 1, "unique_machine": 0, "human": 1, "machine": 0}
    assert (total["unsubscribed"], total["complained"]) == (1, 0)
    assert [r["status"] for r in rep["runs"]] == ["done"]
    assert await b.stats.campaign("alice", "nope") is None


async def test_each_contact_at_its_own_nine_oclock(b: B) -> None:
    await b.people({"tokyo@example.org": "Asia/Tokyo", "berlin@example.org": "Europe/Berlin",
                    "ny@example.org": "America/New_York", "none@example.org": None,
                    "bogus@example.org": "Mars/Olympus", "number@example.org": 5}, "zones")  # fmt: skip
    c = await b.store.act(await b.create("nine", list_name="zones", local_time="09:00",
                                         date="2026-03-29", tz="America/Sao_Paulo"), "start")  # fmt: skip
    assert c.next_run_at == at("2026-03-28T19:00:00+00:00")  # UTC+14 first
    want = {
        "tokyo@example.org": at("2026-03-29T09:00:00+09:00"),
        "berlin@example.org": at("2026-03-29T09:00:00+02:00"),  # CEST since 01:00 UTC
        "ny@example.org": at("2026-03-29T09:00:00-04:00"),
        "none@example.org": at("2026-03-29T09:00:00-03:00"),  # the fallback zone
        "bogus@example.org": at("2026-03-29T09:00:00-03:00"),
        "number@example.org": at("2026-03-29T09:00:00-03:00"),
    }
    for t in sorted({c.next_run_at, *want.values(), *(w - 1 for w in want.values())}):
        b.clock.advance(t - b.clock.now())
        await b.drain()
        got = {a: when for a, when, _ in await b.queued("nine")}
        assert got == {a: w for a, w in want.items() if w <= t}, t  # each at its 09:00, once
    assert (await b.store.get("alice", "nine")).status == "done"
    [run] = await b.store.runs(c.id)
    assert (run.audience, run.queued, run.status) == (6, 6, "done")


async def test_cancel_and_a_deleted_segment(b: B) -> None:
    await b.people({f"u{i:03d}@example.org": None for i in range(120)})
    c = await b.store.act(await b.create("stop"), "start")
    assert await b.feeder.tick()
    c = await b.store.act(await b.store.get("alice", "stop"), "cancel")
    [run] = await b.store.runs(c.id)
    assert (c.status, run.status) == ("cancelled", "cancelled")
    assert await b.store.counts(run.id) == {"queued": 50, "cancelled": 70}
    c2 = await b.store.act(await b.create("stop2"), "start")
    assert await b.feeder.tick()
    assert await b.store.set_status(c2.id, "cancelled")  # the row sweep never ran
    [run2] = await b.store.runs(c2.id)
    assert await b.store.cancel_rows(c2.id, limit=30) == 70
    assert await b.store.counts(run2.id) == {"queued": 50, "cancelled": 70}
    rep = (await b.stats.campaign("alice", "stop2")).as_json()
    assert (rep["total"]["cancelled"], rep["total"]["queued"]) == (70, 50)
    await b.segments.save("alice", "fans", {"in_list": "news"}, create=True)
    fans = await b.store.act(await b.create("fans", list_name=None, segment="fans"), "start")
    await b.drain()
    assert len(await b.queued("fans")) == 120
    [r] = await b.store.runs(fans.id)
    assert (r.audience, r.queued) == (120, 120)
    gone = await b.store.act(await b.create("gone", list_name=None, segment="fans"), "start")
    assert await b.segments.delete("alice", "fans")
    await b.drain()
    failed = await b.store.get("alice", gone.name)
    assert failed.status == "failed" and "fans" in failed.failure


async def _two_nodes(dsn: str, clock: FakeClock) -> tuple[list[PgDatabase], B, B]:
    dbs = [PgDatabase(PostgresConfig(dsn=dsn, tls="disable", pool_size=4)) for _ in range(2)]
    for db in dbs:
        await db.open()
    await pg_setup(dbs[0], clock)
    return dbs, await pg_backend(dbs[0], clock, "node-a"), await pg_backend(dbs[1], clock, "node-b")


async def test_two_nodes_feed_one_run_each_recipient_once(pg_dsn: str) -> None:  # noqa: F811
    clock = FakeClock()
    dbs, a, nb = await _two_nodes(pg_dsn, clock)
    try:
        await a.people({f"u{i:04d}@example.org": None for i in range(600)})
        c = await a.store.act(await a.create("both"), "start")

        async def node(x: B) -> None:
            while (await x.store.get("alice", "both")).status != "done":
                if not await x.feeder.tick():
                    await asyncio.sleep(0.01)

        await asyncio.wait_for(asyncio.gather(node(a), node(nb)), 60)
        addrs = [r[0] for r in await a.queued("both")]
        assert len(addrs) == len(set(addrs)) == 600  # every recipient queued exactly once
        [run] = await a.store.runs(c.id)
        assert (run.audience, run.queued, run.status) == (600, 600, "done")
        async with dbs[0].connection() as conn:
            by_node = dict(await conn.fetch(
                "SELECT lease_node, count(*) FROM campaign_recipients GROUP BY 1"))  # fmt: skip
        assert set(by_node) == {"node-a", "node-b"} and sum(by_node.values()) == 600, by_node
    finally:
        for db in dbs:
            await db.close()


async def test_rows_a_dead_node_claimed_are_fed_after_its_lease(pg_dsn: str) -> None:  # noqa: F811
    clock = FakeClock()
    dbs, a, nb = await _two_nodes(pg_dsn, clock)
    try:
        await a.people({f"u{i:03d}@example.org": None for i in range(80)})
        await a.store.act(await a.create("dead"), "start")
        assert await nb.feeder.tick()  # node-b starts the run and feeds 50
        # node-a claims the other 30 and dies before its commit (kill -9: nothing stored)
        assert len(await a.store.pending((await a.store.running())[0][0].id, 50)) == 30
        assert not await nb.feeder.tick()  # node-a's claim holds: nothing for node-b
        assert len(await a.queued("dead")) == 50
        clock.advance(pgc.LEASE)
        await nb.drain()
        addrs = [r[0] for r in await a.queued("dead")]
        assert len(addrs) == len(set(addrs)) == 80
        assert (await a.store.get("alice", "dead")).status == "done"
    finally:
        for db in dbs:
            await db.close()


async def test_a_postgresql_node_delivers_a_campaign_with_exact_stats(
    pg_server: PgServer,  # noqa: F811
    pg_dsn: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A daemon on PostgreSQL feeds a segment campaign (made and started with ``mtaserver
    campaigns``) to the test MX; the admin API and ``mtaserver stats`` report what became of
    each message, from the cluster's database."""
    clock = FakeClock(SystemClock().now())  # the daemon runs on real time: start from it
    pg = PgDatabase(PostgresConfig(dsn=pg_dsn, tls="disable", pool_size=2))
    await pg.open()
    try:
        await pg_setup(pg, clock)
        setup = await pg_backend(pg, clock)
        await setup.people({f"p{i:02d}@dest.test": None for i in range(19)}
                           | {"off@dest.test": "unsub"})  # fmt: skip
        await setup.segments.save("alice", "all", {"in_list": "news"}, create=True)
        (tmp_path / "pgpass").write_text(pg_server.password + "\n")
        async with SinkGroup(["127.0.0.2"]) as sinks:
            sinks["127.0.0.2"].rcpt_replies["p00@dest.test"] = "550 5.1.1 no such user"
            cfg = TestConfig(tmp_path, tls=False)
            cfg.set("storage", backend="postgresql", dsn=pg_dsn.replace(f":{pg_server.password}@", "@"),
                    password_file=str(tmp_path / "pgpass"), tls="disable", pool_size=4)  # fmt: skip
            cfg.set("delivery", relay_host=f"127.0.0.2:{sinks.port}", tls="none")
            cfg.set("shaping", poll_interval="20ms")
            cfg.set("admin", listen=f"127.0.0.1:{free_port()}")
            daemon = Daemon(cfg)
            await asyncio.to_thread(daemon.start)
            try:
                for cmd in (("create", "launch", "--template", "digest", "--from",
                             "news@example.com", "--segment", "all"), ("start", "launch")):  # fmt: skip
                    out = await asyncio.to_thread(daemon.cli, "campaigns", *cmd, "--user", "alice")
                    assert out.returncode == 0, out.stderr  # the daemon's feeder picks it up
                sink = sinks["127.0.0.2"]
                await wait_for(lambda: len(sink.messages) >= 18, 30)

                async def report() -> Any:
                    return (await setup.stats.campaign("alice", "launch")).as_json()["total"]

                total = await eventually(
                    report, lambda t: t["delivered"] == 18 and t["bounced"]["total"] == 1, 30
                )
                token = (await asyncio.to_thread(
                    daemon.cli, "admin", "token", "create", "--name", "ops")).stdout.strip()  # fmt: skip
                host, port = cfg.address("admin", "listen")
                h = {"Authorization": f"Bearer {token}"}
                url = f"http://{host}:{port}/api/v1/campaigns/launch/stats?user=alice"
                async with aiohttp.ClientSession() as http, http.get(url, headers=h) as r:
                    assert r.status == 200, await r.text()
                    api = (await r.json())["total"]
                out = await asyncio.to_thread(
                    daemon.cli, "stats", "--campaign", "launch", "--user", "alice", "--json")  # fmt: skip
                assert out.returncode == 0, out.stderr
                cli_total = json.loads(out.stdout)["total"]
            finally:
                code = await asyncio.to_thread(daemon.stop)
            assert code == 0, daemon.log()[-3000:]
        # (the sink also gets the bounce notice for p00@ sent to the campaign's from)
        got = sorted(a for m in sink.messages for a in m.rcpt_tos if a.endswith("@dest.test"))
        assert got == [f"p{i:02d}@dest.test" for i in range(1, 19)]  # each once, none to off@
        assert total == api == cli_total
        assert (total["audience"], total["queued"], total["skipped"]) == (
            20,
            19,
            {"unsubscribed": 1},
        )
        assert (total["delivered"], total["bounced"]["hard"], total["pending"]) == (18, 1, 0)
        assert (await setup.store.get("alice", "launch")).status == "done"
        show = json.loads(
            (await asyncio.to_thread(daemon.cli, "campaigns", "show", "launch", "--user", "alice")).stdout
        )  # fmt: skip
        assert (show["status"], [(r["audience"], r["queued"]) for r in show["runs"]]) == (
            "done", [(20, 19)])  # fmt: skip
    finally:
        await pg.close()


async def test_migrate_copies_a_run_midway_and_a_postgresql_node_finishes_it(
    tmp_path: Path,
    pg_dsn: str,  # noqa: F811
) -> None:
    """``storage migrate``: campaigns, runs and snapshot rows copied and verified; the run
    the SQLite daemon had half fed is finished by a node, nothing sent twice."""
    clock = FakeClock()
    db = Database(tmp_path / "mta.db")
    await db.open()
    try:
        lite = await sqlite_backend(db, clock)
        await lite.people({f"u{i:03d}@example.org": None for i in range(120)})
        c = await lite.store.act(await lite.create("half"), "start")
        assert await lite.feeder.tick()
    finally:
        await db.close()
    pg = PgDatabase(PostgresConfig(dsn=pg_dsn, tls="disable", pool_size=4))
    await pg.open()
    try:
        copied = {t.table: t.rows for t in await copy_sqlite(tmp_path / "mta.db", pg)}
        assert (copied["campaigns"], copied["campaign_runs"]) == (1, 1)
        assert copied["campaign_recipients"] == 120
        node = await pg_backend(pg, clock)
        [run] = await node.store.runs(c.id)
        assert (run.audience, run.queued, run.status) == (120, 50, "running")
        assert await node.store.counts(run.id) == {"queued": 50, "pending": 70}
        await node.drain()
        addrs = [a for a, _, _ in await node.queued("half")]
        assert len(addrs) == len(set(addrs)) == 120
        assert (await node.store.get("alice", "half")).status == "done"
        second = await node.store.act(await node.create("after"), "start")  # ids continue
        assert second.id == c.id + 1
    finally:
        await pg.close()
