"""Verify an OAuth 2.0 access token that is a signed JWT (RFC 7519, RFC 9068 profile).

PyJWT checks the JWS signature (through ``cryptography``); everything about the claims is
checked here against the injected clock: ``iss`` exactly, ``aud`` against the configured
audiences, ``exp`` (required), ``nbf`` and ``iat`` with the issuer's clock skew. The order
is chosen so hostile input costs little: size cap first, then the header's ``alg`` against
the allow-list (``none`` and HS* can never be on it, see :mod:`mtaserver.config.oauth`),
then the key, then the signature — claims are believed only after it. One verification is
a single RSA/ECDSA/Ed25519 public-key operation (tens of microseconds), so it runs on the
loop; only the JWKS fetch waits, and that is asynchronous.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

from jwt import PyJWK
from jwt.api_jws import PyJWS
from jwt.exceptions import PyJWTError

from mtaserver.clock import Clock
from mtaserver.config.oauth import IssuerConfig, OAuthConfig
from mtaserver.oauth.jwks import JwksUnavailable, RemoteJwks, StaticJwks


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    issuer: str
    user: str  # the value of the issuer's user_claim, as the token has it
    scopes: frozenset[str]
    expires_at: float  # unix time


class TokenInvalid(Exception):
    """The token is not acceptable (permanent: a new token is needed).

    ``status`` is the RFC 6750 error code the client is told: ``invalid_token`` for a bad
    token, ``invalid_request`` for something that is not a token at all.
    """

    def __init__(self, reason: str, status: str = "invalid_token") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class TokenUnavailable(Exception):
    """The token cannot be checked now (the issuer's keys are unavailable): try later."""


def looks_like_jwt(text: str) -> bool:
    """A JWS compact serialization (``eyJ…``, three parts): told apart from API keys
    (``SG.…``) and admin tokens (``mta_…``) without parsing anything."""
    return text.startswith("eyJ") and text.count(".") == 2


class _Issuer:
    def __init__(self, cfg: IssuerConfig, clock: Clock, where: str) -> None:
        self.cfg = cfg
        self.jwks: RemoteJwks | StaticJwks
        if cfg.jwks_file is not None:
            self.jwks = StaticJwks(cfg.jwks_file, f"{where}.jwks_file")
        else:
            self.jwks = RemoteJwks(cfg, clock)


class TokenVerifier:
    """All configured issuers; a token is routed to one by its (unverified) ``iss``."""

    def __init__(self, cfg: OAuthConfig, clock: Clock) -> None:
        self.config = cfg
        self._clock = clock
        self._issuers = {
            c.issuer: _Issuer(c, clock, f"oauth.issuers[{i}]") for i, c in enumerate(cfg.issuers)
        }
        self._jws = PyJWS()
        self.max_token_size = cfg.max_token_size

    async def verify(self, token: str) -> VerifiedToken:
        """The verified token, or :class:`TokenInvalid` / :class:`TokenUnavailable`."""
        if len(token) > self.max_token_size:
            raise TokenInvalid(f"token larger than {self.max_token_size} bytes", "invalid_request")
        parts = token.split(".")
        if len(parts) != 3 or not all(parts[:2]):
            raise TokenInvalid("not a signed JWT (expected header.payload.signature)",
                               "invalid_request")  # fmt: skip
        header = _segment(parts[0], "header")
        claims = _segment(parts[1], "payload")
        iss = claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise TokenInvalid("issuer not accepted")
        cfg = issuer.cfg
        if len(token) > cfg.max_token_size:
            raise TokenInvalid(f"token larger than {cfg.max_token_size} bytes", "invalid_request")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in cfg.algorithms:
            raise TokenInvalid(f"algorithm {str(alg)[:20]!r} not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenInvalid("malformed kid")
        try:
            keyset = await issuer.jwks.keys(kid)
        except JwksUnavailable as exc:
            raise TokenUnavailable(str(exc)) from None
        candidates = keyset.find(kid)
        if not candidates:
            raise TokenInvalid("unknown key id" if kid is not None else "no key id")
        payload = self._check_signature(token, alg, candidates)
        return self._check_claims(payload, cfg)

    def _check_signature(
        self, token: str, alg: str, candidates: tuple[dict[str, Any], ...]
    ) -> dict[str, Any]:
        for jwk in candidates:
            if "alg" in jwk and jwk["alg"] != alg:
                continue  # the key is pinned to another algorithm
            try:
                key = PyJWK(jwk, algorithm=alg)  # refuses a key of the wrong type for alg
            except (PyJWTError, ValueError, TypeError, KeyError):
                continue
            try:
                decoded = self._jws.decode_complete(token, key.key, algorithms=[alg])
            except PyJWTError:
                continue
            try:
                payload = json.loads(decoded["payload"])
            except (ValueError, RecursionError):
                raise TokenInvalid("payload is not JSON", "invalid_request") from None
            if not isinstance(payload, dict):
                raise TokenInvalid("payload is not a JSON object", "invalid_request")
            return payload
        raise TokenInvalid("signature does not verify")

    def _check_claims(self, claims: dict[str, Any], cfg: IssuerConfig) -> VerifiedToken:
        now = self._clock.now()
        skew = cfg.clock_skew
        if claims.get("iss") != cfg.issuer:
            raise TokenInvalid("issuer not accepted")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(a, str) and a in cfg.audience for a in auds):
            raise TokenInvalid("audience not accepted")
        exp = _number(claims, "exp", required=True)
        assert exp is not None
        if now > exp + skew:
            raise TokenInvalid("token expired")
        nbf = _number(claims, "nbf")
        if nbf is not None and now + skew < nbf:
            raise TokenInvalid("token not valid yet")
        iat = _number(claims, "iat")
        if iat is not None and now + skew < iat:
            raise TokenInvalid("token issued in the future")
        user = claims.get(cfg.user_claim)
        if not isinstance(user, str) or not user.strip():
            raise TokenInvalid(f"token has no {cfg.user_claim} claim")
        return VerifiedToken(
            issuer=cfg.issuer,
            user=user.strip(),
            scopes=_scopes(claims.get(cfg.scope_claim)),
            expires_at=exp,
        )

    async def aclose(self) -> None:
        for issuer in self._issuers.values():
            await issuer.jwks.aclose()


def _segment(text: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise TokenInvalid(f"JWT {what} is not base64url JSON", "invalid_request") from None
    if not isinstance(value, dict):
        raise TokenInvalid(f"JWT {what} is not a JSON object", "invalid_request")
    return value


def _number(claims: dict[str, Any], name: str, *, required: bool = False) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenInvalid(f"token has no {name} claim")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenInvalid(f"{name} claim is not a number")
    return float(value)


def _scopes(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


class CurrentVerifier:
    """The verifier for the config in force: rebuilt on SIGHUP only when ``[oauth]``
    changed (so cached keys survive unrelated reloads); without issuers every token is
    refused as invalid, so a caller can be wired once whatever the config says."""

    def __init__(self, cfg: OAuthConfig, clock: Clock) -> None:
        self._clock = clock
        self._cfg = cfg
        self._verifier: TokenVerifier | None = TokenVerifier(cfg, clock) if cfg.enabled else None

    async def verify(self, token: str) -> VerifiedToken:
        if self._verifier is None:
            raise TokenInvalid("no [oauth] issuers configured")
        return await self._verifier.verify(token)

    async def apply(self, cfg: OAuthConfig) -> None:
        if cfg == self._cfg:
            return
        old = self._verifier
        self._verifier = TokenVerifier(cfg, self._clock) if cfg.enabled else None
        self._cfg = cfg
        if old is not None:
            await old.aclose()

    async def aclose(self) -> None:
        if self._verifier is not None:
            await self._verifier.aclose()
