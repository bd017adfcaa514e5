"""``[cluster]``: this node's identity and the Redis that shares shaping across nodes.

Present means "one of several nodes". ``redis`` holds the cluster-wide connection leases
(one per open SMTP connection, idle pooled ones included, renewed every ``lease / 3``),
rate buckets, suspensions and the node registry; without it (or while it is unreachable)
each node shapes locally at ``limit / nodes``. The password is never in the URL: it comes
from ``password_file`` or the environment variable ``password_env`` and is read when the
client connects (config does no secret I/O).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mtaserver.config.reader import Reader

_NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_PREFIX = re.compile(r"^[A-Za-z0-9._:-]{0,64}$")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is: parsed from ``redis://host:port/db`` or ``rediss://`` (TLS)."""

    host: str
    port: int
    db: int
    tls: bool
    username: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    node_id: str
    nodes: int = 1  # expected node count: the degraded limit is limit / nodes
    redis: RedisTarget | None = None
    password_file: Path | None = None
    password_env: str | None = None
    tls_ca_file: Path | None = None
    prefix: str = "mtaserver:"  # every key this cluster writes starts with it
    timeout: float = 0.5  # per Redis call; a slower answer counts as "unreachable"
    lease: float = 30.0  # a connection lease not renewed for this long is freed
    heartbeat: float = 5.0  # node registry update interval; stale after 3 missed
    reconnect: float = 1.0  # how often a degraded node tries Redis again


def default_node_id(hostname: str | None = None) -> str:
    """The node id when ``node_id`` is not set: the host name's first label."""
    name = (hostname or socket.gethostname()).split(".")[0] or "node"
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)[:64]


def parse_redis_url(r: Reader, key: str, url: str) -> RedisTarget:
    expected = "expected redis://host:port/db or rediss://host:port/db"
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise r.error(key, f"{expected}, got {url!r}")
    if parts.password:
        raise r.error(key, "no password in the URL: use password_file or password_env")
    if parts.query or parts.fragment:
        raise r.error(key, f"{expected} (no query options), got {url!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise r.error(key, f"{expected}, got a bad port in {url!r}") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise r.error(key, f"{expected}: the database is a number, got {path!r}")
    return RedisTarget(
        host=parts.hostname,
        port=port,
        db=int(path or 0),
        tls=parts.scheme == "rediss",
        username=parts.username or None,
    )


def _positive(r: Reader, key: str, default: float) -> float:
    value: float = r.duration(key, default)
    if value <= 0:
        raise r.error(key, f"expected a duration > 0, got {value:g}s")
    return value


def parse(r: Reader, hostname: str) -> ClusterConfig:
    node_id = r.string("node_id", None)
    if node_id is None:
        node_id = default_node_id(hostname)
    elif not _NODE_ID.match(node_id):
        raise r.error("node_id", f"expected 1-64 of A-Z a-z 0-9 . _ -, got {node_id!r}")
    url = r.string("redis", None)
    target = None if url is None else parse_redis_url(r, "redis", url)
    prefix = r.string("prefix", "mtaserver:")
    if not _PREFIX.match(prefix):
        raise r.error("prefix", f"expected up to 64 of A-Z a-z 0-9 . _ : -, got {prefix!r}")
    password_file = r.path("password_file", None, must_exist=True, readable=True)
    password_env = r.string("password_env", None)
    if password_file is not None and password_env is not None:
        raise r.error("password_env", "set password_file or password_env, not both")
    ca = r.path("tls_ca_file", None, must_exist=True, readable=True)
    if ca is not None and (target is None or not target.tls):
        raise r.error("tls_ca_file", "only used with a rediss:// URL in cluster.redis")
    cfg = ClusterConfig(
        node_id=node_id,
        nodes=r.integer("nodes", 1, min=1),
        redis=target,
        password_file=password_file,
        password_env=password_env,
        tls_ca_file=ca,
        prefix=prefix,
        timeout=_positive(r, "timeout", 0.5),
        lease=_positive(r, "lease", 30.0),
        heartbeat=_positive(r, "heartbeat", 5.0),
        reconnect=_positive(r, "reconnect", 1.0),
    )
    if cfg.lease < 3 * cfg.timeout:
        raise r.error("lease", f"expected at least 3 times timeout ({3 * cfg.timeout:g}s)")
    r.finish()
    return cfg
