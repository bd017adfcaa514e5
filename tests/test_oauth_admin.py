"""The admin API with OAuth access tokens (the real daemon): admin.read / admin.write scopes
beside the admin tokens, 401 for bad tokens, 403 for a missing scope, 503 without keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.daemon import Daemon, TestConfig, free_port
from tests.support.oidc_issuer import Issuer
from tests.test_oauth_verifier import claims_of, forge

UNAUTHORIZED = {"error": "unauthorized"}


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    iss = await Issuer().start()
    try:
        yield iss
    finally:
        await iss.stop()


def config(tmp_path: Path, issuer: Issuer) -> TestConfig:
    cfg = TestConfig(tmp_path, tls=False)
    cfg.set("admin", listen=f"127.0.0.1:{free_port()}")
    cfg.set("delivery", relay_host=f"127.0.0.1:{free_port()}")
    cfg.set("oauth", issuers=[issuer.issuer_table(jwks_timeout="1s")])
    return cfg


async def call(
    http: aiohttp.ClientSession, cfg: TestConfig, method: str, path: str, token: str
) -> tuple[int, dict[str, str], object]:
    host, port = cfg.address("admin", "listen")
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, f"http://{host}:{port}{path}", headers=headers) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, dict(resp.headers), body


async def test_admin_scopes(tmp_path: Path, issuer: Issuer) -> None:
    cfg = config(tmp_path, issuer)
    daemon = Daemon(cfg)
    await asyncio.to_thread(daemon.start)
    reader = issuer.token("ops-viewer", scope="openid admin.read")
    writer = issuer.token("ops-admin", scope="admin.write")
    nobody = issuer.token("someone", scope="openid email")
    try:
        made = await asyncio.to_thread(daemon.cli, "admin", "token", "create", "--name", "t")
        static = made.stdout.strip()
        async with aiohttp.ClientSession() as http:
            status, _, body = await call(http, cfg, "GET", "/api/v1/queue/summary", reader)
            assert status == 200 and isinstance(body, dict), body
            status, _, text = await call(http, cfg, "GET", "/metrics", reader)
            assert status == 200 and "mtaserver_" in str(text)
            status, headers, body = await call(http, cfg, "POST", "/api/v1/queue/retry", reader)
            assert status == 403 and body == {"error": "insufficient scope: needs admin.write"}
            assert 'error="insufficient_scope", scope="admin.write"' in headers["WWW-Authenticate"]
            status, _, _ = await call(http, cfg, "POST", "/api/v1/queue/retry", writer)
            assert status == 200
            status, _, _ = await call(http, cfg, "GET", "/api/v1/queue/summary", writer)
            assert status == 200  # write includes read
            status, _, body = await call(http, cfg, "GET", "/api/v1/queue/summary", nobody)
            assert status == 403 and body == {"error": "insufficient scope: needs admin.read"}
            for bad in (
                issuer.token("ops-admin", scope="admin.write", lifetime=-3600),
                issuer.token("ops-admin", scope="admin.write", aud="other"),
                forge(
                    {"alg": "HS256", "kid": "rsa1"},
                    claims_of(issuer, scope="admin.write"),
                    issuer.rsa_public_pem(),
                ),
                forge({"alg": "none"}, claims_of(issuer, scope="admin.write"), None),
            ):
                status, headers, body = await call(http, cfg, "POST", "/api/v1/queue/retry", bad)
                assert status == 401 and body == UNAUTHORIZED, body
                assert headers["WWW-Authenticate"] == 'Bearer realm="mtaserver"'
            # the admin tokens keep working beside OAuth
            status, _, _ = await call(http, cfg, "POST", "/api/v1/queue/retry", static)
            assert status == 200
            # and without [oauth] (SIGHUP) the JWT is just an unknown bearer
            del cfg.data["oauth"]
            cfg.write()
            await asyncio.to_thread(daemon.reload)
            status, _, body = await call(http, cfg, "GET", "/api/v1/queue/summary", writer)
            assert status == 401 and body == UNAUTHORIZED
    finally:
        code = await asyncio.to_thread(daemon.stop)
    log = daemon.log()
    assert code == 0, log
    assert "event=admin_forbidden" in log and "need=admin.write" in log
    for token in (reader, writer, nobody):
        assert token not in log and token.split(".")[2] not in log


async def test_admin_without_keys_is_503(tmp_path: Path, issuer: Issuer) -> None:
    issuer.mode = "down"
    cfg = config(tmp_path, issuer)
    daemon = Daemon(cfg)
    await asyncio.to_thread(daemon.start)
    try:
        async with aiohttp.ClientSession() as http:
            token = issuer.token("ops-admin", scope="admin.write")
            status, headers, body = await call(http, cfg, "GET", "/api/v1/queue/summary", token)
            assert status == 503 and headers["Retry-After"] == "30", body
            assert body == {"error": "token keys unavailable, try again"}
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
