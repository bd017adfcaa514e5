"""What a submission worker reads on a PostgreSQL node: users and suppressions there.

On SQLite a worker opens the database file read-only (WAL: it sees every commit); on
PostgreSQL it opens its own small pool to the cluster's database instead (``migrate``
left to the owner, which ran it before starting the workers) and reads through the
PostgreSQL owners. Writes still go one way only: the prepared message rides the link to
the owner, which commits it into the shared queue and acks, so the owner's per-user rate,
AUTH failure count and the daemon's per-IP table stay one for the whole daemon whichever
backend holds the queue.

Workers forked by the template (:mod:`mtaserver.workers.template`) inherit the modules
:func:`preload_postgres` imported before that fork, never a pool: the pool is opened here,
in the worker, after it was forked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from mtaserver.clock import Clock
from mtaserver.config import Config

if TYPE_CHECKING:
    from mtaserver.storage.sqlite.suppressions import SuppressionStore
    from mtaserver.storage.sqlite.users import UserStore

POOL = 2  # connections per worker: AUTH lookups and RCPT suppression checks, both short


class Closable(Protocol):
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class WorkerStores:
    """The reading side a worker's sessions use, and the handle that closes it."""

    db: Closable
    users: UserStore
    suppressions: SuppressionStore
    data_dir: Path  # where the free-space check looks (the spool's temporary files, logs)


def preload_postgres() -> None:
    """Import what :func:`open_stores` needs on PostgreSQL (asyncpg, the two owners) — in
    the owner before the template is forked, so its workers share these pages too. Opens
    nothing: no loop, pool or connection exists to be copied by the fork."""
    import mtaserver.storage.postgres.db
    import mtaserver.storage.postgres.suppressions
    import mtaserver.storage.postgres.users  # noqa: F401


async def open_stores(cfg: Config, clock: Clock) -> WorkerStores:
    """The SQLite file read-only, or a pool of ``POOL`` connections to PostgreSQL."""
    if cfg.storage.backend != "postgresql":
        from mtaserver.storage.sqlite.db import Database
        from mtaserver.storage.sqlite.suppressions import SuppressionStore
        from mtaserver.storage.sqlite.users import UserStore

        db = Database(cfg.storage.database, owner=False)
        await db.open()
        suppressions = SuppressionStore(db, clock, cfg.inbound.suppression)
        return WorkerStores(db, UserStore(db, clock), suppressions, cfg.storage.database.parent)
    import dataclasses

    from mtaserver.storage.postgres.db import PgDatabase
    from mtaserver.storage.postgres.suppressions import PgSuppressionStore
    from mtaserver.storage.postgres.users import PgUserStore

    pg = cfg.storage.postgres
    assert pg is not None  # config: backend = "postgresql" sets it
    pgdb = PgDatabase(dataclasses.replace(pg, pool_size=min(POOL, pg.pool_size)))
    await pgdb.open(migrate=False)
    # The sessions call the same methods on either owner (the SQLite ones are the types).
    users: Any = PgUserStore(pgdb, clock)
    supp: Any = PgSuppressionStore(pgdb, clock, cfg.inbound.suppression)
    return WorkerStores(pgdb, cast("UserStore", users), cast("SuppressionStore", supp),
                        cfg.server.data_dir)  # fmt: skip
