"""The suppression policy keyed by reason, end to end (issue 16).

A running daemon delivers through an aiosmtpd sink as its relay and receives bounces and
complaints on its inbound listener: a 5xx that refuses *this message* (a spam verdict at
DATA, a policy block in an async DSN) is counted and suppresses no one; a dead address is
suppressed for every sender with its reason; a complaint only for the sending domain
complained about. ``mtaserver suppression review`` then finds and lifts entries older
versions made for a reason that is not a dead address.
"""

from __future__ import annotations

import asyncio
import smtplib
import sqlite3
from pathlib import Path

import pytest

from mtaserver.classify import REASONS, default_classifier, kind_of
from mtaserver.config.inbound import DEFAULT_POLICY
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.suppressions import SuppressionStore, hash_entries
from mtaserver.suppression import COUNT, GLOBAL, SENDER, Suppression, decide, review
from tests.support.bounce_corpus import CORPUS
from tests.support.clock import FakeClock
from tests.support.daemon import Daemon, TestConfig, free_port, open_stores
from tests.support.mxsink import SinkGroup, SinkState, wait_for

BOUNCES = "bounces.test"
COMPLAINTS = f"fbl@{BOUNCES}"


# -- the pure policy ---------------------------------------------------------------------------
@pytest.mark.parametrize("reason", REASONS)
def test_decide_for_every_reason(reason: str) -> None:
    kind = kind_of(reason)
    d = decide(reason, kind, "Shop.Example.")
    assert d.reason == reason
    if kind == "hard":
        assert (d.action, d.scope, d.suppresses) == (GLOBAL, None, True)
    elif kind == "feedback":
        assert (d.action, d.scope, d.suppresses) == (SENDER, "shop.example", True)
    else:
        assert (d.action, d.suppresses) == (COUNT, False)


def test_only_dead_addresses_are_hard() -> None:
    hard = {r for r in REASONS if kind_of(r) == "hard"}
    assert hard == {"userunknown", "hostunknown", "hasmoved", "notaccept", "suspend"}
    assert {r for r in REASONS if kind_of(r) == "feedback"} == {"feedback"}


def test_complaint_without_a_sending_domain_is_counted_not_widened() -> None:
    assert decide("feedback", "feedback", None).action == COUNT
    assert decide("unsubscribe", "soft", "a.example").action == SENDER


def test_config_defaults_agree_with_the_reason_table() -> None:
    """config cannot import classify (layers): its default per category must be what
    decide() does for every reason of that category."""
    for name, info in default_classifier().reasons.items():
        action = decide(name, info.kind, "s.example").action
        assert DEFAULT_POLICY[info.category] == action, (name, info.category)


def _entry(reason: str, source: str = "sync", reply: str | None = None) -> Suppression:
    return Suppression("a@b.example", None, reason, source, 0.0, None, None, "Q", reply)


def test_review_judges_recorded_reply_and_label() -> None:
    spam = "550 5.7.1 message rejected as spam"
    assert review(_entry("userunknown")).keep  # type: ignore[union-attr]
    r = review(_entry("spamdetected", reply=spam))
    assert r is not None and not r.keep and r.basis == "recorded"
    r = review(_entry("unknown-recipient"), spam)  # before 0100: the event's text decides
    assert r is not None and (r.reason, r.basis, r.keep) == ("spamdetected", "reply", False)
    r = review(_entry("unknown-recipient"))  # no text anywhere: the old label
    assert r is not None and (r.reason, r.basis, r.keep) == ("userunknown", "label", True)
    r = review(_entry("soft-bounces:mailbox-full", source="async"))
    assert r is not None and (r.reason, r.keep) == ("mailboxfull", False)
    assert review(_entry("complaint", source="complaint")).keep  # type: ignore[union-attr]
    for source in ("manual", "privacy", "tracking"):
        assert review(_entry("spamdetected", source=source)) is None
    assert review(_entry("whatever, typed by hand", source="async")) is None


