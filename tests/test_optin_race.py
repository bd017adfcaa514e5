"""Two nodes' double opt-in mailers on one PostgreSQL database race the same confirmations.

Node B reads the pending memberships, and while it builds their mails node A's whole pass
runs and queues them. B's enqueue then loses on the marks' unique key and rolls back: each
membership has one mail (A's), and B reports the lost race as ``optin_already_queued`` at
info — not ``optin_pass_failed`` at error, which stays for an enqueue that really failed
(here: B's database gone mid-pass).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from mtaserver.auth import hash_password
from mtaserver.config.storage import PostgresConfig
from mtaserver.contacts import ContactInput
from mtaserver.model import PreparedMessage, Submission
from mtaserver.pipeline import Pipeline
from mtaserver.storage.postgres.contacts import PgContactStore
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.optin import PgOptInStore
from mtaserver.storage.postgres.queue import PgQueue
from mtaserver.storage.postgres.users import PgUserStore
from mtaserver.storage.sqlite.queue import new_queue_id
from mtaserver.tracking.consent_tokens import ConsentTokens
from mtaserver.tracking.optin import OptInMailer
from mtaserver.tracking.tokens import TokenCodec
from tests.pg import pg_dsn, pg_server  # noqa: F401
from tests.support.clock import FakeClock
from tests.support.mxsink import wait_for

T0 = 1_800_000_000.0
SECRET = b"0123456789abcdef0123456789abcdef"
MEMBERS = ("ann@example.org", "bo@example.org", "cy@example.org")


class Preparer:
    """A node's real pipeline; ``before`` runs once, just before its first message is made
    (after the node read what is pending): the other node's pass, or a lost database."""

    def __init__(self, before: Callable[[], Awaitable[object]] | None = None) -> None:
        self.pipeline = Pipeline(spool=None, new_queue_id=new_queue_id, hostname="mta.test")  # type: ignore[arg-type]
        self.before = before

    async def prepare(self, sub: Submission, queue_id: str) -> PreparedMessage:
        if self.before is not None:
            before, self.before = self.before, None
            await before()
        return await self.pipeline.prepare(sub, queue_id)


def mailer(db: PgDatabase, node: str, clock: FakeClock, preparer: Preparer) -> OptInMailer:
    store: Any = PgOptInStore(db)
    return OptInMailer(
        store, ConsentTokens(TokenCodec((SECRET,))), "http://127.0.0.1:9", PgUserStore(db),
        lambda: preparer, PgQueue(db, node, clock=clock), new_queue_id, clock,
    )  # fmt: skip


@pytest.fixture
async def nodes(pg_dsn: str) -> AsyncIterator[tuple[PgDatabase, PgDatabase]]:  # noqa: F811
    """Two nodes' pools on one database with alice's double opt-in list of three."""
    dbs = [PgDatabase(PostgresConfig(dsn=pg_dsn, tls="disable", pool_size=2)) for _ in "ab"]
    for db in dbs:
        await db.open()
    try:
        clock = FakeClock(T0)
        await PgUserStore(dbs[0], clock).add("alice", hash_password("pw", n=2**10), ["example.com"])
        for address in MEMBERS:
            await PgContactStore(dbs[0], clock).upsert(
                "alice", ContactInput(address, "{}", "subscribed")
            )
        conn = await asyncpg.connect(pg_dsn)
        try:
            list_id = await conn.fetchval(
                "INSERT INTO lists (owner, name, double_opt_in, created_at) "
                "VALUES ('alice', 'news', 1, $1) RETURNING id", T0,
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO list_members (list_id, contact_id, status, added_at) "
                "SELECT $1, id, 'unconfirmed', $2 FROM contacts", list_id, T0,
            )  # fmt: skip
        finally:
            await conn.close()
        yield dbs[0], dbs[1]
    finally:
        for db in dbs:
            await db.close()


async def _rows(db: PgDatabase, sql: str) -> list[tuple[Any, ...]]:
    async with db.connection() as conn:
        return [tuple(r) for r in await conn.fetch(sql)]


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "mtaserver.optin" and r.levelno == level
    ]


async def test_the_node_that_loses_the_race_logs_info_and_nothing_is_sent_twice(
    nodes: tuple[PgDatabase, PgDatabase], caplog: pytest.LogCaptureFixture
) -> None:
    a_db, b_db = nodes
    clock = FakeClock(T0)
    a = mailer(a_db, "node-a", clock, Preparer())
    b = mailer(b_db, "node-b", clock, Preparer(before=a.pass_once))
    with caplog.at_level(logging.DEBUG, logger="mtaserver"):
        assert await b.pass_once() == 0  # lost, read again: nothing left; no exception
    assert (a.sent, b.sent) == (len(MEMBERS), 0)
    queued = await _rows(a_db, "SELECT queue_id FROM optin_sent ORDER BY queue_id")
    messages = await _rows(a_db, "SELECT id FROM messages ORDER BY id")
    assert messages == queued and len(messages) == len(MEMBERS)  # A's mails only, once each
    assert any(
        "event=optin_already_queued memberships=3" in m for m in _lines(caplog, logging.INFO)
    )
    assert _lines(caplog, logging.ERROR) == [] and _lines(caplog, logging.WARNING) == []


async def test_a_real_failure_of_the_pass_is_still_an_error(
    nodes: tuple[PgDatabase, PgDatabase], caplog: pytest.LogCaptureFixture
) -> None:
    _, b_db = nodes
    b = mailer(b_db, "node-b", FakeClock(T0), Preparer(before=b_db.close))
    with caplog.at_level(logging.DEBUG, logger="mtaserver"):
        task = asyncio.create_task(b.run())
        try:
            await wait_for(lambda: _lines(caplog, logging.ERROR) != [], 10)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    (error,) = _lines(caplog, logging.ERROR)
    assert error.startswith("event=optin_pass_failed error=")
    assert not any("optin_already_queued" in m for m in _lines(caplog, logging.INFO))
    assert b.sent == 0
