-- The HTTP send API on PostgreSQL: API keys and idempotent answers (SQLite's 0080_api;
-- its `batches` table and messages.batch_id are in 0001_core already). A PostgreSQL
-- migration carries the number of the SQLite migration it mirrors, so the two directories
-- read side by side; tests/test_pg_schema.py checks the columns match.

CREATE TABLE api_keys (
    id text PRIMARY KEY,
    "user" text NOT NULL,
    name text NOT NULL DEFAULT '',
    scopes text NOT NULL,              -- space-separated, e.g. 'mail.send mail.batch.read'
    key_hash text NOT NULL UNIQUE,     -- hex sha256 of the key (256 random bits, shown once)
    created_at double precision NOT NULL,
    last_used_at double precision,
    revoked_at double precision
);
CREATE INDEX api_keys_user ON api_keys("user");

CREATE TABLE idempotency (
    key_id text NOT NULL,
    idem_key text NOT NULL,
    fingerprint text NOT NULL,
    status bigint NOT NULL,
    message_id text NOT NULL DEFAULT '',
    body text NOT NULL DEFAULT '',
    created_at double precision NOT NULL,
    PRIMARY KEY (key_id, idem_key)
);
CREATE INDEX idempotency_created ON idempotency(created_at);
