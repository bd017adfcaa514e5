"""The token verifier against a real issuer on loopback: claims, algorithms, JWKS caching."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mtaserver.config.oauth import OAuthConfig
from mtaserver.config.oauth import parse as parse_oauth
from mtaserver.config.reader import Reader
from mtaserver.errors import ConfigError
from mtaserver.oauth import TokenInvalid, TokenUnavailable, TokenVerifier
from mtaserver.oauth.jwks import max_age, parse_jwks
from tests.support.clock import FakeClock
from tests.support.oidc_issuer import AUDIENCE, Issuer


def oauth_config(*tables: dict[str, Any], base: Path | None = None) -> OAuthConfig:
    return parse_oauth(Reader({"issuers": list(tables)}, "config.toml", "oauth", base))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A token PyJWT would refuse to make: alg none, or HMAC keyed with a public key."""
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest() if secret else b""
    return f"{signing}.{b64(sig)}"


def claims_of(issuer: Issuer, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    body = {"iss": issuer.url, "aud": AUDIENCE, "preferred_username": "alice",
            "iat": now, "exp": now + 300}  # fmt: skip
    body.update(extra)
    return body


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    iss = await Issuer().start()
    try:
        yield iss
    finally:
        await iss.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=time.time())


async def verifier_for(issuer: Issuer, clock: FakeClock, **overrides: Any) -> TokenVerifier:
    return TokenVerifier(oauth_config(issuer.issuer_table(**overrides)), clock)


async def test_valid_tokens_of_each_algorithm(issuer: Issuer, clock: FakeClock) -> None:
    v = await verifier_for(issuer, clock)
    try:
        for alg in ("RS256", "ES256", "EdDSA"):
            tok = await v.verify(issuer.token("Alice", alg=alg, now=clock.now()))
            assert tok.issuer == issuer.url and tok.user == "Alice"
            assert tok.scopes == frozenset({"openid", "email", "smtp"})
            assert tok.expires_at == pytest.approx(clock.now() + 300, abs=1)
        with pytest.raises(AttributeError):
            tok.user = "bob"  # type: ignore[misc]  # a frozen value
        assert issuer.jwks_requests == 1  # one fetch served all three keys
    finally:
        await v.aclose()


async def test_time_claims_with_skew(issuer: Issuer, clock: FakeClock) -> None:
    v = await verifier_for(issuer, clock, clock_skew="60s")
    now = clock.now()
    try:
        await v.verify(issuer.token(now=now - 330))  # expired 30 s ago: within the skew
        cases = {
            "token expired": issuer.token(now=now - 400),
            "token not valid yet": issuer.token(now=now, nbf=int(now + 120)),
            "token issued in the future": issuer.token(now=now, iat=int(now + 120), nbf=None),
            "token has no exp claim": issuer.token(now=now, exp=None),
            "exp claim is not a number": issuer.token(now=now, exp="tomorrow"),
        }
        for reason, token in cases.items():
            with pytest.raises(TokenInvalid, match=reason):
                await v.verify(token)
        clock.advance(400)  # the injected clock decides, not the wall clock
        with pytest.raises(TokenInvalid, match="expired"):
            await v.verify(issuer.token(now=now))
    finally:
        await v.aclose()


async def test_audience_issuer_and_user_claim(issuer: Issuer, clock: FakeClock) -> None:
    v = await verifier_for(issuer, clock, audience=["other", AUDIENCE])
    now = clock.now()
    try:
        assert (await v.verify(issuer.token(now=now, aud=["x", AUDIENCE]))).user == "alice"
        with pytest.raises(TokenInvalid, match="audience"):
            await v.verify(issuer.token(now=now, aud="someone-else"))
        with pytest.raises(TokenInvalid, match="audience"):
            await v.verify(issuer.token(now=now, aud=None))
        with pytest.raises(TokenInvalid, match="issuer"):
            await v.verify(issuer.token(now=now, iss="https://evil.example/realms/test"))
        with pytest.raises(TokenInvalid, match="preferred_username"):
            await v.verify(issuer.token(now=now, preferred_username=None))
    finally:
        await v.aclose()
    v = await verifier_for(issuer, clock, user_claim="email", scope_claim="roles")
    try:
        tok = await v.verify(issuer.token("bob", now=now, roles=["mail.send", 3]))
        assert tok.user == "bob@example.com" and tok.scopes == frozenset({"mail.send"})
    finally:
        await v.aclose()


async def test_wrong_issuer_signature_is_refused(clock: FakeClock) -> None:
    """Same iss and kid, keys of another provider: the signature decides."""
    real, fake = await Issuer().start(), Issuer()
    v = await verifier_for(real, clock)
    try:
        fake.port = real.port
        with pytest.raises(TokenInvalid, match="signature"):
            await v.verify(fake.token(now=clock.now()))
        body = real.token(now=clock.now()).split(".")
        tampered = ".".join([body[0], b64(json.dumps(claims_of(real, preferred_username="root")
                                                     ).encode()), body[2]])  # fmt: skip
        with pytest.raises(TokenInvalid, match="signature"):
            await v.verify(tampered)
    finally:
        await v.aclose()
        await real.stop()


