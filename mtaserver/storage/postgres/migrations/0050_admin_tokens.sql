-- Admin API bearer tokens (SQLite's 0050_admin_tokens): only the SHA-256 of a token is kept.
-- `bigserial`, not SQLite's AUTOINCREMENT: ids stay unique across nodes.

CREATE TABLE admin_tokens (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    token_hash text NOT NULL UNIQUE,
    created_at double precision NOT NULL,
    last_used_at double precision,
    revoked_at double precision
);
-- One live token per name; revoked ones stay listed and free their name.
CREATE UNIQUE INDEX admin_tokens_live_name ON admin_tokens(name) WHERE revoked_at IS NULL;
