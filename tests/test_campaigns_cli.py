"""``mtaserver campaigns`` as the operator runs it (a subprocess on a real database): a
campaign to a list is created as a draft, listed, started (scheduled at ``--at``), paused,
resumed and cancelled, each status read back through the CLI and through CampaignStore; an
action that does not apply, an unknown list, segment or template, a bad cron field or local
time are exit 2 with one line naming the thing to fix; a local-time campaign and a failed
one's reason are shown."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from mtaserver.auth import hash_password
from mtaserver.contacts import ContactInput
from mtaserver.storage.sqlite.campaigns import Campaign, CampaignStore
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.templates import TemplateStore
from mtaserver.storage.sqlite.users import UserStore
from tests.support.cli import fails, ok, run_as
from tests.support.daemon import TestConfig

pytestmark = pytest.mark.pg_pending("sqlite-reads")

USER = "alice@example.com"
HASH = hash_password("correct horse battery", n=2**10)
AT = "2030-01-07T09:00:00+01:00"  # 08:00 UTC
AT_UNIX = 1894003200.0


def run(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return run_as(USER, config, "campaigns", *argv)


async def _seed(path: Path) -> None:
    db = Database(path)
    await db.open()
    try:
        await UserStore(db).add(USER, HASH, ["example.com"])
        contacts = ContactStore(db)
        await contacts.upsert(USER, ContactInput("ann@example.org", "{}"))
        await contacts.create_list(USER, "news")
        await contacts.add_members(USER, "news", ["ann@example.org"])
        for name in ("promo", "digest"):
            await TemplateStore(db).put(name, "Hello", None, "Hello there")
    finally:
        await db.close()


def _stored(path: Path, name: str) -> Campaign | None:
    async def read() -> Campaign | None:
        db = Database(path)
        await db.open()
        try:
            return await CampaignStore(db).get(USER, name)
        finally:
            await db.close()

    return asyncio.run(read())


@pytest.fixture
def config(tmp_path: Path) -> tuple[Path, Path]:
    cfg = TestConfig(tmp_path, tls=False)
    cfg.write()
    cfg.database.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(_seed(cfg.database))
    return cfg.path, cfg.database


def test_create_list_start_pause_resume_cancel(config: tuple[Path, Path]) -> None:
    path, db = config
    out = run(path, "create", "jan", "--template", "promo", "--from", "News@Example.com",
              "--list", "news", "--at", AT)  # fmt: skip
    assert ok(out).startswith("created campaign jan (draft")
    fails(run(path, "create", "jan", "--template", "promo", "--from", "news@example.com",
              "--list", "news"), "jan", "exists")  # fmt: skip

    assert ok(run(path, "list")).splitlines() == ["jan\tdraft\tlist:news\t-"]
    shown = json.loads(ok(run(path, "show", "jan")))
    assert shown["status"] == "draft" and shown["list"] == "news" and shown["runs"] == []
    assert shown["from_email"] == "news@example.com" and shown["send_at"] == AT_UNIX

    fails(run(path, "pause", "jan"), "draft", "pause")
    assert ok(run(path, "start", "jan")).startswith("campaign jan: scheduled")
    c = _stored(db, "jan")
    assert c is not None and (c.status, c.next_run_at) == ("scheduled", AT_UNIX)
    fails(run(path, "start", "jan"), "scheduled")

    assert ok(run(path, "pause", "jan")).startswith("campaign jan: paused")
    assert ok(run(path, "list")).splitlines() == [f"jan\tpaused\tlist:news\t{round(AT_UNIX)}"]
    assert ok(run(path, "resume", "jan")).startswith("campaign jan: scheduled")
    c = _stored(db, "jan")
    assert c is not None and (c.status, c.next_run_at) == ("scheduled", AT_UNIX)

    assert ok(run(path, "cancel", "jan")).startswith("campaign jan: cancelled")
    assert ok(run(path, "list")).splitlines() == ["jan\tcancelled\tlist:news\t-"]
    fails(run(path, "resume", "jan"), "cancelled")
    fails(run(path, "show", "nope"), "nope")


def test_cron_and_bad_input(config: tuple[Path, Path]) -> None:
    path, db = config
    ok(run(path, "create", "weekly", "--template", "digest", "--from", "news@example.com",
           "--list", "news", "--cron", "0 9 * * MON", "--tz", "Europe/Berlin"))  # fmt: skip
    ok(run(path, "start", "weekly"))
    c = _stored(db, "weekly")
    assert c is not None and c.status == "scheduled" and c.next_run_at is not None
    assert c.next_run_at % 3600 == 0  # 09:00 Berlin is a whole UTC hour

    base = ("--template", "promo", "--from", "news@example.com")
    fails(run(path, "create", "x", *base, "--list", "nope"), "nope")
    fails(run(path, "create", "x", "--template", "nope", "--from", "a@example.com", "--list",
              "news"), "--template", "nope")  # fmt: skip
    fails(run(path, "create", "x", *base, "--segment", "nope"), "nope")
    fails(run(path, "create", "x", *base, "--list", "news", "--cron", "61 * * * *"), "minute")
    fails(run(path, "create", "x", *base, "--list", "news", "--cron", "@daily", "--tz", "Mars/X"),
          "Mars/X")  # fmt: skip
    fails(run(path, "create", "x", *base, "--list", "news", "--at", "tomorrow"), "send_at")
    fails(run(path, "create", "bad name", *base, "--list", "news"), "name")
    fails(run(path, "create", "x", *base, "--list", "news", "--local-time", "9am", "--date",
              "2030-01-07"), "local_time")  # fmt: skip
    fails(run(path, "create", "x", *base, "--list", "news", "--local"), "local", "cron")
    assert _stored(db, "x") is None

    ok(run(path, "create", "nine", *base, "--list", "news", "--local-time", "09:00", "--date",
           "2030-01-07", "--tz", "Europe/Berlin"))  # fmt: skip
    asyncio.run(_fail(db, "weekly", "segment: no segment 'fans'"))
    shown = json.loads(ok(run(path, "show", "nine")))
    assert (shown["schedule"], shown["local_at"], shown["tz"], shown["failure"]) == (
        "local", "2030-01-07T09:00", "Europe/Berlin", None)  # fmt: skip
    shown = json.loads(ok(run(path, "show", "weekly")))  # a failed campaign says why
    assert (shown["status"], shown["failure"]) == ("failed", "segment: no segment 'fans'")


async def _fail(path: Path, name: str, reason: str) -> None:
    """What the daemon's feeder does when a run cannot start."""
    db = Database(path)
    await db.open()
    try:
        store = CampaignStore(db)
        c = await store.get(USER, name)
        assert c is not None and await store.fail(c.id, reason)
    finally:
        await db.close()
