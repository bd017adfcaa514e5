"""Admin tokens (hashed at rest, one live name, revocation) and the [admin] config section."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mtaserver.config import parse_config
from mtaserver.errors import ConfigError
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.tokens import TOUCH_EVERY, TokenError, TokenStore


async def test_create_verify_revoke(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db")
    await db.open()
    try:
        store = TokenStore(db)
        info, token = await store.create("grafana", now=100.0)
        other_info, other = await store.create("ops", now=100.0)
        assert token != other and len(token) >= 40
        assert (await store.verify(token, now=101.0)) == info.__class__(
            info.id, "grafana", 100.0, None, None
        )
        assert await store.verify(token + "x") is None
        assert await store.verify(token[:-1]) is None
        assert await store.verify("") is None
        # Only the SHA-256 is stored.
        rows = await db.read(lambda c: c.execute("SELECT token_hash FROM admin_tokens").fetchall())
        assert {r[0] for r in rows} == {
            hashlib.sha256(t.encode()).hexdigest() for t in (token, other)
        }
        with pytest.raises(TokenError, match="exists"):
            await store.create("grafana")
        revoked = await store.revoke("grafana", now=200.0)
        assert revoked.revoked_at == 200.0 and not revoked.active
        assert await store.verify(token) is None
        assert await store.verify(other) is not None
        # The name is free again; the revoked one stays listed.
        await store.create("grafana")
        names = [(t.name, t.active) for t in await store.list()]
        assert names == [("grafana", False), ("ops", True), ("grafana", True)]
        assert [t.name for t in await store.list(include_revoked=False)] == ["ops", "grafana"]
        assert (await store.revoke(str(other_info.id))).name == "ops"
        with pytest.raises(TokenError, match="no live token"):
            await store.revoke("nobody")
        with pytest.raises(TokenError, match="no token with id"):
            await store.revoke("999")
        for bad in ("", "   ", "123", "a b", "x" * 65, "semi;colon"):
            with pytest.raises(TokenError):
                await store.create(bad)
    finally:
        await db.close()


async def test_last_used_is_touched_at_most_once_a_minute(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db")
    await db.open()
    try:
        store = TokenStore(db)
        _, token = await store.create("t", now=0.0)
        await store.verify(token, now=1000.0)
        await store.verify(token, now=1000.0 + TOUCH_EVERY / 2)
        (info,) = await store.list()
        assert info.last_used_at == 1000.0
        await store.verify(token, now=1000.0 + TOUCH_EVERY)
        (info,) = await store.list()
        assert info.last_used_at == 1000.0 + TOUCH_EVERY
    finally:
        await db.close()


def _cfg(tmp_path: Path, admin: str, extra: str = "") -> object:
    text = f'[server]\ndata_dir = "{tmp_path}"\n{extra}\n[admin]\n{admin}\n'
    return parse_config(text, tmp_path / "config.toml")


def test_admin_config(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, 'listen = "127.0.0.1:8026"')
    admin = cfg.admin  # type: ignore[attr-defined]
    assert admin.listen == ("127.0.0.1", 8026)
    assert (admin.tls, admin.metrics_auth, admin.top_destinations) == (False, "token", 20)
    assert _cfg(tmp_path, 'listen = "[::1]:8026"').admin.listen == ("::1", 8026)  # type: ignore[attr-defined]
    assert _cfg(tmp_path, 'listen = "localhost:1"\nmetrics_auth = "none"\ntop_destinations = 5'
                ).admin.metrics_auth == "none"  # type: ignore[attr-defined]  # fmt: skip
    assert _cfg(tmp_path, "").admin.listen is None  # type: ignore[attr-defined]
    for admin_text, message in (
        ('listen = "0.0.0.0:8026"', r"admin\.listen: 0\.0\.0\.0 is not a loopback address"),
        ('listen = "10.1.2.3:8026"', "set tls = true"),
        ('listen = "127.0.0.1:8026"\ntls = true', r"admin\.tls: needs \[tls\] cert and key"),
        ('metrics_auth = "basic"', r"admin\.metrics_auth: expected one of 'token', 'none'"),
        ("top_destinations = 0", r"admin\.top_destinations: expected an integer >= 1"),
        ("tokens = []", r"admin\.tokens: unknown key"),
    ):
        with pytest.raises(ConfigError, match=message):
            _cfg(tmp_path, admin_text)
