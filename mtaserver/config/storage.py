"""``[storage]``: the database file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtaserver.config.reader import Reader


@dataclass(frozen=True, slots=True)
class StorageConfig:
    database: Path


def parse(r: Reader, data_dir: Path) -> StorageConfig:
    cfg = StorageConfig(database=r.path("database", None) or data_dir / "mtaserver.db")
    r.finish()
    return cfg
