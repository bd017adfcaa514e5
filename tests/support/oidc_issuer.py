"""A small OpenID Connect issuer on loopback: discovery document, JWKS, signed tokens.

Keys are generated with ``cryptography`` (RSA 2048, P-256, Ed25519), tokens signed with
PyJWT — the same library the server verifies with, but through its signing side. The JWKS
endpoint can be switched to fail the ways real ones do (``mode``): ``"down"`` (503),
``"slow"`` (answers after ``slow_seconds``), ``"garbage"`` (200 with HTML), ``"refuse"``
(the socket is closed: connection refused).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

AUDIENCE = "mtaserver"


class Issuer:
    def __init__(self, realm: str = "test", cache_control: str | None = "max-age=300") -> None:
        self.realm = realm
        self.cache_control = cache_control
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.mode = "ok"
        self.slow_seconds = 30.0
        self.jwks_requests = 0
        self.published = {"rsa1", "ec1", "ed1"}  # kids the JWKS serves
        self.port = 0
        self._runner: web.AppRunner | None = None

    # -- HTTP ----------------------------------------------------------------------------
    async def start(self) -> Issuer:
        app = web.Application()
        app.router.add_get(f"/realms/{self.realm}/.well-known/openid-configuration", self._disco)
        app.router.add_get(f"/realms/{self.realm}/protocol/openid-connect/certs", self._jwks)
        # A short shutdown: stop() cancels a "slow" JWKS answer instead of waiting it out.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # the bound port
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/realms/{self.realm}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.url}/protocol/openid-connect/certs"

    def issuer_table(self, **overrides: Any) -> dict[str, Any]:
        """One ``[[oauth.issuers]]`` table for this issuer."""
        table: dict[str, Any] = {
            "issuer": self.url,
            "audience": AUDIENCE,
            "jwks_uri": self.jwks_uri,
            "user_claim": "preferred_username",
        }
        table.update(overrides)
        return table

    async def _disco(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.url,
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        })  # fmt: skip

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.jwks_requests += 1
        if self.mode == "down":
            return web.Response(status=503, text="maintenance")
        if self.mode == "garbage":
            return web.Response(text="<html>login</html>", content_type="text/html")
        if self.mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
        return web.json_response(self.jwks(), headers=headers)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, algo, key, alg in (
            ("rsa1", RSAAlgorithm, self.rsa.public_key(), "RS256"),
            ("ec1", ECAlgorithm, self.ec.public_key(), "ES256"),
            ("ed1", OKPAlgorithm, self.ed.public_key(), "EdDSA"),
        ):
            if kid not in self.published:
                continue
            jwk = json.loads(algo.to_jwk(key))  # type: ignore[attr-defined]
            jwk.update(kid=kid, use="sig", alg=alg)
            keys.append(jwk)
        return {"keys": keys}

    # -- tokens --------------------------------------------------------------------------
    def token(
        self, user: str = "alice", *, alg: str = "RS256", kid: str | None = None,
        now: float | None = None, lifetime: float = 300.0, headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:  # fmt: skip
        """A signed access token; ``claims`` override or (with value None) drop a claim."""
        t = time.time() if now is None else now
        body: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": str(uuid.uuid4()),
            "preferred_username": user,
            "email": f"{user}@example.com",
            "scope": "openid email smtp",
            "iat": int(t),
            "nbf": int(t),
            "exp": int(t + lifetime),
            "jti": uuid.uuid4().hex,
        }
        for k, v in claims.items():
            if v is None:
                body.pop(k, None)
            else:
                body[k] = v
        key: Any
        if alg.startswith(("RS", "PS")):
            key, default_kid = self.rsa, "rsa1"
        elif alg.startswith("ES"):
            key, default_kid = self.ec, "ec1"
        elif alg == "EdDSA":
            key, default_kid = self.ed, "ed1"
        else:
            raise ValueError(alg)
        hdr = {"kid": kid or default_kid, "typ": "at+jwt"}
        hdr.update(headers or {})
        return jwt.encode(body, key, algorithm=alg, headers=hdr)

    def rsa_public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
