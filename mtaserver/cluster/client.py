"""The Redis connection and typed calls of the shaping scripts.

redis-py's asyncio client does the protocol, pooling, TLS and EVALSHA with reload on
NOSCRIPT; this module builds it from ``[cluster]`` (the password read here, from a file or
the environment) with a timeout on every call and no automatic retries — a node must learn
quickly that Redis is gone and fall back, not stall deliveries in retry loops. Every
failure of Redis surfaces as :class:`RedisDown`.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from mtaserver.cluster import scripts
from mtaserver.config.cluster import ClusterConfig
from mtaserver.errors import ConfigError, MtaError

GRANTED, SUSPENDED, NO_SLOT, RATE = 0, 1, 2, 3
Arg = str | int | float


class RedisDown(MtaError):
    """Redis did not answer (refused, timed out, lost the connection, an error reply)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """One answer of the acquire script; ``wait`` in seconds."""

    status: int
    wait: float = 0.0
    by: str = ""


def read_password(cfg: ClusterConfig) -> str | None:
    if cfg.password_file is not None:
        try:
            return cfg.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cluster.password_file: cannot read {cfg.password_file}: {exc}"
            ) from None
    if cfg.password_env is not None:
        value = os.environ.get(cfg.password_env)
        if value is None:
            raise ConfigError(f"cluster.password_env: ${cfg.password_env} is not set")
        return value
    return None


def connect(cfg: ClusterConfig) -> aioredis.Redis:
    """A client for ``cluster.redis`` (no connection is made until the first call)."""
    target = cfg.redis
    if target is None:
        raise ConfigError("cluster.redis: not set")
    kwargs: dict[str, Any] = {}
    if target.tls:
        kwargs.update(ssl=True, ssl_cert_reqs=ssl.CERT_REQUIRED)
        if cfg.tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = str(cfg.tls_ca_file)
    return aioredis.Redis(
        host=target.host,
        port=target.port,
        db=target.db,
        username=target.username,
        password=read_password(cfg),
        socket_timeout=cfg.timeout,
        socket_connect_timeout=cfg.timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        client_name=f"mtaserver-{cfg.node_id}",
        **kwargs,
    )


async def guarded(call: Awaitable[Any]) -> Any:
    """Await a Redis call; every way it can fail becomes :class:`RedisDown`."""
    try:
        return await call
    except (RedisError, OSError, TimeoutError) as exc:
        raise RedisDown(f"redis: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Beat:
    """A heartbeat's answer: Redis's time, and an alive node whose fingerprint differs."""

    now_ms: int
    conflict: str = ""  # that node's id, or ""
    theirs: str = ""  # its fingerprint


@dataclass(frozen=True, slots=True)
class Marks:
    """A sync's answer: Redis's time and each node's last mark (ms, Redis's clock)."""

    now_ms: int
    marks: Mapping[str, int]


class ShapingScripts:
    """The scripts registered on one client; each call is one round trip."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.keys = scripts.Keys(prefix)
        self._acquire = client.register_script(scripts.ACQUIRE)
        self._renew = client.register_script(scripts.RENEW)
        self._keep = client.register_script(scripts.KEEP)
        self._suspend = client.register_script(scripts.SUSPEND)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._sync = client.register_script(scripts.SYNC)

    async def ping(self) -> None:
        await guarded(self.client.ping())

    async def acquire(
        self,
        destination: str,
        lease_id: str,
        *,
        max_connections: int,
        lease: float,
        rate: float | None,
        burst: float,
        reuse: bool = False,
        now_ms: int = 0,
    ) -> Verdict:
        """A new lease ``lease_id`` and a token; with ``reuse`` (the delivery goes over a
        pooled connection whose lease this node holds) the token only."""
        args: list[Arg] = [
            now_ms, lease_id, max_connections, int(lease * 1000), rate or 0, burst,
            1 if reuse else 0,
        ]  # fmt: skip
        out = await guarded(self._acquire(keys=self.keys.shaping(destination), args=args))
        status, wait = int(out[0]), int(out[1]) / 1000.0
        return Verdict(status, wait, str(out[2]) if len(out) > 2 else "")

    async def release(self, destination: str, lease_ids: Sequence[str]) -> None:
        if lease_ids:
            await guarded(self.client.zrem(self.keys.leases(destination), *lease_ids))

    async def renew(
        self, destination: str, lease_ids: Sequence[str], lease: float, now_ms: int = 0
    ) -> int:
        args: list[Arg] = [now_ms, int(lease * 1000), *lease_ids]
        return int(await guarded(self._renew(keys=[self.keys.leases(destination)], args=args)))

    async def keep(
        self,
        destination: str,
        lease_ids: Sequence[str],
        lease: float,
        max_connections: int,
        now_ms: int = 0,
    ) -> list[str]:
        """Renew held leases; an expired one is taken again only under the limit. Returns
        the ids that could not be kept (their connections must close)."""
        args: list[Arg] = [now_ms, int(lease * 1000), max_connections, *lease_ids]
        out = await guarded(self._keep(keys=[self.keys.leases(destination)], args=args))
        return [str(x) for x in out[1:]]

    async def suspend(self, destination: str, seconds: float, by: str, now_ms: int = 0) -> float:
        """Suspend for everyone; returns the seconds left of the suspension in force."""
        args: list[Arg] = [now_ms, max(1, int(seconds * 1000)), by]
        left = await guarded(self._suspend(keys=[self.keys.suspension(destination)], args=args))
        return int(left) / 1000.0

    async def heartbeat(
        self,
        node_id: str,
        version: str,
        started_at: float,
        counts: str,
        keep: float,
        *,
        fingerprint: str = "",
        alive: float = 15.0,
        strict: bool = False,
        shaping: str = "{}",
    ) -> Beat:
        """Write this node's entry (unless ``strict`` and another alive node's fingerprint
        differs); the answer names such a node either way."""
        keys = [self.keys.nodes, self.keys.node(node_id), self.keys.fingerprints]
        args: list[Arg] = [
            0, node_id, version, f"{started_at:.3f}", counts, int(keep * 1000),
            fingerprint, int(alive * 1000), 1 if strict else 0, shaping,
        ]  # fmt: skip
        out = await guarded(self._heartbeat(keys=keys, args=args))
        return Beat(int(out[0]), str(out[1]), str(out[2]))

    async def sync(self, node_id: str, window: float, now_ms: int = 0) -> Marks:
        """Mark this node as having every connection leased; every node's mark of the
        last ``window`` seconds comes back (this one's included)."""
        args: list[Arg] = [now_ms, node_id, max(1, int(window * 1000))]
        out = await guarded(self._sync(keys=[self.keys.synced], args=args))
        flat = [str(x) for x in out[1:]]
        marks = {flat[i]: int(float(flat[i + 1])) for i in range(0, len(flat) - 1, 2)}
        return Marks(int(out[0]), marks)

    async def unsync(self, node_id: str) -> None:
        """Drop this node's mark (a clean stop): no other node waits for it after an outage."""
        await guarded(self.client.zrem(self.keys.synced, node_id))

    async def active(self, destination: str) -> int:
        """Unexpired leases of a destination across the cluster (for status and tests)."""
        t = await guarded(self.client.time())
        now_ms = int(t[0]) * 1000 + int(t[1]) // 1000
        key = self.keys.leases(destination)
        return int(await guarded(self.client.zcount(key, f"({now_ms}", "+inf")))
