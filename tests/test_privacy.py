"""Privacy: export everything about an address; erase it from every row and from the file
(on PostgreSQL: from every row of the cluster's database, as a data-only dump shows it)."""

from __future__ import annotations

import json
import re
import smtplib
import time
from pathlib import Path

import pytest

from mtaserver import privacy
from mtaserver.crypto import AesGcmCodec, Keyring
from mtaserver.model import (
    Event,
    PreparedMessage,
    PreparedRecipient,
    RecipientState,
    RecipientUpdate,
)
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.privacy import SqlitePrivacy
from mtaserver.storage.sqlite.queue import BodyCodec, IdentityCodec, Spool
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.suppression import address_hash
from tests.support.daemon import Daemon, TestConfig, database_bytes

BOB = "bob@example.com"
# Whole-word, case-insensitive: jimbob@example.com is somebody else.
BOB_RE = re.compile(rb"(?<![a-z0-9._%+\-])bob@example\.com", re.IGNORECASE)


def body(*rcpts: str, text: str = "Hello") -> bytes:
    return (f"From: app@sender.example\r\nTo: {', '.join(rcpts)}\r\nSubject: hi\r\n\r\n"
            f"{text}\r\n").encode()  # fmt: skip


def message(qid: str, sender: str, rcpts: list[str], own: bool = False) -> PreparedMessage:
    return PreparedMessage(
        queue_id=qid, sender=sender,
        recipients=tuple(PreparedRecipient(r, body(r, text="copy") if own else None)
                         for r in rcpts),
        data=body(*rcpts), user="app", client_ip="127.0.0.1", received_at=time.time(),
        message_id=f"{qid}@sender.example",
    )  # fmt: skip


async def populate(db: Database, codec: BodyCodec) -> None:
    spool = Spool(db, codec)
    supp = SuppressionStore(db)
    events = EventLog(db)
    # M1: delivered to Bob and Carol (bodies dropped at delivery: secure_delete zeroes them).
    await spool.enqueue(message("M1", "app@sender.example", ["Bob@Example.com", "carol@x.example"]))
    await spool.record([
        RecipientUpdate("M1", 0, RecipientState.DELIVERED, "250 2.0.0 <Bob@Example.com> ok"),
        RecipientUpdate("M1", 1, RecipientState.DELIVERED, "250 ok"),
    ], [
        Event("delivered", time.time(), "M1", "Bob@Example.com", (("reply", "250 ok"),)),
        Event("open", time.time(), "M1", "Bob@Example.com",
              (("idx", 0), ("user_agent", "Mozilla/5.0 Bob's phone"), ("client_ip", "198.51.100.0"))),
    ])  # fmt: skip
    # M2: still queued to Bob and Dave, per-recipient copies.
    await spool.enqueue(message("M2", "app@sender.example", [BOB, "dave@x.example"], own=True))
    # M3: Bob is the sender (a submitting user's address), delivered to Erin.
    await spool.enqueue(message("M3", BOB, ["erin@x.example"]))
    await spool.record([RecipientUpdate("M3", 0, RecipientState.DELIVERED, "250 ok")])
    # M4: somebody else whose address contains Bob's: untouched.
    await spool.enqueue(message("M4", "app@sender.example", ["jimbob@example.com"]))
    # A bounce about Bob, mentioning him in the diagnostic, and his suppression entry.
    await events.emit(Event("bounced", time.time(), "M9", BOB, (
        ("diagnostic", "550 5.1.1 <bob@example.com>: user unknown (was jimbob@example.com?)"),
        ("category", "unknown-recipient"))))  # fmt: skip
    await supp.add(BOB, "unknown-recipient", source="async", queue_id="M9")
    await supp.add(BOB, "complaint", scope="sender.example", source="complaint")
    await db.write(lambda c: c.execute(
        "INSERT INTO soft_bounces(address, at, category) VALUES (?, ?, 'mailbox-full')",
        (BOB, time.time())))  # fmt: skip


