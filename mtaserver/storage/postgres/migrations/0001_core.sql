-- The tables of the core mail path on PostgreSQL: the queue (messages, recipients,
-- batches), the event log, suppressions and the submission users. Columns mirror the SQLite
-- schema after its migrations up to 0120 (tests/test_pg_schema.py compares the two), so one
-- row copies across unchanged; PostgreSQL-only columns are listed in that test.
-- REAL → double precision, BLOB → bytea, INTEGER → bigint. "user" is quoted: it is a
-- reserved word here.

CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE messages (
    id text PRIMARY KEY,
    sender text NOT NULL,
    "user" text,
    client_ip text NOT NULL DEFAULT '',
    received_at double precision NOT NULL,
    size bigint NOT NULL,
    message_id text NOT NULL DEFAULT '',
    campaign text,
    dsn bigint NOT NULL DEFAULT 1,
    is_dsn bigint NOT NULL DEFAULT 0,
    body bytea,
    batch_id text,
    release_at double precision
);
CREATE INDEX messages_message_id ON messages(message_id);
CREATE INDEX messages_received ON messages(received_at);
CREATE INDEX messages_batch ON messages(batch_id) WHERE batch_id IS NOT NULL;

CREATE TABLE recipients (
    queue_id text NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx bigint NOT NULL,
    address text NOT NULL,
    domain text NOT NULL,
    state text NOT NULL,
    attempts bigint NOT NULL DEFAULT 0,
    next_attempt double precision NOT NULL,   -- queued: due time; leased: lease expiry
    last_reply text NOT NULL DEFAULT '',
    body bytea,
    updated_at double precision NOT NULL,
    lease_node text,                          -- leased: the node holding the lease
    PRIMARY KEY (queue_id, idx)
);
-- Claims walk this index in due order and stop at the limit, whatever the queue's size;
-- only queued and leased rows are in it, so delivered history does not grow it.
CREATE INDEX recipients_due ON recipients(state, next_attempt)
    WHERE state IN ('queued', 'leased');
CREATE INDEX recipients_domain ON recipients(domain, state);
CREATE INDEX recipients_address ON recipients(address);

CREATE TABLE batches (
    id text PRIMARY KEY,
    "user" text NOT NULL,
    created_at double precision NOT NULL,
    status text,
    status_at double precision
);
CREATE INDEX batches_user ON batches("user", status);

CREATE TABLE events (
    id bigserial PRIMARY KEY,
    at double precision NOT NULL,
    type text NOT NULL,
    queue_id text,
    recipient text,
    data text NOT NULL DEFAULT '{}'
);
CREATE INDEX events_queue ON events(queue_id);
CREATE INDEX events_type_at ON events(type, at);
CREATE INDEX events_recipient ON events(recipient);

CREATE TABLE suppressions (
    address text NOT NULL,
    scope text NOT NULL DEFAULT '',
    reason text NOT NULL,
    source text NOT NULL DEFAULT '',
    event_id bigint,
    queue_id text,
    created_at double precision NOT NULL,
    expires_at double precision,
    reply text,
    PRIMARY KEY (address, scope)
);
CREATE INDEX suppressions_expires ON suppressions(expires_at);

CREATE TABLE soft_bounces (
    address text NOT NULL,
    at double precision NOT NULL,
    category text NOT NULL,
    queue_id text
);
CREATE INDEX soft_bounces_address ON soft_bounces(address, at);

CREATE TABLE users (
    name text PRIMARY KEY,
    password_hash text NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);

CREATE TABLE user_domains (
    "user" text NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    domain text NOT NULL,
    PRIMARY KEY ("user", domain)
);
CREATE INDEX user_domains_domain ON user_domains(domain);
