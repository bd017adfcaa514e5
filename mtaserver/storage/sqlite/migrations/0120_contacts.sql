-- Contacts and lists: the marketing side's audience, one set per mtaserver user (the owner).
--
-- A contact is keyed by (owner, address): two users may hold the same address with
-- different attributes and consent, and neither ever sees the other's. Attributes are one
-- JSON object (any fields: name, locale, plan, ...); an upsert merges into it (RFC 7396).
-- Consent is the proof of permission: status, how it was given or taken (source), when,
-- and from which IP. Segments and campaigns stream contacts by keyset on (owner, address),
-- the UNIQUE index below, so a million contacts are never held at once.

CREATE TABLE contacts (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    address TEXT NOT NULL,                       -- normalized: trimmed, lower-case
    attributes TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(attributes)),
    consent_status TEXT NOT NULL DEFAULT 'subscribed'
        CHECK (consent_status IN ('subscribed', 'unconfirmed', 'unsubscribed')),
    consent_source TEXT NOT NULL DEFAULT '',     -- api, import, cli, confirm, bounce, ...
    consent_at REAL,
    consent_ip TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (owner, address)
);
-- Suppression → consent: a hard bounce or complaint finds every owner's contact by address.
CREATE INDEX contacts_address ON contacts(address);

CREATE TABLE lists (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    double_opt_in INTEGER NOT NULL DEFAULT 0,    -- 1: members start unconfirmed
    created_at REAL NOT NULL,
    UNIQUE (owner, name)
);

CREATE TABLE list_members (
    list_id INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    status TEXT NOT NULL DEFAULT 'subscribed'
        CHECK (status IN ('subscribed', 'unconfirmed', 'unsubscribed')),
    added_at REAL NOT NULL,
    confirmed_at REAL,
    PRIMARY KEY (list_id, contact_id)
) WITHOUT ROWID;
CREATE INDEX list_members_contact ON list_members(contact_id);
