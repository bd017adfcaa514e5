"""Privacy export and erase on both backends, through :mod:`mtaserver.privacy` and each
backend's store: the same mail, events, suppressions, contact (with a confirmed list
membership) and journey rows give the same export and the same erase result; afterwards
nothing in the database names the address, its suppression is kept hashed and its consent
as keyed-hash proofs that an export of the same address finds again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mtaserver import privacy
from mtaserver.auth import hash_password
from mtaserver.config.storage import PostgresConfig
from mtaserver.contacts import ContactInput
from mtaserver.journeys import EventInput, trigger_from_json
from mtaserver.model import Event, PreparedMessage, PreparedRecipient
from mtaserver.storage.postgres.contacts import PgContactStore
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.journeys import PgJourneyStore
from mtaserver.storage.postgres.privacy import PgPrivacy
from mtaserver.storage.postgres.queue import PgQueue
from mtaserver.storage.postgres.suppressions import PgSuppressionStore
from mtaserver.storage.postgres.users import PgUserStore
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.journeys import JourneyStore
from mtaserver.storage.sqlite.privacy import SqlitePrivacy
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.users import UserStore
from tests.pg import pg_dsn, pg_server  # noqa: F401
from tests.support.clock import FakeClock

T0 = 1_800_000_000.0
ADDR = "gail.dpr@x.test"
TABLES = ("recipients", "messages", "events", "suppressions", "contacts", "contact_events")


@dataclass
class B:
    backend: str
    clock: FakeClock
    queue: Any
    contacts: Any
    journeys: Any
    suppressions: Any
    privacy: Any
    dsn: str = ""
    path: Path | None = None

    async def dump(self) -> str:
        """Every row of the tables that held the address, as text."""
        out = []
        if self.backend == "sqlite":
            import sqlite3

            conn = sqlite3.connect(self.path or "")
            try:
                for t in TABLES:
                    out += [repr(r) for r in conn.execute(f"SELECT * FROM {t}")]
            finally:
                conn.close()
            return "\n".join(out)
        c = await asyncpg.connect(self.dsn)
        try:
            for t in TABLES:
                out += [repr(tuple(r)) for r in await c.fetch(f"SELECT * FROM {t}")]
        finally:
            await c.close()
        return "\n".join(out)


async def _fill(b: B, users: Any) -> B:
    await users.add("app", hash_password("a long password", n=2**10), ["example.com"])
    await b.contacts.upsert("app", ContactInput(ADDR, '{"name":"Gail Dpr"}'))
    await b.contacts.upsert("app", ContactInput("other@x.test", "{}"))
    await b.contacts.create_list("app", "news", double_opt_in=True)
    await b.contacts.add_members("app", "news", [ADDR])
    assert await b.contacts.confirm_member("app", "news", ADDR, "192.0.2.7")
    to_them = PreparedMessage(
        queue_id=new_queue_id(T0), sender="app@example.com",
        recipients=(PreparedRecipient(ADDR), PreparedRecipient("other@x.test")),
        data=f"To: {ADDR}, other@x.test\r\nSubject: hi\r\n\r\nhello Gail\r\n".encode(),
        user="app", client_ip="127.0.0.1", received_at=T0,
    )  # fmt: skip
    from_them = PreparedMessage(
        queue_id=new_queue_id(T0 + 1), sender=ADDR,
        recipients=(PreparedRecipient("other@x.test"),), data=b"Subject: re\r\n\r\nre\r\n",
        user="app", client_ip="127.0.0.1", received_at=T0 + 1,
    )  # fmt: skip
    await b.queue.enqueue_many([to_them, from_them], [
        Event(type="open", at=T0, queue_id=to_them.queue_id, recipient=ADDR,
              data=(("user_agent", "Mail/1.0"), ("client_ip", "192.0.2.7"))),
        Event(type="note", at=T0, data=(("text", f"wrote to {ADDR} today"),)),
        Event(type="note", at=T0, data=(("text", "jim" + ADDR),)),  # another address
    ])  # fmt: skip
    await b.suppressions.add(ADDR, "complaint", source="fbl")
    await b.journeys.put_trigger("app", trigger_from_json(
        {"event": "signup", "steps": [{"wait": "1d", "template": "t"}], "from": "a@example.com"},
        "welcome"))  # fmt: skip
    await b.journeys.record_events("app", [EventInput(ADDR, "signup", '{"plan":"pro"}', T0)])
    return b


@pytest.fixture(params=["sqlite", "postgresql"])
async def b(request: Any, tmp_path: Path) -> AsyncIterator[B]:
    clock = FakeClock(T0)
    if request.param == "sqlite":
        db = Database(tmp_path / "mta.db")
        await db.open()
        try:
            yield await _fill(B(
                "sqlite", clock, Spool(db, clock=clock), ContactStore(db, clock),
                JourneyStore(db, clock), SuppressionStore(db, clock), SqlitePrivacy(db),
                path=db.path,
            ), UserStore(db, clock))  # fmt: skip
        finally:
            await db.close()
        return
    dsn = request.getfixturevalue("pg_dsn")
    pg = PgDatabase(PostgresConfig(dsn=dsn, tls="disable", pool_size=4))
    await pg.open()
    try:
        yield await _fill(B(
            "postgresql", clock, PgQueue(pg, "node-a", clock=clock), PgContactStore(pg, clock),
            PgJourneyStore(pg, clock), PgSuppressionStore(pg, clock), PgPrivacy(pg), dsn=dsn,
        ), PgUserStore(pg, clock))  # fmt: skip
    finally:
        await pg.close()


def _shape(data: dict[str, Any]) -> dict[str, Any]:
    """The export, without what differs by nature (queue ids, times of day, row ids)."""
    return {
        "contacts": [(c["owner"], c["attributes"], [(m["name"], m["status"]) for m in c["lists"]])
                     for c in data["contacts"]],
        "received": sorted((r["address"], r["state"], r["body"]) for r in data["received"]),
        "sent": [(s["sender"], s["recipients"], s["body"]) for s in data["sent"]],
        "events": sorted((e["type"], e["recipient"]) for e in data["events"]),
        "suppressions": [(s["scope"], s["reason"]) for s in data["suppressions"]],
        "proofs": [(p["owner"], p["list_name"], p["status"], p["source"])
                   for p in data["consent_proofs"]],
        "journeys": {o: ([e["event"] for e in d["events"]],
                         [s["state"] for s in d["trigger_steps"]])
                     for o, d in data["contact_data"]["journeys"].items()},
    }  # fmt: skip


async def test_export_then_erase_the_same_on_both_backends(b: B) -> None:
    before = await privacy.export(b.privacy, ADDR.upper(), clock=b.clock)
    assert _shape(before) == {
        "contacts": [("app", {"name": "Gail Dpr"}, [("news", "subscribed")])],
        "received": [(ADDR, "queued", f"To: {ADDR}, other@x.test\r\nSubject: hi\r\n\r\n"
                                      "hello Gail\r\n")],
        "sent": [(ADDR, 1, "Subject: re\r\n\r\nre\r\n")],
        "events": [("accepted", None), ("note", None), ("open", ADDR)],
        "suppressions": [("", "complaint")],
        "proofs": [],
        "journeys": {"app": (["signup"], ["pending"])},
    }  # fmt: skip
    result = (await privacy.erase(b.privacy, ADDR, wait_leased=0, clock=b.clock)).as_dict()
    token = result.pop("address_token")
    assert token.endswith("@erased.invalid")
    result.pop("checkpointed")
    assert result == {
        "recipients": 1, "cancelled": 3, "bodies_removed": 2, "messages": 1, "events": 3,
        "suppressions_hashed": 1, "contacts": 1, "consent_proofs": 2, "contact_data": 0,
        "soft_bounces": 0, "other": {}, "user_account": False, "in_flight": 0,
    }  # fmt: skip
    rows = await b.dump()
    assert "jim" + ADDR in rows  # a longer address is not this one
    rows = rows.replace("jim" + ADDR, "")
    assert ADDR not in rows.lower() and "Gail Dpr" not in rows and "Mail/1.0" not in rows
    assert await b.suppressions.check(ADDR, "example.com") is not None  # still suppressed
    after = await privacy.export(b.privacy, ADDR, clock=b.clock)
    assert _shape(after) == {
        "contacts": [], "received": [], "sent": [], "events": [],
        "suppressions": [("", "complaint")],
        "proofs": [("app", None, "subscribed", "api"), ("app", "news", "subscribed", "confirm")],
        "journeys": {},
    }  # fmt: skip
    again = (await privacy.erase(b.privacy, ADDR, wait_leased=0, clock=b.clock)).as_dict()
    assert (again["recipients"], again["contacts"], again["events"]) == (0, 0, 0)  # idempotent


async def test_a_suppression_with_consent_unsubscribes_the_contact(b: B) -> None:
    """The preferences page's unsubscribe-all and bounces: the entry and the contact's
    consent change commit together, on both backends."""
    await b.suppressions.add("other@x.test", "unsubscribe", scope="example.com",
                             source="preferences", consent="unsubscribe")  # fmt: skip
    got = await b.contacts.get("app", "other@x.test")
    assert (got.consent_status, got.consent_source) == ("unsubscribed", "unsubscribe")
    await b.suppressions.add("other@x.test", "x", scope="elsewhere.test", consent="complaint")
    assert (await b.contacts.get("app", "other@x.test")).consent_source == "unsubscribe"
    assert (await b.contacts.get("app", ADDR)).consent_status == "subscribed"
