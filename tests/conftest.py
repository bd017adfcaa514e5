"""Fixtures shared by every test module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "mta.db")
    await database.open()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def spool(db: Database) -> Spool:
    return Spool(db)
