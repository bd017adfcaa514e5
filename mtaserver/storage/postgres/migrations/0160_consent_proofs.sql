-- Double opt-in and the consent proofs an erase keeps, on PostgreSQL (SQLite's
-- 0160_consent_proofs, same columns). The proof key is 32 random bytes from the server's
-- strong random source (two version-4 UUIDs: gen_random_uuid needs no extension);
-- `storage migrate --to postgresql` replaces it with the SQLite database's key, so proofs
-- kept there are still found from the address.

CREATE TABLE optin_settings (
    list_id bigint PRIMARY KEY REFERENCES lists(id) ON DELETE CASCADE,
    from_address text,
    subject text,
    body text
);

CREATE TABLE optin_sent (
    list_id bigint NOT NULL,
    contact_id bigint NOT NULL,
    queue_id text NOT NULL,
    sent_at double precision NOT NULL,
    PRIMARY KEY (list_id, contact_id),
    FOREIGN KEY (list_id, contact_id) REFERENCES list_members(list_id, contact_id)
        ON DELETE CASCADE
);

CREATE INDEX list_members_unconfirmed ON list_members(list_id, contact_id)
    WHERE status = 'unconfirmed';

CREATE TABLE privacy_keys (
    name text PRIMARY KEY,
    key bytea NOT NULL
);
INSERT INTO privacy_keys (name, key) VALUES ('consent_proof', decode(
    replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

CREATE TABLE consent_proofs (
    id bigserial PRIMARY KEY,
    address_hash text NOT NULL,
    owner text NOT NULL,
    list_name text,
    status text NOT NULL,
    source text NOT NULL,
    at double precision,
    ip_hash text,
    erased_at double precision NOT NULL
);
CREATE INDEX consent_proofs_address ON consent_proofs(address_hash);
