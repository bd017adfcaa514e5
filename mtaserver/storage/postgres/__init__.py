"""The PostgreSQL backend: the same table owners as :mod:`mtaserver.storage.sqlite`, for
several nodes sharing one database (``[storage] backend = "postgresql"``).

Ported so far: the queue (``queue``, with send batches), events, suppressions and users —
the core mail path — the HTTP send API's owners (API keys, idempotent answers, templates)
the admin API's (admin tokens, the cohort reports), the webhook outbox and tracking's
lookups. Not yet: contacts, lists, segments, journeys, campaigns, opt-in, privacy.
"""
