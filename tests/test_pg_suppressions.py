"""Suppressions and users shared by every node: what node A records, node B sees at once."""

from __future__ import annotations

import pytest

from mtaserver.auth import UserError
from mtaserver.config.storage import PostgresConfig
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.suppressions import PgSuppressionStore
from mtaserver.storage.postgres.users import PgUserStore
from tests.pg import pg_dsn, pg_server  # noqa: F401
from tests.support.clock import FakeClock


async def two_nodes(dsn: str) -> tuple[PgDatabase, PgDatabase]:
    a = PgDatabase(PostgresConfig(dsn=dsn, tls="disable", pool_size=2))
    b = PgDatabase(PostgresConfig(dsn=dsn, tls="disable", pool_size=2))
    await a.open()
    await b.open()
    return a, b


async def test_a_hard_bounce_on_node_a_suppresses_on_node_b(pg_dsn: str) -> None:  # noqa: F811
    a, b = await two_nodes(pg_dsn)
    clock = FakeClock(1000.0)
    try:
        sa, sb = PgSuppressionStore(a, clock), PgSuppressionStore(b, clock)
        assert await sb.check("Gone@X.example", "shop.example") is None
        made = await sa.apply(
            "Gone@X.example", "userunknown", sender_domain="shop.example", source="sync",
            reply="550 5.1.1 no such user", queue_id="Q1",
        )  # fmt: skip
        assert made is not None and made.scope is None  # an unknown user: global
        seen = await sb.check("gone@x.example", "other.example")
        assert seen is not None and seen.reason == "userunknown" and seen.queue_id == "Q1"
        assert [s.address for s in await sb.list()] == ["gone@x.example"]
        # A complaint is about one sender only; soft bounces are counted, never suppress.
        await sa.apply("c@x.example", "feedback", sender_domain="shop.example", source="complaint")
        assert await sb.check("c@x.example", "shop.example") is not None
        assert await sb.check("c@x.example", "other.example") is None
        assert (
            await sa.apply("f@x.example", "mailboxfull", sender_domain=None, source="async") is None
        )
        assert [r for _, r in await sb.soft_bounces("f@x.example")] == ["mailboxfull"]
        assert await sb.remove("gone@x.example", all_scopes=True) == 1
        assert await sa.check("gone@x.example", None) is None
    finally:
        await a.close()
        await b.close()


async def test_expired_entries_stop_suppressing_and_are_purged(pg_dsn: str) -> None:  # noqa: F811
    a, b = await two_nodes(pg_dsn)
    clock = FakeClock(1000.0)
    try:
        s = PgSuppressionStore(a, clock)
        await s.add("t@x.example", "manual", expires_at=1100.0)
        await s.add("p@x.example", "manual")
        await s.add("p@x.example", "manual", expires_at=1050.0)  # never shortens a permanent one
        clock.advance(200)
        assert await s.check("t@x.example", None) is None
        assert await s.check("p@x.example", None) is not None
        assert await s.purge_expired() == 1
        assert len(await s.list(include_expired=True)) == 1
    finally:
        await a.close()
        await b.close()


async def test_users_are_shared(pg_dsn: str) -> None:  # noqa: F811
    a, b = await two_nodes(pg_dsn)
    try:
        ua, ub = PgUserStore(a), PgUserStore(b)
        await ua.add("App", "scrypt$hash", ["Example.COM", "b.example"])
        with pytest.raises(UserError, match="already exists"):
            await ub.add("app", "x", ["example.com"])
        found = await ub.lookup("app")
        assert found is not None and found[1] == "scrypt$hash"
        assert found[0].owns("example.com") and found[0].owns("b.example")
        await ub.set_password("app", "scrypt$new")
        assert [u.name for u in await ua.list()] == ["app"]
        await ua.remove("app")
        assert await ub.lookup("app") is None
        with pytest.raises(UserError, match="no such user"):
            await ub.remove("app")
    finally:
        await a.close()
        await b.close()
