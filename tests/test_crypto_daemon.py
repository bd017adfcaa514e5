"""Encryption at rest end to end: mail submitted to the running daemon is stored encrypted;
a key rotated by SIGHUP encrypts new mail while older bodies still decrypt."""

from __future__ import annotations

import json
import smtplib
import sqlite3
from pathlib import Path

import pytest

from mtaserver.crypto import generate_key, key_id_of
from tests.support.daemon import Daemon, TestConfig, database_bytes
from tests.support.dnsserver import DnsServer

pytestmark = pytest.mark.sqlite_only("reads the SQLite file for encrypted bodies")


def mail(marker: str) -> bytes:
    return (f"From: app@sender.example\r\nTo: someone@slow.example\r\nSubject: {marker}\r\n"
            f"\r\nConfidential-{marker}-content\r\n").encode()  # fmt: skip


def stored_key_ids(db: Path) -> dict[str, str | None]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT message_id, body FROM messages WHERE body IS NOT NULL")
        return {mid: key_id_of(body) for mid, body in rows}
    finally:
        conn.close()


def test_submitted_bodies_are_encrypted_and_keys_rotate(tmp_path: Path) -> None:
    keys = tmp_path / "storage-keys.toml"
    first = generate_key(keys, "k1")
    cfg = TestConfig(tmp_path, tls=False)
    cfg.set("storage", encryption_key_file=str(keys))
    host, port = cfg.address("submission", "listen_plain")
    with DnsServer() as dns:
        dns.servfail("slow.example")  # deliveries defer: the bodies stay queued
        cfg.set("delivery", nameservers=[dns.nameserver])
        with Daemon(cfg) as d:
            with smtplib.SMTP(host, port, timeout=10) as s:
                s.sendmail("app@sender.example", ["someone@slow.example"], mail("alpha"))
            assert b"Confidential-alpha" not in database_bytes(cfg.database)
            assert set(stored_key_ids(cfg.database).values()) == {first}
            second = generate_key(keys, "k2")
            d.reload()
            assert "event=storage_keys_loaded current=k2" in d.log()
            with smtplib.SMTP(host, port, timeout=10) as s:
                s.sendmail("app@sender.example", ["someone@slow.example"], mail("beta"))
            ids = sorted(stored_key_ids(cfg.database).values(), key=str)
            assert ids == [first, second], ids
            data = database_bytes(cfg.database)
            assert b"Confidential-alpha" not in data and b"Confidential-beta" not in data
            # The operator can still read both (decrypted with whichever key each names).
            out = d.cli("privacy", "export", "someone@slow.example")
            assert out.returncode == 0, out.stderr
            bodies = [r["body"] for r in json.loads(out.stdout)["received"]]
            assert len(bodies) == 2 and all(b and "Confidential-" in b for b in bodies), bodies
    data = database_bytes(cfg.database)
    assert b"Confidential-alpha" not in data and b"Confidential-beta" not in data
