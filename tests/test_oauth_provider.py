"""A real OpenID Connect provider (panva/oidc-provider, pinned in tests/node) issues the
tokens: discovery document → jwks_uri → client-credentials grant → SMTP AUTH."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import smtplib
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest

from mtaserver.config.submission import AuthThrottleConfig
from tests.support.daemon import free_port
from tests.support.submission import running
from tests.test_oauth_verifier import oauth_config

NODE_DIR = Path(__file__).with_name("node")
NODE = shutil.which("node")
MESSAGE = b"From: app@example.com\r\nTo: r@dest.example\r\nSubject: idp\r\n\r\nbody\r\n"


@pytest.fixture
def provider() -> Iterator[str]:
    assert NODE is not None, "needs node (.ci/run installs nodejs)"
    assert (NODE_DIR / "node_modules" / "oidc-provider").exists(), (
        "run `npm ci` in tests/node (.ci/run does)"
    )
    port = free_port()
    proc = subprocess.Popen(
        [NODE, str(NODE_DIR / "idp.mjs"), str(port)], cwd=NODE_DIR,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the provider starts in well under a second
        assert line.startswith("READY "), line
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.wait(10)


async def client_token(session: aiohttp.ClientSession, issuer: str, client: str) -> str:
    async with session.get(f"{issuer}/.well-known/openid-configuration") as resp:
        disco = await resp.json()
    form = {"grant_type": "client_credentials", "client_id": client,
            "client_secret": f"{client}-secret-123", "scope": "smtp",
            "resource": "urn:mtaserver"}  # fmt: skip
    async with session.post(disco["token_endpoint"], data=form) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    token = body["access_token"]
    assert isinstance(token, str)
    return token


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_tokens_from_a_real_provider(
    tmp_path: Path, provider: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{provider}/.well-known/openid-configuration") as resp:
        disco = await resp.json()
    cfg = oauth_config({
        "issuer": disco["issuer"], "audience": "urn:mtaserver", "jwks_uri": disco["jwks_uri"],
        "user_claim": "sub",  # a client-credentials token's sub is the client id
    })  # fmt: skip
    throttle = AuthThrottleConfig(delay_after=1000, lockout_after=1000)
    async with running(tmp_path, oauth=cfg, throttle=throttle) as env:
        await env.users.add("app", "scrypt$1$1$1$x$y", ["example.com"])
        token = await client_token(http, provider, "app")
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=env.port("submission"), start_tls=True,
            tls_context=env.client_context(), local_hostname="client.test",
        ) as smtp:  # fmt: skip
            await smtp.ehlo()
            assert (await smtp.auth_xoauth2("app", token)).code == 235
            await smtp.sendmail("app@example.com", ["r@dest.example"], MESSAGE)
        port, ctx = env.port("submission"), env.client_context()

        def oauthbearer(challenge: bytes | None = None) -> str:
            return "\x01" if challenge is not None else f"n,,\x01auth=Bearer {token}\x01\x01"

        def smtplib_send() -> None:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as s:
                s.starttls(context=ctx)
                s.ehlo("client.test")
                assert s.auth("OAUTHBEARER", oauthbearer)[0] == 235
                s.sendmail("app@example.com", ["r@dest.example"], MESSAGE)

        await asyncio.to_thread(smtplib_send)
        assert [r["user"] for r in env.messages()] == ["app", "app"]
        # a valid token from the provider for a client that is no mtaserver user
        stranger = await client_token(http, provider, "stranger")
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=env.port("submission"), start_tls=True,
            tls_context=env.client_context(), local_hostname="client.test",
        ) as smtp:  # fmt: skip
            await smtp.ehlo()
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as err:
                await smtp.auth_xoauth2("stranger", stranger)
            assert err.value.code == 535
            # the provider's token with its signature altered
            head, body, sig = token.split(".")
            bad = f"{head}.{body}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
            with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                await smtp.auth_xoauth2("app", bad)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "RS256" and header["typ"] == "at+jwt"  # RFC 9068 access token
