"""SMTP AUTH OAUTHBEARER (RFC 7628) and XOAUTH2 on the real submission listeners.

A local issuer on loopback signs the tokens; clients are smtplib (custom authobjects),
aiosmtplib (its own XOAUTH2) and raw bytes for what real clients refuse to send.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import smtplib
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from mtaserver.config.oauth import OAuthConfig
from mtaserver.config.submission import AuthThrottleConfig
from tests.support.mxsink import wait_for
from tests.support.oidc_issuer import Issuer
from tests.support.submission import Env, RawClient, plain_auth, running
from tests.test_oauth_verifier import claims_of, forge, oauth_config

NO_DELAY = AuthThrottleConfig(delay_after=1000, lockout_after=1000)
MESSAGE = b"From: alice@example.com\r\nTo: r@dest.example\r\nSubject: hi\r\n\r\nbody\r\n"


def xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def oauthbearer(token: str, authzid: str = "", host: str = "localhost") -> str:
    gs2 = f"n,a={authzid}," if authzid else "n,,"
    body = f"{gs2}\x01host={host}\x01port=587\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(body.encode()).decode()


def error_json(reply: str) -> dict[str, Any]:
    assert reply.startswith("334 "), reply
    value = json.loads(base64.b64decode(reply[4:]))
    assert isinstance(value, dict)
    return value


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    iss = await Issuer().start()
    try:
        yield iss
    finally:
        await iss.stop()


@asynccontextmanager
async def server(
    tmp_path: Path, issuer: Issuer, *, throttle: AuthThrottleConfig = NO_DELAY, **table: Any
) -> AsyncIterator[Env]:
    cfg: OAuthConfig = oauth_config(issuer.issuer_table(**table))
    async with running(tmp_path, oauth=cfg, throttle=throttle) as env:
        yield env


async def starttls_client(env: Env) -> RawClient:
    c = await RawClient.connect(env.port("submission"))
    assert (await c.reply()).startswith("220")
    await c.cmd("EHLO client.test")
    assert (await c.cmd("STARTTLS")).startswith("220")
    await c.starttls(env.client_context())
    ehlo = await c.cmd("EHLO client.test")
    assert "OAUTHBEARER" in ehlo and "XOAUTH2" in ehlo
    return c


async def test_advertised_only_after_tls_and_only_with_issuers(
    tmp_path: Path, issuer: Issuer
) -> None:
    async with server(tmp_path, issuer) as env:
        c = await RawClient.connect(env.port("submission"))
        await c.reply()
        before = await c.cmd("EHLO client.test")
        assert "AUTH" not in before and "STARTTLS" in before
        assert (await c.cmd("AUTH XOAUTH2 " + xoauth2("alice", "x"))).startswith("530")
        await c.cmd("STARTTLS")
        await c.starttls(env.client_context())
        after = await c.cmd("EHLO client.test")
        assert "250-AUTH LOGIN OAUTHBEARER PLAIN XOAUTH2" in after
        await c.close()
        implicit = await RawClient.connect(env.port("submissions"), env.client_context())
        await implicit.reply()
        assert "OAUTHBEARER" in await implicit.cmd("EHLO client.test")
        await implicit.close()
        plain = await RawClient.connect(env.port("plain"))
        await plain.reply()
        assert "AUTH" not in await plain.cmd("EHLO client.test")
        assert (await plain.cmd("AUTH OAUTHBEARER " + oauthbearer("x"))).startswith("538")
        await plain.close()
    (tmp_path / "none").mkdir()
    async with running(tmp_path / "none") as env:  # no [oauth] issuers: not offered
        c = await starttls_client_without_oauth(env)
        assert (await c.cmd("AUTH XOAUTH2 " + xoauth2("alice", "x"))).startswith("504 5.5.4")
        # and the AUTH line keeps aiosmtpd's limit: a real token does not fit
        reply = await c.cmd("AUTH XOAUTH2 " + xoauth2("alice", issuer.token()))
        assert reply.startswith("500 5.5.2 Command line too long"), reply
        await c.close()


async def starttls_client_without_oauth(env: Env) -> RawClient:
    c = await RawClient.connect(env.port("submission"))
    await c.reply()
    await c.cmd("EHLO client.test")
    await c.cmd("STARTTLS")
    await c.starttls(env.client_context())
    ehlo = await c.cmd("EHLO client.test")
    assert "250-AUTH LOGIN PLAIN" in ehlo and "OAUTH" not in ehlo
    return c


def _smtplib_send(port: int, ctx: ssl.SSLContext, mech: str, auth: Callable[..., str]) -> str:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=ctx)
        s.ehlo("client.test")
        code, _ = s.auth(mech, auth)
        assert code == 235
        s.sendmail("alice@example.com", ["r@dest.example"], MESSAGE)
        return "sent"


async def test_smtplib_xoauth2_and_oauthbearer(tmp_path: Path, issuer: Issuer) -> None:
    async with server(tmp_path, issuer) as env:
        port, ctx = env.port("submission"), env.client_context()
        token = issuer.token("alice")

        def xo(challenge: bytes | None = None) -> str:
            return f"user=alice\x01auth=Bearer {token}\x01\x01" if challenge is None else ""

        def ob(challenge: bytes | None = None) -> str:
            if challenge is not None:
                return "\x01"
            return f"n,a=alice,\x01host=localhost\x01port=587\x01auth=Bearer {token}\x01\x01"

        await asyncio.to_thread(_smtplib_send, port, ctx, "XOAUTH2", xo)
        await asyncio.to_thread(_smtplib_send, port, ctx, "OAUTHBEARER", ob)
        rows = env.messages()
        assert [r["user"] for r in rows] == ["alice", "alice"]


async def test_smtplib_sees_the_error_exchange(tmp_path: Path, issuer: Issuer) -> None:
    async with server(tmp_path, issuer) as env:
        port, ctx = env.port("submission"), env.client_context()
        bad = issuer.token("alice", aud="another-app")
        seen: list[bytes] = []

        def ob(challenge: bytes | None = None) -> str:
            if challenge is not None:
                seen.append(challenge)
                return "\x01"
            return f"n,,\x01auth=Bearer {bad}\x01\x01"

        def run() -> None:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as s:
                s.starttls(context=ctx)
                s.ehlo("client.test")
                with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                    s.auth("OAUTHBEARER", ob)
                assert info.value.smtp_code == 535
                assert b"5.7.8" in info.value.smtp_error

        await asyncio.to_thread(run)
        (challenge,) = seen
        assert json.loads(challenge) == {
            "status": "invalid_token",
            "schemes": "bearer",
            "openid-configuration": issuer.url + "/.well-known/openid-configuration",
        }


async def test_aiosmtplib_native_xoauth2(tmp_path: Path, issuer: Issuer) -> None:
    async with server(tmp_path, issuer, user_claim="email") as env:
        # email claim → the user must be named like the address
        await env.users.add("carol@example.com", "scrypt$1$1$1$x$y", ["carol.example"])
        token = issuer.token("carol", alg="EdDSA")
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=env.port("submissions"), use_tls=True,
            tls_context=env.client_context(), local_hostname="client.test",
        ) as smtp:  # fmt: skip
            reply = await smtp.auth_xoauth2("carol@example.com", token)
            assert reply.code == 235
            msg = MESSAGE.replace(b"alice@example.com", b"carol@carol.example")
            await smtp.sendmail("carol@carol.example", ["r@dest.example"], msg)

        async def generator() -> str:
            return issuer.token("carol", alg="ES256")

        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=env.port("submission"), start_tls=True,
            tls_context=env.client_context(), username="carol@example.com",
            oauth_token_generator=generator, local_hostname="client.test",
        ) as smtp:  # fmt: skip
            msg = MESSAGE.replace(b"alice@example.com", b"carol@carol.example")
            await smtp.sendmail("carol@carol.example", ["r@dest.example"], msg)
            with pytest.raises(aiosmtplib.SMTPResponseException) as info:
                await smtp.sendmail("alice@example.com", ["r@dest.example"], MESSAGE)
            assert info.value.code == 553
        assert [r["user"] for r in env.messages()] == ["carol@example.com"] * 2
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=env.port("submissions"), use_tls=True,
            tls_context=env.client_context(), local_hostname="client.test",
        ) as smtp:  # fmt: skip
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as err:
                await smtp.auth_xoauth2("carol@example.com", issuer.token("carol", lifetime=-600))
            assert err.value.code == 535 and "5.7.8" in err.value.message


def _bad_tokens(issuer: Issuer) -> dict[str, str]:
    now = time.time()
    claims = claims_of(issuer)
    return {
        "expired": issuer.token(lifetime=-3600),
        "not yet valid": issuer.token(nbf=int(now + 3600)),
        "wrong audience": issuer.token(aud="someone-else"),
        "wrong issuer": issuer.token(iss="https://evil.example/realms/test"),
        "unknown kid": issuer.token(kid="rotated-away"),
        "alg none": forge({"alg": "none", "kid": "rsa1"}, claims, None),
        "HS256 with the RSA public key": forge(
            {"alg": "HS256", "kid": "rsa1"}, claims, issuer.rsa_public_pem()
        ),
        "unknown user": issuer.token("mallory"),
        "no user claim": issuer.token(preferred_username=None),
        "not a JWT": "hello",
        "empty": "",
    }


@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
async def test_bad_tokens_get_the_error_exchange_then_535(
    mech: str, tmp_path: Path, issuer: Issuer
) -> None:
    async with server(tmp_path, issuer) as env:
        c = await starttls_client(env)
        for case, token in _bad_tokens(issuer).items():
            blob = xoauth2("", token) if mech == "XOAUTH2" else oauthbearer(token)
            reply = await c.cmd(f"AUTH {mech} {blob}")
            status = error_json(reply)["status"]
            assert status in ("invalid_token", "invalid_request"), (case, status)
            final = await c.cmd("AQ==" if mech == "OAUTHBEARER" else "")
            assert final.startswith("535 5.7.8"), (case, final)
        # the session is still good: a valid token afterwards is accepted
        assert (await c.cmd(f"AUTH {mech} " + oauthbearer(issuer.token()) if mech ==
                "OAUTHBEARER" else f"AUTH {mech} " + xoauth2("alice", issuer.token()))
                ).startswith("235")  # fmt: skip
        await c.close()
    assert env.messages() == []


async def test_exchange_forms(tmp_path: Path, issuer: Issuer) -> None:
    """Empty challenge then response; '*' aborts; malformed SASL; a client-named user."""
    async with server(tmp_path, issuer) as env:
        c = await starttls_client(env)
        assert await c.cmd("AUTH OAUTHBEARER") == "334 "
        assert (await c.cmd(oauthbearer(issuer.token("bob")))).startswith("235")
        await c.close()
        c = await starttls_client(env)
        for blob in (
            base64.b64encode(b"no separators").decode(),
            base64.b64encode(b"p=tls-unique,,\x01auth=Bearer x\x01\x01").decode(),
            oauthbearer(issuer.token("alice"), authzid="bob"),  # names another user
        ):
            assert error_json(await c.cmd("AUTH OAUTHBEARER " + blob))
            assert (await c.cmd("AQ==")).startswith("535 5.7.8")
        assert error_json(await c.cmd("AUTH XOAUTH2 " + xoauth2("bob", issuer.token("alice"))))
        assert (await c.cmd("*")).startswith("501 5.7.0")
        assert (await c.cmd("AUTH XOAUTH2 !!!")).startswith("501 5.5.2")
        assert (await c.cmd("AUTH XOAUTH2 " + xoauth2("ALICE", issuer.token("Alice")))
                ).startswith("235")  # fmt: skip
        assert (await c.cmd("AUTH XOAUTH2 " + xoauth2("alice", issuer.token()))).startswith("503")
        await c.close()


async def test_token_binds_the_sender_like_a_password(tmp_path: Path, issuer: Issuer) -> None:
    async with server(tmp_path, issuer) as env:
        c = await starttls_client(env)
        assert (await c.cmd("AUTH XOAUTH2 " + xoauth2("alice", issuer.token()))).startswith("235")
        reply = await c.cmd("MAIL FROM:<bob@bob.example>")
        assert reply == "553 5.7.1 Sender domain bob.example is not yours"
        assert (await c.cmd("MAIL FROM:<alice@alice.example>")).startswith("250")
        assert (await c.cmd("RCPT TO:<r@dest.example>")).startswith("250")
        assert (await c.cmd("DATA")).startswith("354")
        await c.send(MESSAGE.replace(b"alice@example.com", b"bob@bob.example") + b".\r\n")
        assert (await c.reply()) == "553 5.7.1 From: header domain bob.example is not yours"
        await c.close()
        # the same refusal as after AUTH PLAIN with alice's password
        c = await starttls_client(env)
        assert (await c.cmd("AUTH PLAIN " + plain_auth("alice"))).startswith("235")
        assert await c.cmd("MAIL FROM:<bob@bob.example>") == reply
        await c.close()
    assert env.messages() == []


@pytest.mark.parametrize("mode", ["down", "slow", "garbage", "refuse"])
async def test_jwks_trouble_is_454_and_never_accepts(
    mode: str, tmp_path: Path, issuer: Issuer
) -> None:
    issuer.mode = mode
    issuer.slow_seconds = 20
    async with server(tmp_path, issuer, jwks_timeout="1s") as env:
        if mode == "refuse":
            await issuer.stop()
        c = await starttls_client(env)
        other = await starttls_client(env)
        started = time.perf_counter()
        fetched = issuer.jwks_requests
        pending = asyncio.create_task(c.cmd("AUTH XOAUTH2 " + xoauth2("alice", issuer.token())))
        if mode != "refuse":  # the key fetch has begun (a stopped issuer counts nothing)
            await wait_for(lambda: issuer.jwks_requests > fetched, 5)
        # meanwhile another session is served: the loop is not waiting on the fetch
        assert (await other.cmd("NOOP")).startswith("250")
        if mode == "slow":
            assert not pending.done()  # answered while the fetch was still running
        reply = await pending
        assert reply == "454 4.7.0 Temporary authentication failure, try again later"
        assert time.perf_counter() - started < 5
        # the second attempt within the refresh interval is answered at once, still 454
        reply = await c.cmd("AUTH OAUTHBEARER " + oauthbearer(issuer.token()))
        assert reply.startswith("454 4.7.0")
        assert (await c.cmd("MAIL FROM:<alice@example.com>")).startswith("250")
        assert (await c.cmd("RCPT TO:<r@dest.example>")).startswith("554 5.7.1")
        await c.close()
        await other.close()


async def test_huge_tokens_are_refused_without_stalling(tmp_path: Path, issuer: Issuer) -> None:
    async with server(tmp_path, issuer) as env:
        c = await starttls_client(env)
        other = await starttls_client(env)
        huge = issuer.token(pad="x" * (1024 * 1024))
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        try:
            reply = await c.cmd("AUTH XOAUTH2 " + xoauth2("alice", huge))
            assert reply.startswith("500"), reply  # the command line is over the limit
            assert (await c.cmd("AUTH OAUTHBEARER")) == "334 "
            reply = await c.cmd(oauthbearer(huge))
            assert reply == "500 5.5.6 Authentication exchange line is too long"
            # just over the token size, within the line: the size cap answers
            medium = issuer.token(pad="x" * 12100)
            assert 16384 < len(medium) < 17000
            assert error_json(await c.cmd("AUTH XOAUTH2 " + xoauth2("alice", medium)))[
                "status"] == "invalid_request"  # fmt: skip
            assert (await c.cmd("")).startswith("535 5.7.8")
            assert (await other.cmd("NOOP")).startswith("250")
            assert gaps and max(gaps) < 1.0, max(gaps)  # the loop kept turning throughout
            # the session still works
            reply = await c.cmd("AUTH XOAUTH2 " + xoauth2("alice", issuer.token()))
            assert reply.startswith("235")
        finally:
            task.cancel()
        await c.close()
        await other.close()


async def test_failures_count_towards_auth_throttling(tmp_path: Path, issuer: Issuer) -> None:
    throttle = AuthThrottleConfig(delay_after=1000, lockout_after=3, window=900.0)
    async with server(tmp_path, issuer, throttle=throttle) as env:
        c = await starttls_client(env)
        bad = issuer.token(lifetime=-3600)
        for _ in range(2):
            assert error_json(await c.cmd("AUTH XOAUTH2 " + xoauth2("alice", bad)))
            assert (await c.cmd("")).startswith("535")
        # the third failure (a wrong password, the same throttle) locks the IP out
        assert (await c.cmd("AUTH PLAIN " + plain_auth("alice", "wrong password"))
                ).startswith("421 4.7.0")  # fmt: skip
        c = await starttls_client(env)
        reply = await c.cmd("AUTH XOAUTH2 " + xoauth2("alice", issuer.token()))
        assert reply.startswith("421 4.7.0"), reply  # locked: not even a good token
        await c.close()


async def test_tokens_are_never_logged(
    tmp_path: Path, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good, bad = issuer.token(), issuer.token(aud="nope")
    async with server(tmp_path, issuer) as env:
        c = await starttls_client(env)
        assert error_json(await c.cmd("AUTH XOAUTH2 " + xoauth2("alice", bad)))
        await c.cmd("")
        assert (await c.cmd("AUTH OAUTHBEARER")) == "334 "
        assert (await c.cmd(oauthbearer(good))).startswith("235")
        await c.close()
    text = caplog.text
    assert "auth_failed" in text and "auth_ok" in text and "OAUTHBEARER" in text
    for token in (good, bad):
        for secret in (token, token.split(".")[2], xoauth2("alice", token)[:40],
                       oauthbearer(token)[:40]):  # fmt: skip
            assert secret not in text
