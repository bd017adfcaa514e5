"""Fixtures shared by every test module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool
from tests.support import pgsuite


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


# --- Backend of the daemon-level suite (MTASERVER_TEST_BACKEND, tests/support/pgsuite.py) ---
#
#   @pytest.mark.sqlite_only("reads the SQLite file")   skipped on PostgreSQL, with the reason
#   @pytest.mark.pg_pending("contacts")                 skipped on PostgreSQL while "contacts"
#                                                       is in pgsuite.PG_PENDING
# A module declares either once with ``pytestmark = pytest.mark.sqlite_only("…")``.


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): by nature only about SQLite; skipped on PostgreSQL"
    )
    config.addinivalue_line(
        "markers",
        "pg_pending(feature): uses a feature not yet ported to PostgreSQL (pgsuite.PG_PENDING)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if pgsuite.backend() != "postgresql":
        return
    for item in items:
        only = item.get_closest_marker("sqlite_only")
        if only is not None:
            reason = only.args[0] if only.args else "by nature only about SQLite"
            item.add_marker(pytest.mark.skip(reason=f"sqlite-only: {reason}"))
            continue
        if pgsuite.run_pending():
            continue
        for mark in item.iter_markers("pg_pending"):
            waiting = [f for f in mark.args if f in pgsuite.PG_PENDING]
            if waiting:
                why = f"pg-pending: {', '.join(waiting)} not yet on PostgreSQL"
                item.add_marker(pytest.mark.skip(reason=why))
                break


if pgsuite.backend() == "postgresql":

    @pytest.fixture(scope="session", autouse=True)
    def _pg_suite_server() -> Iterator[None]:
        """The worker's PostgreSQL, started by the first TestConfig, stopped by PID at the end."""
        suite = pgsuite.SuiteDatabases()
        pgsuite.install(suite)
        try:
            yield
        finally:
            pgsuite.install(None)
            suite.close()

    @pytest.fixture(scope="module", autouse=True)
    def _pg_suite_databases(_pg_suite_server: None) -> Iterator[None]:
        """Each module's databases are dropped when its (module-scoped) daemons are gone."""
        yield
        pgsuite.current().drop_created()
