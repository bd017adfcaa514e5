-- The HTTP send API (SendGrid v3 mail/send): send batches, API keys, idempotent answers.

-- A message may belong to a send batch (SendGrid's batch_id): cancel and pause act on
-- every message of the batch, queued now or later.
ALTER TABLE messages ADD COLUMN batch_id TEXT;
CREATE INDEX messages_batch ON messages(batch_id) WHERE batch_id IS NOT NULL;

CREATE TABLE batches (
    id TEXT PRIMARY KEY,               -- the batch id handed to the client
    user TEXT NOT NULL,                -- the user whose key created it
    created_at REAL NOT NULL,
    status TEXT,                       -- NULL (send), 'pause' (held) or 'cancel' (never sent)
    status_at REAL
);
CREATE INDEX batches_user ON batches(user, status);

-- API keys. Only the SHA-256 of a key is stored (256 random bits, shown once at creation).
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,               -- public id, shown by `apikey list`
    user TEXT NOT NULL,                -- the key sends as this user (domains, rate limits)
    name TEXT NOT NULL DEFAULT '',
    scopes TEXT NOT NULL,              -- space-separated, e.g. 'mail.send mail.batch'
    key_hash TEXT NOT NULL UNIQUE,     -- hex sha256 of the key
    created_at REAL NOT NULL,
    last_used_at REAL,
    revoked_at REAL                    -- NULL while the key is valid
);
CREATE INDEX api_keys_user ON api_keys(user);

-- The first answer to a request carrying an Idempotency-Key, stored in the transaction that
-- queued its messages: a retry within the window gets the same answer and queues nothing.
CREATE TABLE idempotency (
    key_id TEXT NOT NULL,              -- the API key the request came with
    idem_key TEXT NOT NULL,            -- the Idempotency-Key header
    fingerprint TEXT NOT NULL,         -- sha256 of the request body
    status INTEGER NOT NULL,
    message_id TEXT NOT NULL DEFAULT '',   -- the X-Message-Id answered
    body TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    PRIMARY KEY (key_id, idem_key)
);
CREATE INDEX idempotency_created ON idempotency(created_at);
