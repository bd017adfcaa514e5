"""An issuer's public keys (JWKS): fetched over HTTPS and cached, or read from a file once.

The cache honours the endpoint's ``Cache-Control: max-age`` (bounded by ``jwks_max_age``;
``no-cache``/``no-store`` or nothing at all means "as often as allowed"), and re-fetches
early when a token names a key id it does not know (the provider rotated keys) — but never
more than once per ``jwks_refresh_interval``, so a flood of tokens with made-up ``kid``
values cannot turn us into a load generator against the provider. A failed fetch counts
too: while the endpoint is down, callers get :class:`JwksUnavailable` at once instead of
each waiting for a timeout. Keys from the last good fetch stay in use while the endpoint
fails, up to ``jwks_max_age`` after that fetch. Concurrent callers share one fetch.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from mtaserver.clock import Clock
from mtaserver.config.oauth import IssuerConfig
from mtaserver.errors import ConfigError
from mtaserver.log import get_logger, kv

log = get_logger("oauth")

MAX_JWKS_BYTES = 1024 * 1024  # a real JWKS is a few KiB
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d{1,10})\"?", re.I)
_DEFAULT_TTL = 300.0  # no Cache-Control at all


class JwksUnavailable(Exception):
    """The keys cannot be had right now (endpoint down, slow, or answering garbage)."""


@dataclass(frozen=True, slots=True)
class KeySet:
    """Usable signing keys by ``kid`` (keys without a kid under ``""``)."""

    keys: dict[str, tuple[dict[str, Any], ...]]

    def find(self, kid: str | None) -> tuple[dict[str, Any], ...] | None:
        if kid is not None:
            return self.keys.get(kid)
        if sum(len(v) for v in self.keys.values()) == 1:
            return next(iter(self.keys.values()))  # one key: a kid-less token may use it
        return self.keys.get("")


def parse_jwks(raw: bytes) -> KeySet:
    """Signing keys from a JWKS document; ValueError if it is not one."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWKS: expected {"keys": [...]}')
    keys: dict[str, list[dict[str, Any]]] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        if "d" in jwk or jwk.get("kty") == "oct":
            continue  # private or symmetric material never verifies a token here
        try:
            PyJWK(jwk)
        except (PyJWTError, ValueError, TypeError, KeyError):
            continue  # a key type we cannot use; the others still count
        kid = jwk.get("kid")
        keys.setdefault(kid if isinstance(kid, str) else "", []).append(jwk)
    if not keys:
        raise ValueError("no usable signing keys in the JWKS")
    return KeySet({k: tuple(v) for k, v in keys.items()})


def max_age(cache_control: str | None, floor: float, ceiling: float) -> float:
    """Seconds the fetched keys are fresh for, from the response's Cache-Control."""
    if cache_control is None:
        return max(floor, min(_DEFAULT_TTL, ceiling))
    text = cache_control.lower()
    if "no-store" in text or "no-cache" in text:
        return floor
    m = _MAX_AGE.search(text)
    if m is None:
        return max(floor, min(_DEFAULT_TTL, ceiling))
    return max(floor, min(float(m.group(1)), ceiling))


class StaticJwks:
    """``jwks_file``: read once when the verifier is built (a bad file stops startup)."""

    def __init__(self, path: Path, where: str) -> None:
        try:
            self._keys = parse_jwks(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{where}: {path}: {exc}") from None

    async def keys(self, kid: str | None) -> KeySet:
        return self._keys

    async def aclose(self) -> None:
        return None


class RemoteJwks:
    """``jwks_uri``: fetched on demand, cached, refreshed at a bounded rate."""

    def __init__(self, cfg: IssuerConfig, clock: Clock) -> None:
        assert cfg.jwks_uri is not None
        self._uri = cfg.jwks_uri
        self._cfg = cfg
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = 0.0  # monotonic time of the last good fetch
        self._fresh_until = 0.0
        self._last_attempt: float | None = None
        self._last_error = ""
        self._inflight: asyncio.Future[KeySet] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False  # replaced on SIGHUP: sessions begun before use cached keys only
        self.fetches = 0  # for tests and metrics

    async def keys(self, kid: str | None) -> KeySet:
        """The key set to look ``kid`` up in, fetching when stale or when ``kid`` is new."""
        now = self._clock.monotonic()
        have = self._keys
        fresh = have is not None and now < self._fresh_until
        if fresh and have is not None and have.find(kid) is not None:
            return have
        if self._closed or not self._may_fetch(now):
            if have is not None and now - self._fetched_at <= self._cfg.jwks_max_age:
                return have  # rate-bounded: the caller judges the kid against what we have
            raise JwksUnavailable(self._last_error or "keys not fetched yet")
        try:
            return await self._fetch_shared()
        except JwksUnavailable:
            if have is not None and now - self._fetched_at <= self._cfg.jwks_max_age:
                return have
            raise

    def _may_fetch(self, now: float) -> bool:
        if self._inflight is not None:
            return True  # join the fetch already running
        last = self._last_attempt
        return last is None or now - last >= self._cfg.jwks_refresh_interval

    async def _fetch_shared(self) -> KeySet:
        if self._inflight is None:
            self._last_attempt = self._clock.monotonic()
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._done)
        return await asyncio.shield(self._inflight)

    def _done(self, fut: asyncio.Future[KeySet]) -> None:
        self._inflight = None
        if not fut.cancelled():
            fut.exception()  # mark retrieved: every waiter may have gone away

    async def _fetch(self) -> KeySet:
        self.fetches += 1
        cfg = self._cfg
        try:
            if self._session is None or self._session.closed:
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=cfg.jwks_timeout),
                    headers={"Accept": "application/json"},
                )
            async with self._session.get(self._uri, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                raw = await resp.content.read(MAX_JWKS_BYTES + 1)
                if len(raw) > MAX_JWKS_BYTES:
                    raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
                keys = parse_jwks(raw)
                ttl = max_age(
                    resp.headers.get("Cache-Control"), cfg.jwks_refresh_interval,
                    cfg.jwks_max_age,
                )  # fmt: skip
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as exc:
            self._last_error = f"JWKS fetch failed: {type(exc).__name__}: {exc}"[:300]
            log.warning(kv(event="jwks_fetch_failed", issuer=cfg.issuer, uri=self._uri,
                           error=self._last_error))  # fmt: skip
            raise JwksUnavailable(self._last_error) from None
        now = self._clock.monotonic()
        self._keys = keys
        self._fetched_at = now
        self._fresh_until = now + ttl
        self._last_error = ""
        log.info(kv(event="jwks_fetched", issuer=cfg.issuer, keys=sum(map(len, keys.keys.values())),
                    ttl=round(ttl)))  # fmt: skip
        return keys

    async def aclose(self) -> None:
        self._closed = True
        if self._inflight is not None:
            self._inflight.cancel()
        if self._session is not None:
            await self._session.close()