# -- storage -----------------------------------------------------------------------------------
async def test_entries_before_0100_read_with_no_reply(tmp_path: Path) -> None:
    """A database from before migration 0100: the column is added, old rows read with
    reply None, and the store writes the reason and reply of new ones."""
    path = tmp_path / "old.db"
    db = Database(path, owner=True)
    await db.open()
    await db.close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE suppressions DROP COLUMN reply")
    conn.execute("DELETE FROM schema_migrations WHERE name='0100_suppression_reason'")
    conn.execute(
        "INSERT INTO suppressions (address, scope, reason, source, created_at) "
        "VALUES ('old@x.example', '', 'unknown-recipient', 'delivery', 1.0)"
    )
    conn.commit()
    conn.close()
    db = Database(path, owner=True)
    await db.open()
    try:
        store = SuppressionStore(db, FakeClock())
        (old,) = await store.list()
        assert (old.reason, old.reply) == ("unknown-recipient", None)
        new = await store.apply("New@x.example", "userunknown", sender_domain="s.example",
                                source="sync", reply="550 5.1.1 no such user")  # fmt: skip
        assert new is not None and (new.reason, new.reply, new.scope) == (
            "userunknown", "550 5.1.1 no such user", None)  # fmt: skip
        assert (await store.check("new@x.example", "other.example")) == new
        lifted = await store.lift([old])
        assert lifted == [old] and await store.lift([old]) == []
    finally:
        await db.close()


async def test_policy_table_can_narrow(tmp_path: Path, db: Database) -> None:
    from dataclasses import replace

    from mtaserver.config.inbound import DEFAULT_SUPPRESSION

    policy = replace(
        DEFAULT_SUPPRESSION,
        policy=tuple({**DEFAULT_POLICY, "unknown-recipient": "count",
                      "spam-blocked": "ignore"}.items()),
    )  # fmt: skip
    store = SuppressionStore(db, FakeClock(), policy)
    assert await store.apply("u@x.example", "userunknown", sender_domain=None,
                             source="sync") is None  # fmt: skip
    assert [r for _, r in await store.soft_bounces("u@x.example")] == ["userunknown"]
    assert await store.apply("s@x.example", "spamdetected", sender_domain=None,
                             source="sync") is None  # fmt: skip
    assert await store.soft_bounces("s@x.example") == []  # ignored: not even counted


# -- the daemon, end to end (either backend: read through TestConfig.query) -------------------
def _state(cfg: TestConfig, address: str) -> str | None:
    got = cfg.query("SELECT state FROM recipients WHERE address=? ORDER BY updated_at DESC",
                    address)  # fmt: skip
    return str(got[0][0]) if got else None


def _dsn(rcpt: str, status: str, diag: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.dest.test\r\nTo: <>\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="BB"\r\n\r\n'
        "--BB\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n"
        "--BB\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.dest.test\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diag}\r\n\r\n--BB--\r\n"
    ).encode()


class Mta:
    """The daemon under test and the sink it relays to."""

    def __init__(self, cfg: TestConfig, daemon: Daemon, sink: SinkState, inbound: int) -> None:
        self.cfg, self.daemon, self.sink, self.inbound = cfg, daemon, sink, inbound

    async def send(self, sender: str, rcpt: str) -> None:
        host, port = self.cfg.address("submission", "listen_plain")

        def go() -> None:
            with smtplib.SMTP(host, port, timeout=30) as c:
                c.sendmail(sender, [rcpt], f"From: {sender}\r\nTo: {rcpt}\r\nSubject: hi\r\n"
                           f"Message-ID: <{rcpt.split('@')[0]}.{sender}>\r\n\r\nhello\r\n")  # fmt: skip

        await asyncio.to_thread(go)

    async def refused_at_rcpt(self, sender: str, rcpt: str) -> bool:
        host, port = self.cfg.address("submission", "listen_plain")

        def go() -> bool:
            with smtplib.SMTP(host, port, timeout=30) as c:
                c.mail(sender)
                return c.rcpt(rcpt)[0] >= 500

        return await asyncio.to_thread(go)

    async def delivered_to(self, rcpt: str) -> str:
        """Wait for ``rcpt``'s message at the sink and in the queue's record; its envelope
        sender (the VERP path a bounce comes back to)."""
        await wait_for(lambda: any(rcpt in m.rcpt_tos for m in self.sink.messages), 30)
        await wait_for(lambda: _state(self.cfg, rcpt) == "delivered", 30)
        return next(m.mail_from for m in self.sink.messages if rcpt in m.rcpt_tos)

    async def inbound_message(self, raw: bytes, rcpt: str) -> None:
        def go() -> None:
            with smtplib.SMTP("127.0.0.1", self.inbound, timeout=30) as c:
                c.ehlo("mx.dest.test")
                c.mail("<>")
                assert c.rcpt(rcpt)[0] == 250
                assert c.data(raw)[0] == 250

        await asyncio.to_thread(go)

    async def bounced(self, address: str) -> None:
        await wait_for(lambda: _state(self.cfg, address) == "bounced", 30)

    def check(self, address: str, sender_domain: str) -> tuple[int, str]:
        r = self.daemon.cli("suppression", "check", address, "--sender-domain", sender_domain)
        return r.returncode, r.stdout

    def counted(self, address: str) -> list[str]:
        return [r[0] for r in self.cfg.query("SELECT category FROM soft_bounces "
                                             "WHERE address=? ORDER BY at", address)]  # fmt: skip