async def test_alg_none_and_hmac_key_confusion(issuer: Issuer, clock: FakeClock) -> None:
    v = await verifier_for(issuer, clock)
    try:
        await v.verify(issuer.token(now=clock.now()))  # keys cached
        claims = claims_of(issuer)
        for token in (
            forge({"alg": "none", "typ": "JWT"}, claims, None),
            forge({"alg": "none", "kid": "rsa1"}, claims, None),
            forge({"alg": "HS256", "kid": "rsa1"}, claims, issuer.rsa_public_pem()),
            forge({"alg": "HS256"}, claims, issuer.rsa_public_pem()),
            forge(
                {"alg": "HS256", "kid": "rsa1"},
                claims,
                json.dumps(issuer.jwks()["keys"][0]).encode(),
            ),
        ):
            with pytest.raises(TokenInvalid, match="algorithm"):
                await v.verify(token)
        # RS256 named with the EC key's kid: the key type does not fit the algorithm
        with pytest.raises(TokenInvalid, match="signature"):
            await v.verify(issuer.token(now=clock.now(), alg="RS256", kid="ec1"))
    finally:
        await v.aclose()
    # An allow-list without RS256 refuses RS256 even with a good signature.
    v = await verifier_for(issuer, clock, algorithms=["ES256"])
    try:
        with pytest.raises(TokenInvalid, match="algorithm 'RS256'"):
            await v.verify(issuer.token(now=clock.now()))
        assert (await v.verify(issuer.token(now=clock.now(), alg="ES256"))).user == "alice"
    finally:
        await v.aclose()


async def test_garbage_and_oversized_tokens(issuer: Issuer, clock: FakeClock) -> None:
    v = await verifier_for(issuer, clock)
    try:
        for junk in ("", "abc", "a.b", "....", "e30.e30.", "!!.!!.!!", "W10.W10.x",
                     b64(b"[" * 5000) + ".e30.x"):  # fmt: skip
            with pytest.raises(TokenInvalid):
                await v.verify(junk)
        big = issuer.token(now=clock.now(), pad="x" * (1024 * 1024))
        started = time.perf_counter()
        with pytest.raises(TokenInvalid, match="larger than 16384 bytes") as info:
            await v.verify(big)
        assert info.value.status == "invalid_request"
        assert time.perf_counter() - started < 0.5  # refused before any parsing
        assert issuer.jwks_requests == 0
    finally:
        await v.aclose()


async def test_unknown_kid_refreshes_at_a_bounded_rate(issuer: Issuer, clock: FakeClock) -> None:
    v = await verifier_for(issuer, clock, jwks_refresh_interval="30s")
    try:
        issuer.published = {"rsa1"}
        await v.verify(issuer.token(now=clock.now()))
        assert issuer.jwks_requests == 1
        clock.advance(31)
        for i in range(50):  # made-up kids: one refresh, then refused from the cache
            with pytest.raises(TokenInvalid, match="unknown key id"):
                await v.verify(issuer.token(now=clock.now(), kid=f"bogus{i}"))
        assert issuer.jwks_requests == 2
        # The provider rotates in a new key: within the interval it is not fetched ...
        issuer.published = {"rsa1", "ec1"}
        with pytest.raises(TokenInvalid, match="unknown key id"):
            await v.verify(issuer.token(now=clock.now(), alg="ES256"))
        # ... after it, the unknown kid triggers a refresh and the token is accepted.
        clock.advance(31)
        assert (await v.verify(issuer.token(now=clock.now(), alg="ES256"))).user == "alice"
        assert issuer.jwks_requests == 3
    finally:
        await v.aclose()


async def test_concurrent_tokens_share_one_fetch(issuer: Issuer, clock: FakeClock) -> None:
    v = await verifier_for(issuer, clock)
    try:
        tokens = [issuer.token(f"user{i}", now=clock.now()) for i in range(20)]
        users = await asyncio.gather(*(v.verify(t) for t in tokens))
        assert [u.user for u in users] == [f"user{i}" for i in range(20)]
        assert issuer.jwks_requests == 1
    finally:
        await v.aclose()


async def test_cache_control_max_age(clock: FakeClock) -> None:
    assert max_age(None, 30, 86400) == 300
    assert max_age("public, max-age=3600", 30, 86400) == 3600
    assert max_age("max-age=5", 30, 86400) == 30  # never more often than the interval
    assert max_age("max-age=99999999", 30, 86400) == 86400
    assert max_age("no-cache", 30, 86400) == 30
    assert max_age("no-store, max-age=600", 30, 86400) == 30
    issuer = await Issuer(cache_control="max-age=600").start()
    v = await verifier_for(issuer, clock)
    try:
        await v.verify(issuer.token(now=clock.now()))
        clock.advance(590)
        await v.verify(issuer.token(now=clock.now()))
        assert issuer.jwks_requests == 1  # still fresh
        clock.advance(20)
        await v.verify(issuer.token(now=clock.now()))
        assert issuer.jwks_requests == 2  # max-age passed: fetched again
    finally:
        await v.aclose()
        await issuer.stop()


