"""Submission users: password hashing, verification, failure throttling.

Passwords are hashed with scrypt (memory-hard; n=2^14, r=8, p=1 ≈ 16 MiB and ~40 ms here)
and verified in a small thread pool, never on the event loop: aiosmtpd's own
``authenticator`` hook is synchronous and would stall every session (PITFALLS). An unknown
user is checked against a dummy hash with the same parameters, so "no such user" and
"wrong password" cost the same time and give the same answer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from mtaserver.clock import Clock, SystemClock
from mtaserver.config.submission import AuthThrottleConfig
from mtaserver.errors import MtaError

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_DKLEN = 32
_MAXMEM = 64 * 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9._@+\-]{1,128}$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?)+$"
)

# The shortest password `mtaserver user add` and the admin API accept.
MIN_PASSWORD = 8


class UserError(MtaError, ValueError):
    """An operator mistake in a user command (bad name, unknown user, duplicate)."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    domains: frozenset[str]

    def owns(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.domains


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    domains: tuple[str, ...]
    created_at: float
    updated_at: float


def normalize_name(name: str) -> str:
    """User names are case-insensitive (they are often e-mail addresses)."""
    name = name.strip().lower()
    if not _NAME.match(name):
        raise UserError(f"invalid user name {name!r}: use 1-128 of A-Z a-z 0-9 . _ @ + -")
    return name


def normalize_domain(domain: str) -> str:
    d = domain.strip().lower().rstrip(".")
    try:
        d = d.encode("idna").decode("ascii")
    except UnicodeError:
        raise UserError(f"invalid domain {domain!r}") from None
    if not _DOMAIN.match(d):
        raise UserError(f"invalid domain {domain!r}")
    return d


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64, no padding)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=_DKLEN,
        maxmem=_MAXMEM,
    )
    return "$".join(["scrypt", str(n), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)])


def verify_password(password: bytes, encoded: str) -> bool:
    """Constant-time check of ``password`` against an encoded hash; False if malformed."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(
            password, salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected),
            maxmem=_MAXMEM,
        )  # fmt: skip
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


class UserLookup(Protocol):
    """What verification needs from the user store."""

    async def lookup(self, name: str) -> tuple[User, str] | None: ...


class Authenticator:
    """Verifies credentials off the event loop; same work and answer for unknown users.

    Like Dovecot's auth cache, a successful check is remembered for ``cache_ttl`` seconds
    as a keyed SHA-256 of (user, stored hash, password) under a per-process random key, and
    identical checks already running are shared: an application that opens fifty
    connections with the same credentials pays for one KDF run, not fifty. Only successes
    are cached, so a wrong password (or an unknown user) always costs the full KDF; a
    password change alters the stored hash and so misses the cache.
    """

    def __init__(
        self, store: UserLookup, *, workers: int = 2, cache_ttl: float = 300.0,
        cache_size: int = 10_000, clock: Clock | None = None,
    ) -> None:  # fmt: skip
        self._store = store
        self._clock: Clock = clock or SystemClock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="auth")
        self._dummy = hash_password(secrets.token_urlsafe(16))
        self._key = secrets.token_bytes(32)
        self._ttl = cache_ttl
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, float] = OrderedDict()  # digest → expiry (monotonic)
        self._inflight: dict[bytes, asyncio.Future[bool]] = {}
        self.kdf_runs = 0  # for metrics and tests

    async def verify(self, login: bytes, password: bytes) -> User | None:
        try:
            name = normalize_name(login.decode("utf-8"))
        except (UnicodeDecodeError, UserError):
            name = None
        found = await self._store.lookup(name) if name is not None else None
        encoded = found[1] if found is not None else self._dummy
        digest = hmac.new(
            self._key, b"\0".join([(name or "").encode(), encoded.encode(), password]),
            hashlib.sha256,
        ).digest()  # fmt: skip
        now = self._clock.monotonic()
        expiry = self._cache.get(digest)
        if found is not None and expiry is not None and expiry > now:
            return found[0]
        ok = await self._check(digest, password, encoded)
        if ok and found is not None:
            self._cache[digest] = now + self._ttl
            self._cache.move_to_end(digest)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return found[0]
        return None

    async def _check(self, digest: bytes, password: bytes, encoded: str) -> bool:
        """One KDF run per distinct credential at a time; concurrent twins await it."""
        running = self._inflight.get(digest)
        if running is not None:
            return await asyncio.shield(running)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, verify_password, password, encoded)
        self.kdf_runs += 1
        self._inflight[digest] = future
        try:
            return await asyncio.shield(future)
        finally:
            if self._inflight.get(digest) is future:
                del self._inflight[digest]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Failures:
    count: int
    first: float


class AuthThrottle:
    """Counts AUTH failures per client IP and per user name within a window.

    The delay is applied by the failing session only (``asyncio.sleep``), so other clients
    are never slowed; once a key reaches ``lockout_after`` every AUTH from it is answered
    ``421 4.7.0`` without checking the password, until the window passes.
    """

    def __init__(self, settings: AuthThrottleConfig, clock: Clock, *, max_tracked: int = 100_000):
        self.settings = settings
        self._clock = clock
        self._max_tracked = max_tracked
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def _get(self, key: str) -> int:
        entry = self._failures.get(key)
        if entry is None:
            return 0
        if self._clock.monotonic() - entry.first > self.settings.window:
            del self._failures[key]
            return 0
        return entry.count

    def locked(self, ip: str, user: str | None) -> bool:
        limit = self.settings.lockout_after
        if self._get(f"ip:{ip}") >= limit:
            return True
        return user is not None and self._get(f"user:{user}") >= limit

    def failed(self, ip: str, user: str | None) -> float:
        """Record a failure; return the delay this session should wait before answering."""
        worst = 0
        for key in (f"ip:{ip}", f"user:{user}" if user is not None else None):
            if key is None:
                continue
            count = self._get(key) + 1
            entry = self._failures.get(key)
            if entry is None:
                self._failures[key] = _Failures(count, self._clock.monotonic())
            else:
                entry.count = count
                self._failures.move_to_end(key)
            worst = max(worst, count)
        while len(self._failures) > self._max_tracked:
            self._failures.popitem(last=False)
        over = worst - self.settings.delay_after
        if over <= 0:
            return 0.0
        return float(min(self.settings.max_delay, self.settings.delay * 2 ** (over - 1)))

    def succeeded(self, user: str) -> None:
        self._failures.pop(f"user:{user}", None)
