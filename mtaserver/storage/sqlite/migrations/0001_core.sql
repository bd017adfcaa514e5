-- Core tables: the queue (messages, recipients), the event log, and process metadata.

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE messages (
    id TEXT PRIMARY KEY,              -- queue id
    sender TEXT NOT NULL,             -- envelope sender, '' for the null sender
    user TEXT,                        -- authenticated submitter
    client_ip TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    size INTEGER NOT NULL,
    message_id TEXT NOT NULL DEFAULT '',
    campaign TEXT,
    dsn INTEGER NOT NULL DEFAULT 1,   -- bounce to the sender on permanent failure
    is_dsn INTEGER NOT NULL DEFAULT 0,
    body BLOB                         -- NULL once every recipient is final (retention)
);
CREATE INDEX messages_message_id ON messages(message_id);
CREATE INDEX messages_received ON messages(received_at);

CREATE TABLE recipients (
    queue_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    state TEXT NOT NULL,              -- model.RecipientState
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,       -- when QUEUED: due time; when LEASED: lease expiry
    last_reply TEXT NOT NULL DEFAULT '',
    body BLOB,                        -- this recipient's own copy, or NULL for the shared body
    updated_at REAL NOT NULL,
    PRIMARY KEY (queue_id, idx)
);
-- Claiming due work and expiring leases both walk this index in time order, so picking
-- the next batch costs the same for a thousand queued recipients or a million.
CREATE INDEX recipients_due ON recipients(state, next_attempt);
CREATE INDEX recipients_domain ON recipients(domain, state);
CREATE INDEX recipients_address ON recipients(address);

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    type TEXT NOT NULL,
    queue_id TEXT,
    recipient TEXT,
    data TEXT NOT NULL DEFAULT '{}'   -- JSON object
);
CREATE INDEX events_queue ON events(queue_id);
CREATE INDEX events_type_at ON events(type, at);
CREATE INDEX events_recipient ON events(recipient);
