"""The SQLite backend: the connection layer (``db``) and the owner of each table.

Owners: ``queue`` (messages, recipients), ``events`` (events), ``suppressions``
(suppressions, soft_bounces), ``users`` (users, user_domains), ``outbox`` (webhook_outbox,
webhook_endpoints), ``tokens`` (admin_tokens), ``db`` (meta, schema_migrations). Reads that
join tables (reports, the subject-access export) live in this package too, never outside.
"""
