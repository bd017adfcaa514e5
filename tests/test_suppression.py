"""Suppression list: scope, expiry, the policy through the store, the soft-bounce counter;
the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtaserver.config.inbound import DEFAULT_SUPPRESSION
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from tests.support.bounce_corpus import CORPUS
from tests.support.clock import FakeClock

DAY = 86400.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db: Database, clock: FakeClock) -> SuppressionStore:
    return SuppressionStore(db, clock)


async def test_global_entry_applies_to_every_sender(store: SuppressionStore) -> None:
    assert await store.check("a@example.org", "shop.example") is None
    await store.add("A@Example.org", "unknown-recipient", source="async", queue_id="Q1")
    for sender in ("shop.example", "news.example", None):
        got = await store.check("<a@EXAMPLE.org>", sender)
        assert got is not None and got.reason == "unknown-recipient" and got.scope is None
        assert got.queue_id == "Q1"


async def test_sender_scoped_entry_applies_to_that_sender_only(store: SuppressionStore) -> None:
    await store.add("a@example.org", "complaint", scope="News.Example", source="complaint")
    assert (await store.check("a@example.org", "news.example")) is not None
    assert await store.check("a@example.org", "shop.example") is None
    assert await store.check("a@example.org", None) is None


async def test_expiry_and_removal(store: SuppressionStore, clock: FakeClock) -> None:
    await store.add("t@example.org", "manual", expires_at=clock.now() + DAY)
    assert await store.check("t@example.org", None) is not None
    clock.advance(DAY + 1)
    assert await store.check("t@example.org", None) is None
    assert await store.list() == []
    assert len(await store.list(include_expired=True)) == 1
    assert await store.purge_expired() == 1
    await store.add("r@example.org", "manual")
    await store.add("r@example.org", "complaint", scope="x.example")
    assert await store.remove("r@example.org", "x.example") == 1
    assert await store.check("r@example.org", "x.example") is not None  # global one stays
    assert await store.remove("r@example.org", all_scopes=True) == 1
    assert await store.check("r@example.org", "x.example") is None


async def test_permanent_entry_not_shortened_by_temporary(
    store: SuppressionStore, clock: FakeClock
) -> None:
    await store.add("p@example.org", "unknown-recipient")
    await store.add("p@example.org", "soft-bounces:mailbox-full", expires_at=clock.now() + DAY)
    clock.advance(2 * DAY)
    assert await store.check("p@example.org", None) is not None


async def test_policy_hard_complaint_ignore(store: SuppressionStore) -> None:
    hard = await store.apply("h@example.org", "unknown-recipient", sender_domain="s.example",
                             source="async")  # fmt: skip
    assert hard is not None and hard.scope is None and hard.expires_at is None
    comp = await store.apply("c@example.org", "complaint", sender_domain="s.example",
                             source="complaint")  # fmt: skip
    assert comp is not None and comp.scope == "s.example"
    unsub = await store.apply("u@example.org", "unsubscribe", sender_domain="s.example",
                              source="tracking")  # fmt: skip
    assert unsub is not None and unsub.scope == "s.example" and unsub.reason == "unsubscribe"
    assert hard.reason == "userunknown" and comp.reason == "feedback"
    for category in ("reputation-blocked", "rate-limited", "spam-blocked", "policy"):
        assert (
            await store.apply("g@example.org", category, sender_domain=None, source="sync") is None
        )
    assert await store.check("g@example.org", None) is None


async def test_soft_bounces_are_counted_and_never_suppress(
    store: SuppressionStore, clock: FakeClock
) -> None:
    """The removed threshold would have suppressed after 5: mailbox full is not a dead
    address however often it happens. Counts older than the window are dropped."""
    for _ in range(20):
        assert await store.apply("f@example.org", "mailbox-full", sender_domain=None,
                                 source="async") is None  # fmt: skip
        clock.advance(3600)
    assert await store.check("f@example.org", None) is None
    assert len(await store.soft_bounces("f@example.org")) == 20
    assert {r for _, r in await store.soft_bounces("f@example.org")} == {"mailboxfull"}
    clock.advance(DEFAULT_SUPPRESSION.soft_bounce_window)
    assert await store.apply("f@example.org", "spamdetected", sender_domain=None,
                             source="sync") is None  # fmt: skip
    assert [r for _, r in await store.soft_bounces("f@example.org")] == ["spamdetected"]


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "mta.toml"
    cfg.write_text(
        f'[server]\ndata_dir = "{tmp_path}"\nhostname = "mx.test.example"\n'
        '[inbound]\nbounce_domain = "bounces.example.com"\n'
        '[inbound.suppression.policy]\nmailbox-full = "ignore"\n'
    )
    return cfg


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mtaserver", *args], input=stdin, capture_output=True, timeout=60
    )


def test_suppression_cli(tmp_path: Path) -> None:
    cfg = str(_config(tmp_path))
    r = _cli("suppression", "check", "-c", cfg, "x@example.org")
    assert r.returncode == 0 and b"not suppressed" in r.stdout
    r = _cli("suppression", "add", "-c", cfg, "X@example.org", "--reason", "manual", "--for", "30d")
    assert r.returncode == 0, r.stderr
    r = _cli("suppression", "check", "-c", cfg, "x@example.org", "--sender-domain", "a.example")
    assert r.returncode == 1 and b"reason=manual" in r.stdout and b"scope=global" in r.stdout
    r = _cli("suppression", "list", "-c", cfg)
    assert r.stdout.count(b"\n") == 1 and b"x@example.org" in r.stdout
    r = _cli("suppression", "remove", "-c", cfg, "x@example.org")
    assert r.returncode == 0 and b"removed 1 entry" in r.stdout
    r = _cli("suppression", "add", "-c", cfg, "not-an-address")
    assert (
        r.returncode == 2 and b"not an email address" in r.stderr and b"Traceback" not in r.stderr
    )
    r = _cli("suppression", "add", "-c", cfg, "a@b.example", "--for", "soon")
    assert r.returncode == 2 and b"--for" in r.stderr


def test_dsn_parse_cli(tmp_path: Path) -> None:
    r = _cli("dsn", "parse", str(CORPUS / "flufl/yahoo_10.txt"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["recipient"] for x in rows] == ["userx@example.com", "usery@example.com",
                                              "userz@example.com"]  # fmt: skip
    assert {"recipient", "status", "action", "kind", "category", "diagnostic", "remote_mta"} <= set(
        rows[0]
    )
    assert [x["kind"] for x in rows] == ["hard", "hard", "hard"]
    # stdin, and a non-bounce: nothing printed, exit 0
    r = _cli("dsn", "parse", stdin=(CORPUS / "sisimai/rfc3834-03.eml").read_bytes())
    assert r.returncode == 0 and r.stdout == b""
    r = _cli("dsn", "parse", "-", stdin=b"\x00\xff garbage")
    assert r.returncode == 0 and r.stdout == b""
    r = _cli("dsn", "parse", str(tmp_path / "missing.eml"))
    assert r.returncode == 2 and b"cannot read" in r.stderr
