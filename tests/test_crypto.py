"""Encryption at rest: AES-GCM bodies with a key id per record, rotation, key files."""

from __future__ import annotations

import base64
import os
import sqlite3
from pathlib import Path

import pytest

from mtaserver.config import parse_config
from mtaserver.crypto import (
    AesGcmCodec,
    KeyFileError,
    Keyring,
    PlainCodec,
    generate_key,
    key_id_of,
    load_keyring,
)
from mtaserver.errors import ConfigError, StorageError
from mtaserver.keyfiles import check_key_files
from mtaserver.model import PreparedMessage, PreparedRecipient
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool
from tests.support.daemon import database_bytes

SHARED = b"Subject: quarterly\r\n\r\nThe-shared-secret-plaintext-7f3a\r\n"
OWN = b"Subject: quarterly\r\n\r\nPer-recipient-plaintext-91be\r\n"


def ring(*ids: str, current: str | None = None) -> Keyring:
    keys = tuple((i, bytes([n + 1]) * 32) for n, i in enumerate(ids))
    return Keyring(keys, current or ids[-1])


def message(qid: str) -> PreparedMessage:
    return PreparedMessage(
        queue_id=qid, sender="app@example.com",
        recipients=(PreparedRecipient("a@x.example"), PreparedRecipient("b@x.example", OWN)),
        data=SHARED, user="app", client_ip="127.0.0.1", received_at=1000.0,
    )  # fmt: skip


def test_roundtrip_tamper_and_unknown_key() -> None:
    codec = AesGcmCodec(ring("k1"))
    blob = codec.encode(SHARED)
    assert SHARED not in blob and key_id_of(blob) == "k1"
    assert codec.decode(blob) == SHARED
    assert codec.encode(SHARED) != blob  # fresh nonce every time
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(StorageError, match="authentication"):
        codec.decode(tampered)
    relabelled = blob.replace(b"k1", b"k2", 1)  # the key id is authenticated too
    with pytest.raises(StorageError):
        AesGcmCodec(ring("k1", "k2", current="k1")).decode(relabelled)
    with pytest.raises(StorageError, match="not in the key file"):
        AesGcmCodec(ring("other")).decode(blob)
    # A body written before encryption was turned on is read as it is.
    assert codec.decode(SHARED) == SHARED
    # Turning encryption off with encrypted bodies queued is an error, not garbage on the wire.
    with pytest.raises(StorageError, match="encryption_key_file"):
        PlainCodec().decode(blob)


async def test_queued_bodies_are_not_in_the_database_file(tmp_path: Path) -> None:
    db = Database(tmp_path / "q.db")
    await db.open()
    try:
        spool = Spool(db, AesGcmCodec(ring("k1")))
        await spool.enqueue(message("Q1"))
        jobs = await spool.claim_due(now=2000.0, limit=10, lease_seconds=60)
        assert {j.data for j in jobs} == {SHARED, OWN}
        assert await spool.body("Q1") == SHARED
        on_disk = database_bytes(db.path)
        assert b"The-shared-secret-plaintext" not in on_disk
        assert b"Per-recipient-plaintext" not in on_disk
        assert b"a@x.example" in on_disk  # the envelope is not encrypted, only content
    finally:
        await db.close()
    on_disk = database_bytes(tmp_path / "q.db")
    assert b"plaintext" not in on_disk


async def test_key_rotation_old_bodies_still_decrypt(tmp_path: Path) -> None:
    db = Database(tmp_path / "q.db")
    await db.open()
    try:
        spool = Spool(db, AesGcmCodec(ring("k1")))
        await spool.enqueue(message("OLD"))
        spool.codec = AesGcmCodec(ring("k1", "k2", current="k2"))  # SIGHUP with a new key
        await spool.enqueue(message("NEW"))
        stored = await db.read(
            lambda c: dict(c.execute("SELECT id, body FROM messages").fetchall())
        )
        assert key_id_of(stored["OLD"]) == "k1" and key_id_of(stored["NEW"]) == "k2"
        jobs = await spool.claim_due(now=2000.0, limit=10, lease_seconds=60)
        assert sorted(j.queue_id for j in jobs) == ["NEW", "NEW", "OLD", "OLD"]
        assert {j.data for j in jobs} == {SHARED, OWN}
    finally:
        await db.close()


def test_key_file_generation_and_checks(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    k1 = generate_key(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    k2 = generate_key(path, "2026-11")
    ring_ = load_keyring(path)
    assert ring_.current == "2026-11" == k2 and [k for k, _ in ring_.keys] == [k1, k2]
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key(path, "2026-11")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_keyring(path)

    def bad(text: str, match: str) -> None:
        p = tmp_path / "bad.toml"
        p.write_text(text)
        os.chmod(p, 0o600)
        with pytest.raises(KeyFileError, match=match):
            load_keyring(p)

    good = base64.b64encode(b"k" * 32).decode()
    bad('current = "a"\n', "keys")
    bad(f'current = "b"\n[keys]\na = "{good}"\n', "current")
    bad('current = "a"\n[keys]\na = "not base64!"\n', "base64")
    bad(f'current = "a"\n[keys]\na = "{base64.b64encode(b"short").decode()}"\n', "32 bytes")


def test_config_names_the_key_on_a_bad_key_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text("current = 1\n")
    os.chmod(keys, 0o600)
    text = f'[server]\ndata_dir = "{tmp_path}"\n[storage]\nencryption_key_file = "{keys}"\n'
    with pytest.raises(ConfigError, match=r"storage\.encryption_key_file: .*keys"):
        check_key_files(parse_config(text, tmp_path / "c.toml"))
    generate_key(keys.with_name("good.toml"))
    cfg = check_key_files(parse_config(text.replace("keys.toml", "good.toml"), tmp_path / "c.toml"))
    assert cfg.storage.encryption_key_file == keys.with_name("good.toml")


def test_encrypted_database_has_no_plaintext_after_checkpoint(tmp_path: Path) -> None:
    """Independent of our reader: open the file with sqlite3 and look at the stored blobs."""
    import asyncio

    async def fill() -> None:
        db = Database(tmp_path / "q.db")
        await db.open()
        await Spool(db, AesGcmCodec(ring("k1"))).enqueue(message("Q1"))
        await db.close()

    asyncio.run(fill())
    conn = sqlite3.connect(tmp_path / "q.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    blobs = [r[0] for r in conn.execute("SELECT body FROM recipients WHERE body IS NOT NULL")]
    blobs += [r[0] for r in conn.execute("SELECT body FROM messages")]
    conn.close()
    assert len(blobs) == 2 and all(key_id_of(b) == "k1" for b in blobs)
    assert b"plaintext" not in database_bytes(tmp_path / "q.db")
