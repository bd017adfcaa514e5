-- Double opt-in, the preferences page and GDPR erasure of contacts.
--
-- optin_settings: per list, who the confirmation mail is from and what it says (NULL: the
-- owner's first sending domain's no-reply address and the built-in plain text).
-- optin_sent: an unconfirmed membership whose confirmation mail is queued; written in the
-- same transaction as the queued mail, so each membership gets exactly one (a crash before
-- the commit leaves neither, and the next pass sends it).
-- consent_proofs: what an erase keeps of a contact's consent — proof that permission was
-- given (or withdrawn), when and how, without the address: HMAC-SHA256 under a random
-- per-database key (privacy_keys), so the row is found again from an address someone
-- presents, but cannot be read back or matched against a list of addresses without the key.
-- The client IP is kept the same way (ip_hash), never in clear.

CREATE TABLE optin_settings (
    list_id INTEGER PRIMARY KEY REFERENCES lists(id) ON DELETE CASCADE,
    from_address TEXT,
    subject TEXT,
    body TEXT                                    -- plain text; {{confirm_url}} {{list}} {{email}}
);

CREATE TABLE optin_sent (
    list_id INTEGER NOT NULL,
    contact_id INTEGER NOT NULL,
    queue_id TEXT NOT NULL,
    sent_at REAL NOT NULL,
    PRIMARY KEY (list_id, contact_id),
    FOREIGN KEY (list_id, contact_id) REFERENCES list_members(list_id, contact_id)
        ON DELETE CASCADE
) WITHOUT ROWID;

-- The mailer's scan: unconfirmed memberships only, whatever the lists' size.
CREATE INDEX list_members_unconfirmed ON list_members(list_id, contact_id)
    WHERE status = 'unconfirmed';

CREATE TABLE privacy_keys (
    name TEXT PRIMARY KEY,
    key BLOB NOT NULL
);
INSERT INTO privacy_keys (name, key) VALUES ('consent_proof', randomblob(32));

CREATE TABLE consent_proofs (
    id INTEGER PRIMARY KEY,
    address_hash TEXT NOT NULL,                  -- hex HMAC-SHA256(privacy key, address)
    owner TEXT NOT NULL,
    list_name TEXT,                              -- NULL: the contact's own consent
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    at REAL,
    ip_hash TEXT,
    erased_at REAL NOT NULL
);
CREATE INDEX consent_proofs_address ON consent_proofs(address_hash);
