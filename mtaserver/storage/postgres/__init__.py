"""The PostgreSQL backend: the same table owners as :mod:`mtaserver.storage.sqlite`, for
several nodes sharing one database (``[storage] backend = "postgresql"``).

Ported so far: the queue (``queue``), events, suppressions and users — the core mail path.
"""
