"""``[storage]``: the database file and optional encryption at rest of queued bodies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtaserver.config.reader import Reader
from mtaserver.crypto import KeyFileError, load_keyring


@dataclass(frozen=True, slots=True)
class StorageConfig:
    database: Path
    # TOML key file (``mtaserver.crypto``): when set, queued bodies are AES-GCM encrypted
    encryption_key_file: Path | None = None
    # below this much free space on the database's filesystem, MAIL answers 452 4.3.1
    min_free: int = 64 * 1024 * 1024


def parse(r: Reader, data_dir: Path) -> StorageConfig:
    cfg = StorageConfig(
        database=r.path("database", None) or data_dir / "mtaserver.db",
        encryption_key_file=r.path("encryption_key_file", None),
        min_free=r.size("min_free", 64 * 1024 * 1024),
    )
    if cfg.encryption_key_file is not None:
        try:
            load_keyring(cfg.encryption_key_file)  # a bad key file fails at check-config
        except KeyFileError as exc:
            raise r.error("encryption_key_file", str(exc)) from None
    r.finish()
    return cfg
