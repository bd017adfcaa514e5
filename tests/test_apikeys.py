"""API keys for the HTTP send API: hashed at rest, shown once, scoped, bound to a user,
revocable; and the ``mtaserver apikey`` commands run as an operator would."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from mtaserver.storage.sqlite.apikeys import (
    TOUCH_EVERY,
    ApiKeyError,
    ApiKeyStore,
    new_key_id,
    parse_scopes,
)
from mtaserver.storage.sqlite.db import Database
from tests.support.daemon import ROOT, TestConfig


async def test_create_verify_revoke(db: Database) -> None:
    store = ApiKeyStore(db)
    info, key = await store.create("app", frozenset({"mail.send"}), "web", now=100.0)
    _, other = await store.create("app", frozenset({"mail.send", "mail.batch.read"}), now=100.0)
    assert key.startswith("SG.") and key.count(".") == 2 and len(key) > 60 and key != other
    assert key.split(".")[1] == info.key_id
    got = await store.verify(key, now=101.0)
    assert got is not None and (got.user, got.name, got.scopes) == ("app", "web", {"mail.send"})
    for bad in (key + "x", key[:-1], "", "SG.", "Bearer " + key, "x" * 500):
        assert await store.verify(bad) is None
    rows = await db.read(lambda c: c.execute("SELECT key_hash FROM api_keys").fetchall())
    assert {r[0] for r in rows} == {hashlib.sha256(k.encode()).hexdigest() for k in (key, other)}
    stored = await db.read(lambda c: c.execute("SELECT * FROM api_keys").fetchall())
    assert key.split(".")[2] not in repr(stored)  # the secret is nowhere at rest
    revoked = await store.revoke(info.key_id, now=200.0)
    assert revoked.revoked_at == 200.0 and not revoked.active
    assert await store.verify(key) is None and await store.verify(other) is not None
    assert {k.key_id: k.active for k in await store.list("app")} == {
        info.key_id: False, other.split(".")[1]: True
    }  # fmt: skip
    assert await store.list("nobody") == []
    with pytest.raises(ApiKeyError, match="no API key with id 'nope'"):
        await store.revoke("nope")
    with pytest.raises(ApiKeyError, match="unknown scopes"):
        await store.create("app", frozenset({"admin"}))


async def test_last_used_is_touched_at_most_once_a_minute(db: Database) -> None:
    store = ApiKeyStore(db)
    _, key = await store.create("app", frozenset({"mail.send"}), now=0.0)
    await store.verify(key, now=10.0)
    await store.verify(key, now=10.0 + TOUCH_EVERY / 2)
    assert (await store.list())[0].last_used_at == 10.0
    await store.verify(key, now=10.0 + TOUCH_EVERY)
    assert (await store.list())[0].last_used_at == 10.0 + TOUCH_EVERY


def test_scopes_parse_with_shorthands_and_name_the_option() -> None:
    assert parse_scopes(["mail.send"]) == {"mail.send"}
    assert parse_scopes(["mail.send, mail.batch"]) == {
        "mail.send", "mail.batch.create", "mail.batch.read"
    }  # fmt: skip
    assert "user.scheduled_sends.delete" in parse_scopes(["all"])
    with pytest.raises(ApiKeyError, match=r"--scopes: unknown scope 'mail\.snd'"):
        parse_scopes(["mail.snd"])
    with pytest.raises(ApiKeyError, match="--scopes: give at least one"):
        parse_scopes([" , "])


def _cli(cfg: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mtaserver", *args, "-c", str(cfg)],
        input=stdin, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def test_apikey_commands(tmp_path: Path) -> None:
    cfg = TestConfig(tmp_path, tls=False).write()
    out = _cli(cfg, "apikey", "create", "--user", "app")
    assert out.returncode == 2 and "--user: no user 'app'" in out.stderr
    assert _cli(cfg, "user", "add", "app", "--domain", "example.com", "--password-stdin",
                stdin="a long password\n").returncode == 0  # fmt: skip
    out = _cli(cfg, "apikey", "create", "--user", "App", "--scopes", "mail.send,mail.batch")
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("SG.") and "\n" not in key and "shown only now" in out.stderr
    key_id = key.split(".")[1]
    listed = _cli(cfg, "apikey", "list")
    assert listed.returncode == 0 and key_id in listed.stdout and "app" in listed.stdout
    assert "mail.batch.create,mail.batch.read,mail.send" in listed.stdout
    assert key.split(".")[2] not in listed.stdout
    bad = _cli(cfg, "apikey", "create", "--user", "app", "--scopes", "everything")
    assert bad.returncode == 2 and "unknown scope 'everything'" in bad.stderr
    assert _cli(cfg, "apikey", "revoke", key_id).stdout.startswith(f"revoked API key {key_id}")
    assert "revoked" in _cli(cfg, "apikey", "list", "--user", "app").stdout
    missing = _cli(cfg, "apikey", "revoke", "nope")
    assert missing.returncode == 2 and "no API key with id 'nope'" in missing.stderr


def test_key_ids_never_start_with_a_dash() -> None:
    """``mtaserver apikey revoke ID`` must take every id (a leading '-' reads as an option);
    1 in 64 of plain token_urlsafe ids starts with one."""
    assert not any(new_key_id().startswith("-") for _ in range(3000))