async def test_policy_end_to_end(tmp_path: Path) -> None:
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        cfg = TestConfig(tmp_path, tls=False)
        inbound = free_port()
        cfg.set("delivery", relay_host=f"127.0.0.2:{sinks.port}", tls="none")
        cfg.set("shaping", poll_interval="20ms")
        cfg.set("inbound", listen=f"127.0.0.1:{inbound}", bounce_domain=BOUNCES,
                complaints_address=COMPLAINTS)  # fmt: skip
        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        try:
            mta = Mta(cfg, daemon, sink, inbound)
            await _sync_replies(mta)
            await _async_policy_block(mta)
            await _complaint_is_per_sending_domain(mta)
            await _review_lifts_what_older_versions_made(mta)
        finally:
            await asyncio.to_thread(daemon.stop)


async def _sync_replies(mta: Mta) -> None:
    # 550 5.7.1 at DATA: a verdict on this message, not on the address.
    mta.sink.data_reply = "550 5.7.1 message rejected as spam"
    await mta.send("app@shop.example", "spam@dest.test")
    await mta.bounced("spam@dest.test")
    mta.sink.data_reply = None
    assert mta.check("spam@dest.test", "shop.example") == (
        0, "spam@dest.test: not suppressed (1 soft bounce counted in the last 7d: spamdetected)\n")  # fmt: skip
    assert mta.counted("spam@dest.test") == ["spamdetected"]
    # 550 5.1.1 at RCPT: the address is dead, for every sender on this server.
    mta.sink.rcpt_replies["gone@dest.test"] = "550 5.1.1 <gone@dest.test>: user unknown"
    await mta.send("app@shop.example", "gone@dest.test")
    await mta.bounced("gone@dest.test")
    code, out = mta.check("gone@dest.test", "brand.example")
    assert code == 1 and "scope=global" in out and "reason=userunknown" in out, out
    (reply,) = mta.cfg.query("SELECT reply FROM suppressions WHERE address='gone@dest.test'")
    assert "5.1.1" in reply[0] and "user unknown" in reply[0]
    assert await mta.refused_at_rcpt("other@brand.example", "gone@dest.test")


async def _async_policy_block(mta: Mta) -> None:
    await mta.send("app@shop.example", "policy@dest.test")
    verp = await mta.delivered_to("policy@dest.test")
    assert verp.endswith("@" + BOUNCES)
    diag = "550 5.7.1 Message rejected due to local policy"
    await mta.inbound_message(_dsn("policy@dest.test", "5.7.1", diag), verp)
    await mta.bounced("policy@dest.test")  # the async bounce was attributed...
    assert mta.check("policy@dest.test", "shop.example")[0] == 0  # ...and suppresses no one
    assert mta.counted("policy@dest.test") == ["policyviolation"]
    # The same listener, a dead address: suppressed, reason and diagnostic recorded.
    await mta.send("app@shop.example", "moved@dest.test")
    verp = await mta.delivered_to("moved@dest.test")
    await mta.inbound_message(_dsn("moved@dest.test", "5.1.6", "550 5.1.6 mailbox has moved"),
                              verp)  # fmt: skip
    await mta.bounced("moved@dest.test")
    code, out = mta.check("moved@dest.test", "brand.example")
    assert code == 1 and "reason=hasmoved" in out and "source=async" in out, out


async def _complaint_is_per_sending_domain(mta: Mta) -> None:
    await mta.send("news@shop.example", "reader@dest.test")
    verp = await mta.delivered_to("reader@dest.test")
    arf = (CORPUS / "sisimai/arf-03.eml").read_bytes()
    arf = arf.replace(b"Return-Path: <fake.sender@example.net>", f"Return-Path: <{verp}>".encode())
    await mta.inbound_message(arf, COMPLAINTS)
    await wait_for(lambda: bool(mta.cfg.query("SELECT 1 FROM events WHERE type='complaint'")),
                   30)  # fmt: skip
    code, out = mta.check("reader@dest.test", "shop.example")
    assert code == 1 and "scope=shop.example" in out and "reason=feedback" in out, out
    assert mta.check("reader@dest.test", "brand.example")[0] == 0
    assert await mta.refused_at_rcpt("news@shop.example", "reader@dest.test")
    # A second sending domain still reaches the reader.
    before = sum("reader@dest.test" in m.rcpt_tos for m in mta.sink.messages)
    await mta.send("hello@brand.example", "reader@dest.test")
    await wait_for(
        lambda: sum("reader@dest.test" in m.rcpt_tos for m in mta.sink.messages) > before, 30
    )


