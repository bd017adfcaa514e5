"""Free space where the queue lives: refuse new mail at MAIL before a write would fail.

Like Postfix's ``queue_minfree``: when the filesystem holding the database has less than
``[storage] min_free`` (plus the SIZE a client declares) available, the SMTP listeners answer
``452 4.3.1`` at MAIL, so clients retry later instead of sending a body the queue cannot
keep. The end-of-DATA write stays the authority (it answers 452 when it fails with "full");
this check only spares the transfer. ``statvfs`` is cheap, but under load thousands of MAIL
commands a second would each make one, so the answer is kept for ``every`` seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mtaserver.log import get_logger, kv

log = get_logger("diskspace")
LOG_EVERY = 60.0  # seconds between "disk_low" lines while space stays low


class FreeSpace:
    """Cached ``statvfs`` of one directory; ``low(need)`` is the MAIL-time question."""

    def __init__(
        self,
        directory: Path,
        min_free: int,
        monotonic: Callable[[], float],
        *,
        every: float = 1.0,
        statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.directory = directory
        self.min_free = min_free
        self._monotonic = monotonic
        self._every = every
        self._statvfs = statvfs
        self._free: int | None = None
        self._checked = -1e18
        self._logged = -1e18
        self.refusals = 0

    def free(self) -> int | None:
        """Bytes available to us (not to root's reserve); None when it cannot be told."""
        now = self._monotonic()
        if now - self._checked >= self._every:
            self._checked = now
            try:
                st = self._statvfs(self.directory)
            except OSError:
                self._free = None
            else:
                self._free = st.f_bavail * st.f_frsize
        return self._free

    def low(self, need: int = 0) -> bool:
        """True when accepting ``need`` more bytes would leave less than ``min_free``."""
        free = self.free()
        if free is None or free >= self.min_free + max(0, need):
            return False
        self.refusals += 1
        now = self._monotonic()
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            log.warning(kv(event="disk_low", free=free, min_free=self.min_free, need=need,
                           refusals=self.refusals, path=self.directory))  # fmt: skip
        return True


def declared_size(mail_options: list[str]) -> int:
    """The ``SIZE=`` a client declared at MAIL (RFC 1870), 0 when absent or malformed."""
    for opt in mail_options:
        key, _, value = opt.partition("=")
        if key.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


class Reserve:
    """A file of ``size`` bytes held back so the daemon can start on a full disk.

    On a filesystem without one free block, SQLite cannot even read a WAL database: opening
    it must create the ``-shm`` index (``SQLITE_IOERR_SHMSIZE``). The daemon keeps this file
    while space allows; when opening the database fails it deletes it and tries again, so a
    restart on a full disk comes up and answers 452 instead of crash-looping. It is made
    again once free space exceeds ``min_free`` plus its size.
    """

    def __init__(self, path: Path, size: int = 1 << 20) -> None:
        self.path = path
        self.size = size

    def release(self) -> bool:
        """Delete the reserve; True when there was one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning(kv(event="reserve_released", path=self.path, bytes=self.size))
        return True

    def ensure(self, space: FreeSpace) -> bool:
        """Create the reserve when it is missing and there is room; True when it exists."""
        if self.path.exists():
            return True
        free = space.free()
        if free is None or free < space.min_free + self.size:
            return False
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.size)  # real blocks, not a sparse file
            os.fsync(fd)
        except OSError:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            return False
        os.close(fd)
        return True