@pytest.mark.parametrize("mode", ["down", "garbage", "slow", "refuse"])
async def test_jwks_unavailable_is_temporary(mode: str, clock: FakeClock) -> None:
    issuer = await Issuer().start()
    issuer.mode = mode
    issuer.slow_seconds = 10.0
    v = await verifier_for(issuer, clock, jwks_timeout="1s")
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    try:
        if mode == "refuse":
            await issuer.stop()
        token = issuer.token(now=clock.now())
        started = time.perf_counter()
        with pytest.raises(TokenUnavailable, match="JWKS fetch failed"):
            await v.verify(token)
        elapsed = time.perf_counter() - started
        assert elapsed < 3.0, elapsed  # the fetch timeout, not the endpoint, decides
        if mode == "slow":
            assert elapsed >= 0.9 and len(gaps) >= 5 and max(gaps) < 0.5  # the loop ran on
        # Within the refresh interval a failure is answered from memory, no new fetch.
        before = issuer.jwks_requests
        with pytest.raises(TokenUnavailable):
            await v.verify(token)
        assert issuer.jwks_requests == before
    finally:
        task.cancel()
        await v.aclose()
        await issuer.stop()


async def test_keys_stay_in_use_while_the_endpoint_is_down(
    issuer: Issuer, clock: FakeClock
) -> None:
    v = await verifier_for(issuer, clock, jwks_max_age="1h")
    try:
        await v.verify(issuer.token(now=clock.now()))
        issuer.mode = "down"
        clock.advance(400)  # past max-age=300
        assert (await v.verify(issuer.token(now=clock.now()))).user == "alice"
        assert issuer.jwks_requests == 2
        clock.advance(3600)  # past jwks_max_age since the last good fetch
        with pytest.raises(TokenUnavailable):
            await v.verify(issuer.token(now=clock.now()))
    finally:
        await v.aclose()


async def test_static_jwks_file(issuer: Issuer, clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    table = issuer.issuer_table(jwks_file="jwks.json")
    del table["jwks_uri"]
    v = TokenVerifier(oauth_config(table, base=tmp_path), clock)
    assert (await v.verify(issuer.token(now=clock.now(), alg="EdDSA"))).user == "alice"
    assert issuer.jwks_requests == 0
    path.write_text("<html>")
    with pytest.raises(ConfigError, match=r"oauth.issuers\[0\].jwks_file: .*not JSON"):
        TokenVerifier(oauth_config(table, base=tmp_path), clock)
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    with pytest.raises(ConfigError, match="no usable signing keys"):
        TokenVerifier(oauth_config(table, base=tmp_path), clock)


def test_parse_jwks_skips_unusable_keys(issuer: Issuer) -> None:
    doc = issuer.jwks()
    doc["keys"] += [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},  # symmetric: never
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "kid": "broken", "crv": "P-256", "x": "AA", "y": "AA"},
        "not an object",
    ]
    keys = parse_jwks(json.dumps(doc).encode())
    assert set(keys.keys) == {"rsa1", "ec1", "ed1"}
    with pytest.raises(ValueError, match="not a JWKS"):
        parse_jwks(b'{"kty": "RSA"}')


async def test_two_issuers_route_by_iss(clock: FakeClock) -> None:
    a, b = await Issuer("a").start(), await Issuer("b").start()
    v = TokenVerifier(oauth_config(a.issuer_table(), b.issuer_table(user_claim="email")), clock)
    try:
        assert (await v.verify(a.token("x", now=clock.now()))).user == "x"
        got = await v.verify(b.token("y", now=clock.now()))
        assert got.user == "y@example.com" and got.issuer == b.url
        with pytest.raises(TokenInvalid, match="signature"):  # b's iss, a's key
            await v.verify(a.token("x", now=clock.now(), iss=b.url))
    finally:
        await v.aclose()
        await a.stop()
        await b.stop()


async def test_a_closed_verifier_fetches_nothing(issuer: Issuer, clock: FakeClock) -> None:
    """After SIGHUP replaced it, sessions that still hold it use its cached keys only."""
    v = await verifier_for(issuer, clock)
    await v.verify(issuer.token(now=clock.now()))
    await v.aclose()
    assert (await v.verify(issuer.token(now=clock.now()))).user == "alice"
    clock.advance(400)
    assert (await v.verify(issuer.token(now=clock.now()))).user == "alice"
    assert issuer.jwks_requests == 1
    fresh = await verifier_for(issuer, clock)
    await fresh.aclose()
    with pytest.raises(TokenUnavailable):
        await fresh.verify(issuer.token(now=clock.now()))
    assert issuer.jwks_requests == 1