async def _review_lifts_what_older_versions_made(mta: Mta) -> None:
    # As versions before the reason taxonomy left them: the spam rejection suppressed as an
    # unknown recipient (its reply is only in the bounce event), and the soft-bounce
    # threshold's entry for a full mailbox.
    (qid,) = mta.cfg.query("SELECT queue_id FROM recipients WHERE address='spam@dest.test'")
    async with open_stores(mta.cfg) as stores:
        store = stores.suppressions
        await store.add("spam@dest.test", "unknown-recipient", source="delivery",
                        queue_id=qid[0])  # fmt: skip
        await store.add("full@dest.test", "soft-bounces:mailbox-full", source="async",
                        expires_at=4102444800.0)  # fmt: skip
        await store.add("typed@dest.test", "spamdetected")  # an operator's own: not reviewed
    assert mta.check("spam@dest.test", "shop.example")[0] == 1

    r = mta.daemon.cli("suppression", "review")
    assert r.returncode == 1, r.stderr
    lines = sorted(r.stdout.splitlines())
    assert len(lines) == 2, r.stdout
    assert lines[0].startswith("review\tfull@dest.test\tscope=global\treason=mailboxfull\t")
    assert "judged_by=label" in lines[0]
    assert lines[1].startswith("review\tspam@dest.test\tscope=global\treason=spamdetected\t")
    assert "stored=unknown-recipient\tjudged_by=reply" in lines[1]
    assert "2 of 5 entries" in r.stderr, r.stderr  # gone, moved, reader stay; typed is manual

    r = mta.daemon.cli("suppression", "review", "--lift", "--dry-run")
    assert r.returncode == 1 and r.stdout.count("would-lift\t") == 2
    assert mta.check("spam@dest.test", "shop.example")[0] == 1  # changed nothing

    r = mta.daemon.cli("suppression", "review", "--reason", "spamdetected", "--lift")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("lifted\tspam@dest.test\t") and r.stdout.count("\n") == 1
    assert mta.check("spam@dest.test", "shop.example")[0] == 0
    await mta.send("app@shop.example", "spam@dest.test")  # and mail flows again
    await wait_for(lambda: any("spam@dest.test" in m.rcpt_tos for m in mta.sink.messages), 30)

    r = mta.daemon.cli("suppression", "review", "--lift")
    assert r.returncode == 0 and r.stdout.startswith("lifted\tfull@dest.test\t")
    r = mta.daemon.cli("suppression", "review")
    assert (r.returncode, r.stdout) == (0, "")
    for dead in ("gone@dest.test", "moved@dest.test"):
        assert mta.check(dead, "shop.example")[0] == 1
    assert mta.check("typed@dest.test", "shop.example")[0] == 1
    r = mta.daemon.cli("suppression", "review", "--reason", "spam")
    assert r.returncode == 2 and "--reason: unknown reason 'spam'" in r.stderr
    assert "Traceback" not in r.stderr


async def test_privacy_export_has_the_reply_and_hashing_drops_it(db: Database) -> None:
    """The reply text is about the address: a privacy export shows it; the hashed entry an
    erase leaves keeps the address suppressed without it."""
    from mtaserver import privacy
    from mtaserver.storage.sqlite.privacy import SqlitePrivacy

    store = SuppressionStore(db, FakeClock())
    reply = "550 5.1.1 <Gone@x.example>: user unknown"
    await store.apply("gone@x.example", "userunknown", sender_domain=None, source="sync",
                      reply=reply)  # fmt: skip
    exported = await privacy.export(SqlitePrivacy(db), "gone@x.example")
    assert [s["reply"] for s in exported["suppressions"]] == [reply]
    await db.write(lambda conn: hash_entries(conn, "gone@x.example"))  # what erase runs
    hit = await store.check("gone@x.example", "any.example")
    assert hit is not None and hit.reason == "userunknown" and hit.reply is None
    assert all(s.address.startswith("sha256:") for s in await store.list())
