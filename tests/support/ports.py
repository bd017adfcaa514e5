"""Ports for servers a test configures before they start.

A port taken by binding to 0 and closing can be handed out again by the kernel a moment
later, to this test's next ``free_port()`` or to another worker's, and the second server
then fails with EADDRINUSE (CI saw a daemon's admin listener land on its own SMTPS port).
So each pytest-xdist worker takes ports from its own block below the kernel's ephemeral
range, in turn, and skips any that cannot be bound right now. Kernel-chosen ports (the
sinks bind to 0 themselves) come from the ephemeral range and never meet these.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path

_LOW = 15000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _block() -> range:
    """This worker's ports: the span below the ephemeral range, split between workers."""
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    high = max(_LOW + 1000, _ephemeral_low())
    size = (high - _LOW) // workers
    start = _LOW + (index % workers) * size
    return range(start, start + size)


def _cycle() -> Iterator[int]:
    block = _block()
    # start at a point that differs per process, so a rerun does not meet TIME_WAIT sockets
    offset = (os.getpid() * 7919) % len(block)
    return itertools.cycle([*block[offset:], *block[:offset]])


_PORTS = _cycle()


def free_port(host: str = "127.0.0.1") -> int:
    """A port no other free_port() call in this run hands out until the block wraps."""
    for _ in range(1000):
        port = next(_PORTS)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no bindable port in {_block()} on {host}")
