"""``[server]``: who we are and where state lives."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from mtaserver.config.reader import Reader

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    hostname: str  # our name in EHLO, Received:, Message-ID and DSNs
    data_dir: Path  # the SQLite database and other state
    log_level: str
    secret_file: Path  # HMAC key for VERP return paths; created by dev-setup / on first start
    drain_timeout: float  # how long SIGTERM waits for SMTP transactions in progress
    # Submission worker processes (mtaserver.workers): 1 = everything in one process.
    workers: int = 1
    # How long a (re)started worker may take to report ready before it is killed (-9).
    worker_start_timeout: float = 60.0


def parse(r: Reader) -> ServerConfig:
    hostname = r.string("hostname", socket.getfqdn())
    if not hostname or " " in hostname:
        raise r.error("hostname", f"expected a host name, got {hostname!r}")
    data_dir = r.path("data_dir", None) or (r.base_dir / "var").resolve()
    cfg = ServerConfig(
        hostname=hostname,
        data_dir=data_dir,
        log_level=r.choice("log_level", LOG_LEVELS, "info"),
        secret_file=r.path("secret_file", None) or data_dir / "secret.key",
        drain_timeout=r.duration("drain_timeout", 30.0),
        workers=_workers(r),
        worker_start_timeout=r.duration("worker_start_timeout", 60.0),
    )
    r.finish()
    return cfg


def _workers(r: Reader) -> int:
    """``workers = "auto"`` (one per CPU) or a count; 1 keeps the single process."""
    if isinstance(r._table.get("workers"), str):
        r.choice("workers", ("auto",))
        return max(1, os.cpu_count() or 1)
    return int(r.integer("workers", 1, min=1, max=256))
