-- Suppression list and the soft-bounce counter (bounces capability).
--
-- scope '' is global (the address itself is bad: unknown user, disabled mailbox, dead
-- domain); any other value is the sending domain the entry applies to (complaints and
-- unsubscribes are about one sender, not about every sender on this server).

CREATE TABLE suppressions (
    address TEXT NOT NULL,            -- lower-cased
    scope TEXT NOT NULL DEFAULT '',   -- '' = global, else the sending domain
    reason TEXT NOT NULL,             -- category, 'soft-bounces', 'complaint', 'manual', ...
    source TEXT NOT NULL DEFAULT '',  -- 'async' | 'sync' | 'complaint' | 'unsubscribe' | 'manual'
    event_id INTEGER,                 -- events.id of the event that caused it, when known
    queue_id TEXT,                    -- message that caused it, when known
    created_at REAL NOT NULL,
    expires_at REAL,                  -- NULL = never
    PRIMARY KEY (address, scope)
);
CREATE INDEX suppressions_expires ON suppressions(expires_at);

CREATE TABLE soft_bounces (
    address TEXT NOT NULL,
    at REAL NOT NULL,
    category TEXT NOT NULL,
    queue_id TEXT
);
CREATE INDEX soft_bounces_address ON soft_bounces(address, at);
