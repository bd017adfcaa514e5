"""``mtaserver campaigns`` as the operator runs it (a subprocess on a real database, either
backend: seeded and read back through the owners, ``tests.support.daemon.open_stores``): a
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
from mtaserver.storage.sqlite.campaigns import Campaign
from tests.support.cli import fails, ok, run_as
from tests.support.daemon import TestConfig, open_stores

USER = "alice@example.com"
HASH = hash_password("correct horse battery", n=2**10)
AT = "2030-01-07T09:00:00+01:00"  # 08:00 UTC
AT_UNIX = 1894003200.0


def run(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return run_as(USER, config, "campaigns", *argv)


async def _seed(cfg: TestConfig) -> None:
    async with open_stores(cfg) as s:
        await s.users.add(USER, HASH, ["example.com"])
        await s.contacts.upsert(USER, ContactInput("ann@example.org", "{}"))
        await s.contacts.create_list(USER, "news")
        await s.contacts.add_members(USER, "news", ["ann@example.org"])
        for name in ("promo", "digest"):
            await s.templates.put(name, "Hello", None, "Hello there")


def _stored(cfg: TestConfig, name: str) -> Campaign | None:
    async def read() -> Campaign | None:
        async with open_stores(cfg) as s:
            found: Campaign | None = await s.campaigns.get(USER, name)
            return found

    return asyncio.run(read())


@pytest.fixture
def config(tmp_path: Path) -> tuple[Path, TestConfig]:
    cfg = TestConfig(tmp_path, tls=False)
    cfg.write()
    asyncio.run(_seed(cfg))
    return cfg.path, cfg


def test_create_list_start_pause_resume_cancel(config: tuple[Path, TestConfig]) -> None:
    path, cfg = config
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
    c = _stored(cfg, "jan")
    assert c is not None and (c.status, c.next_run_at) == ("scheduled", AT_UNIX)
    fails(run(path, "start", "jan"), "scheduled")

    assert ok(run(path, "pause", "jan")).startswith("campaign jan: paused")
    assert ok(run(path, "list")).splitlines() == [f"jan\tpaused\tlist:news\t{round(AT_UNIX)}"]
    assert ok(run(path, "resume", "jan")).startswith("campaign jan: scheduled")
    c = _stored(cfg, "jan")
    assert c is not None and (c.status, c.next_run_at) == ("scheduled", AT_UNIX)

    assert ok(run(path, "cancel", "jan")).startswith("campaign jan: cancelled")
    assert ok(run(path, "list")).splitlines() == ["jan\tcancelled\tlist:news\t-"]
    fails(run(path, "resume", "jan"), "cancelled")
    fails(run(path, "show", "nope"), "nope")


def test_cron_and_bad_input(config: tuple[Path, TestConfig]) -> None:
    path, cfg = config
    ok(run(path, "create", "weekly", "--template", "digest", "--from", "news@example.com",
           "--list", "news", "--cron", "0 9 * * MON", "--tz", "Europe/Berlin"))  # fmt: skip
    ok(run(path, "start", "weekly"))
    c = _stored(cfg, "weekly")
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
    assert _stored(cfg, "x") is None

    ok(run(path, "create", "nine", *base, "--list", "news", "--local-time", "09:00", "--date",
           "2030-01-07", "--tz", "Europe/Berlin"))  # fmt: skip
    asyncio.run(_fail(cfg, "weekly", "segment: no segment 'fans'"))
    shown = json.loads(ok(run(path, "show", "nine")))
    assert (shown["schedule"], shown["local_at"], shown["tz"], shown["failure"]) == (
        "local", "2030-01-07T09:00", "Europe/Berlin", None)  # fmt: skip
    shown = json.loads(ok(run(path, "show", "weekly")))  # a failed campaign says why
    assert (shown["status"], shown["failure"]) == ("failed", "segment: no segment 'fans'")


async def _fail(cfg: TestConfig, name: str, reason: str) -> None:
    """What the daemon's feeder does when a run cannot start."""
    async with open_stores(cfg) as s:
        c = await s.campaigns.get(USER, name)
        assert c is not None and await s.campaigns.fail(c.id, reason)
