"""The per-IP connection cap (``[submission] max_connections_per_ip``) across every worker.

The kernel spreads one client's connections over the workers (SO_REUSEPORT), so a count
kept in each worker would allow N times the cap. The counts live instead in one shared
file (a memfd the owner creates; every worker inherits it): one region per worker, each an
open-addressing table IP → that worker's open connections, written only by that worker.
Admitting takes one lock over the file (``fcntl.lockf``: two syscalls; the kernel drops it
if the holder dies), sums the IP's counts over every region and, under the cap, adds one
to its own. No round trip to the owner, no owner CPU per connection.

A worker that dies leaves its counts behind: the owner clears its region when it sees the
death, and the worker that replaces it clears it again before it listens.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import socket
import struct
import zlib

from mtaserver.ratelimit import Refusal

SLOTS = 16384  # distinct client IPs one worker can count at once (then: counted locally)
_ENTRY = struct.Struct("16sI")  # IP as 16 bytes (IPv4 mapped into IPv6), open connections
REGION = SLOTS * _ENTRY.size
_EMPTY = bytes(_ENTRY.size)
_V4_PREFIX = b"\x00" * 10 + b"\xff\xff"
FD_ENV = "MTASERVER_CONNCAP_FD"  # how the owner tells a worker which inherited fd it is


def create(workers: int) -> int:
    """The owner's file descriptor of a zeroed table for ``workers`` regions."""
    fd = os.memfd_create("mtaserver-connections", 0)  # inheritable via pass_fds only
    os.ftruncate(fd, workers * REGION)
    return fd


def clear(fd: int, index: int) -> None:
    """Forget every connection worker ``index`` counted (it died)."""
    with mmap.mmap(fd, 0) as mm:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            mm[index * REGION : (index + 1) * REGION] = bytes(REGION)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)


def _key(ip: str) -> bytes:
    host = ip.split("%", 1)[0]
    try:
        return _V4_PREFIX + socket.inet_pton(socket.AF_INET, host)
    except OSError:
        pass
    try:
        return socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        return hashlib.blake2b(host.encode("utf-8", "replace"), digest_size=16).digest()


class SharedConnectionCap:
    """:class:`~mtaserver.smtpd.Admission` for worker ``index`` of ``workers``."""

    def __init__(self, fd: int, index: int, workers: int, max_per_ip: int) -> None:
        self.max_per_ip = max_per_ip
        self._fd = fd
        self._index = index
        self._workers = workers
        self._mm = mmap.mmap(fd, workers * REGION)
        self._own = index * REGION
        self._overflow: dict[bytes, int] = {}  # admitted when this region was full
        with self._locked():
            self._mm[self._own : self._own + REGION] = bytes(REGION)

    def close(self) -> None:
        self._mm.close()

    # -- Admission ---------------------------------------------------------------------
    def admit(self, ip: str) -> Refusal | None:
        key = _key(ip)
        with self._locked():
            total = sum(self._find(w * REGION, key)[1] for w in range(self._workers))
            total += self._overflow.get(key, 0)
            if total >= self.max_per_ip:
                return Refusal.PER_IP
            slot, count = self._find(self._own, key)
            if slot < 0:
                self._overflow[key] = self._overflow.get(key, 0) + 1
            else:
                _ENTRY.pack_into(self._mm, self._own + slot * _ENTRY.size, key, count + 1)
        return None

    def release(self, ip: str) -> None:
        key = _key(ip)
        if self._overflow.get(key):
            self._overflow[key] -= 1
            if not self._overflow[key]:
                del self._overflow[key]
            return
        with self._locked():
            slot, count = self._find(self._own, key)
            if slot < 0 or count == 0:
                return
            if count > 1:
                _ENTRY.pack_into(self._mm, self._own + slot * _ENTRY.size, key, count - 1)
            else:
                self._delete(slot)

    def count(self, ip: str) -> int:
        """Open connections from ``ip`` in the whole daemon."""
        key = _key(ip)
        with self._locked():
            total = sum(self._find(w * REGION, key)[1] for w in range(self._workers))
        return total + self._overflow.get(key, 0)

    # -- the table (linear probing; an entry with count 0 is an empty slot) ------------
    def _locked(self) -> _FileLock:
        return _FileLock(self._fd)

    def _find(self, base: int, key: bytes) -> tuple[int, int]:
        """(slot, count) of ``key`` in the region at ``base``, or of the empty slot where it
        would go (count 0); (-1, 0) if the region is full without it."""
        i = zlib.crc32(key) % SLOTS
        for _ in range(SLOTS):
            k, count = _ENTRY.unpack_from(self._mm, base + i * _ENTRY.size)
            if count == 0 or k == key:
                return i, count
            i = (i + 1) % SLOTS
        return -1, 0

    def _delete(self, slot: int) -> None:
        """Empty ``slot`` in the own region, shifting later entries of its probe run back."""
        base, size = self._own, _ENTRY.size
        hole, j = slot, slot
        for _ in range(SLOTS - 1):  # a full region has no empty slot to stop at
            j = (j + 1) % SLOTS
            k, count = _ENTRY.unpack_from(self._mm, base + j * size)
            if count == 0:
                break
            home = zlib.crc32(k) % SLOTS
            # the entry at j may fill the hole only if its home is not cyclically in (hole, j]
            if (hole < j and hole < home <= j) or (hole > j and (home > hole or home <= j)):
                continue
            self._mm[base + hole * size : base + (hole + 1) * size] = self._mm[
                base + j * size : base + (j + 1) * size
            ]
            hole = j
        self._mm[base + hole * size : base + (hole + 1) * size] = _EMPTY


class _FileLock:
    """``fcntl.lockf`` over the whole file as a context manager."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)