@pytest.mark.parametrize("encrypted", [False, True])
async def test_export_then_erase_leaves_nothing_in_the_file(
    tmp_path: Path, encrypted: bool
) -> None:
    codec: BodyCodec = (
        AesGcmCodec(Keyring((("k1", b"\x01" * 32),), "k1")) if encrypted else IdentityCodec()
    )
    db = Database(tmp_path / "p.db")
    await db.open()
    try:
        await populate(db, codec)
        exported = await privacy.export(SqlitePrivacy(db), "BOB@example.com", codec=codec)
        json.dumps(exported)  # JSON-ready
        assert [(r["queue_id"], r["state"]) for r in exported["received"]] == [
            ("M1", "delivered"),
            ("M2", "queued"),
        ]
        assert "To: bob@example.com" in exported["received"][1]["body"]  # decrypted
        assert [m["queue_id"] for m in exported["sent"]] == ["M3"]
        assert [e["type"] for e in exported["events"]] == [
            "delivered",
            "open",
            "accepted",
            "bounced",
        ]
        assert {s["scope"] for s in exported["suppressions"]} == {"", "sender.example"}
        assert len(exported["soft_bounces"]) == 1
        assert BOB_RE.search(database_bytes(db.path))  # it is there before

        result = await privacy.erase(SqlitePrivacy(db), "Bob@example.com", codec=codec)
        assert result.recipients == 2 and result.cancelled == 2  # Bob's and Dave's (same body)
        assert result.bodies_removed == 1 and result.messages == 1
        assert result.events == 4 and result.suppressions_hashed == 2
        assert result.soft_bounces == 1 and result.checkpointed and result.in_flight == 0

        # Nothing left in any row ...
        again = await privacy.export(SqlitePrivacy(db), BOB, codec=codec)
        assert again["received"] == again["sent"] == again["events"] == []
        assert again["other"] == {} and again["soft_bounces"] == []
        # ... the suppressions are kept, hashed, and still match the address.
        supp = SuppressionStore(db)
        hit = await supp.check(BOB, "other.example")
        assert hit is not None and hit.reason == "unknown-recipient"
        assert hit.address == address_hash(BOB) and hit.queue_id is None
        assert (await supp.check(BOB, "sender.example")) is not None
        # ... somebody else's data is untouched; statistics still add up.
        rows = await db.read(lambda c: c.execute(
            "SELECT queue_id, address, state FROM recipients ORDER BY queue_id, idx").fetchall())  # fmt: skip
        token = result.address_token
        assert rows == [
            ("M1", token, "delivered"), ("M1", "carol@x.example", "delivered"),
            ("M2", token, "suppressed"), ("M2", "dave@x.example", "suppressed"),
            ("M3", "erin@x.example", "delivered"), ("M4", "jimbob@example.com", "queued"),
        ]  # fmt: skip
        assert await Spool(db, codec).body("M4") == body("jimbob@example.com")
        ev = await db.read(lambda c: c.execute(
            "SELECT type, recipient, data FROM events WHERE queue_id IN ('M1','M9') "
            "AND type IN ('open','bounced') ORDER BY id").fetchall())  # fmt: skip
        assert ev[0][1] == token and json.loads(ev[0][2]) == {"idx": 0}  # UA and IP gone
        assert "jimbob@example.com" in json.loads(ev[1][2])["diagnostic"]
        assert token in json.loads(ev[1][2])["diagnostic"]
        sender = await db.read(
            lambda c: c.execute("SELECT sender FROM messages WHERE id='M3'").fetchone()
        )
        assert sender == (token,)
    finally:
        await db.close()
    # ... and not in the file or the WAL (deleted content was overwritten).
    data = database_bytes(tmp_path / "p.db")
    assert BOB_RE.search(data) is None, data[max(0, BOB_RE.search(data).start() - 80) :][:200]  # type: ignore[union-attr]
    assert b"jimbob@example.com" in data  # the scan does see addresses


async def test_erase_can_add_a_hashed_suppression_and_is_idempotent(db: Database) -> None:
    spool = Spool(db)
    await spool.enqueue(message("M1", "app@sender.example", [BOB]))
    first = await privacy.erase(SqlitePrivacy(db), BOB, suppress=True)
    assert first.recipients == 1
    second = await privacy.erase(SqlitePrivacy(db), BOB, suppress=True)
    assert second.recipients == 0 and second.events == 0
    hit = await SuppressionStore(db).check(BOB, None)
    assert hit is not None and hit.reason == "erased"
    # Removing the suppression also finds the hashed entry.
    assert await SuppressionStore(db).remove(BOB, all_scopes=True) == 1
    assert await SuppressionStore(db).check(BOB, None) is None


async def test_not_an_address_is_refused(db: Database) -> None:
    for bad in ("", "bob", "@example.com", "bob@", "bob smith@example.com"):
        with pytest.raises(privacy.PrivacyError):
            await privacy.erase(SqlitePrivacy(db), bad)


def test_erase_end_to_end_against_the_running_daemon(tmp_path: Path) -> None:
    """Submit to Bob, suppress, erase with the CLI: the database holds no trace, and a new
    submission to Bob is refused by the listener's suppression check."""
    cfg = TestConfig(tmp_path, tls=False)
    host, port = cfg.address("submission", "listen_plain")
    with Daemon(cfg) as d:
        with smtplib.SMTP(host, port, timeout=10) as s:
            s.sendmail("app@sender.example", [BOB, "carol@x.example"], body(BOB, "carol@x.example"))
        r = d.cli("suppression", "add", BOB, "--reason", "unknown-recipient")
        assert r.returncode == 0, r.stderr
        exported = d.cli("privacy", "export", BOB)
        assert exported.returncode == 0, exported.stderr
        assert len(json.loads(exported.stdout)["received"]) == 1
        erased = d.cli("privacy", "erase", BOB)
        assert erased.returncode == 0, erased.stderr
        result = json.loads(erased.stdout)
        assert result["recipients"] == 1 and result["suppressions_hashed"] == 1
        assert result["checkpointed"] is True
        if cfg.backend == "sqlite":  # what the daemon wrote since the erase's checkpoint
            cfg.query("PRAGMA wal_checkpoint(TRUNCATE)")
        data = cfg.stored_bytes()  # the file and its WAL, or a dump of the live rows
        assert BOB_RE.search(data) is None
        assert b"carol@x.example" in data
        with (
            smtplib.SMTP(host, port, timeout=10) as s,
            pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
        ):
            s.sendmail("app@sender.example", [BOB], body(BOB))
        code, text = refused.value.recipients[BOB]
        assert code == 550 and b"suppressed" in text
        bad = d.cli("privacy", "erase", "not-an-address")
        assert bad.returncode == 2 and "not an email address" in bad.stderr
