-- Admin API bearer tokens. Only the SHA-256 of a token is stored: the token itself (256 random
-- bits) is printed once by `mtaserver admin token create` and cannot be read back.

CREATE TABLE admin_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,   -- hex sha256 of the token
    created_at REAL NOT NULL,
    last_used_at REAL,                 -- updated at most once a minute per token
    revoked_at REAL                    -- NULL while the token is valid
);
-- One live token per name, so `admin token revoke NAME` is unambiguous; revoked tokens
-- stay listed (who had access, until when) and free their name.
CREATE UNIQUE INDEX admin_tokens_live_name ON admin_tokens(name) WHERE revoked_at IS NULL;
