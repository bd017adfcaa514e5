"""The shared queue on PostgreSQL: the only writer of ``messages``, ``recipients`` and
``batches`` (``spool``: intake, leases, outcomes; ``operator``: the CLI's operations)."""

from mtaserver.storage.postgres.queue.spool import PgQueue

__all__ = ["PgQueue"]
