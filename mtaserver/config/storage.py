"""``[storage]``: the database file and optional encryption at rest of queued bodies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtaserver.config.reader import Reader


@dataclass(frozen=True, slots=True)
class StorageConfig:
    database: Path
    # TOML key file (``mtaserver.crypto``): when set, queued bodies are AES-GCM encrypted;
    # read and checked by ``mtaserver.keyfiles``, not here (config does no key I/O)
    encryption_key_file: Path | None = None
    # below this much free space on the database's filesystem, MAIL answers 452 4.3.1
    min_free: int = 64 * 1024 * 1024


def parse(r: Reader, data_dir: Path) -> StorageConfig:
    cfg = StorageConfig(
        database=r.path("database", None) or data_dir / "mtaserver.db",
        encryption_key_file=r.path("encryption_key_file", None),
        min_free=r.size("min_free", 64 * 1024 * 1024),
    )
    r.finish()
    return cfg
