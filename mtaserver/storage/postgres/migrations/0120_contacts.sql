-- Contacts and lists (SQLite's 0120_contacts): one set per mtaserver user (the owner).
--
-- Attributes are jsonb; an upsert merges into them with mta_json_patch (RFC 7396, what
-- SQLite's json_patch does). Keyset paging compares addresses byte-wise like SQLite
-- (COLLATE "C", whatever the database's locale): the UNIQUE index is on that collation,
-- and the column itself keeps the default one so other owners' joins on it need no
-- COLLATE clause (equality is the same under both).

CREATE FUNCTION mta_json_patch(target jsonb, patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    result jsonb;
    k text;
    v jsonb;
BEGIN
    IF patch IS NULL OR jsonb_typeof(patch) <> 'object' THEN
        RETURN patch;
    END IF;
    result := CASE WHEN jsonb_typeof(target) = 'object' THEN target ELSE '{}'::jsonb END;
    FOR k, v IN SELECT key, value FROM jsonb_each(patch) LOOP
        IF jsonb_typeof(v) = 'null' THEN
            result := result - k;
        ELSE
            result := jsonb_set(result, ARRAY[k], mta_json_patch(result -> k, v));
        END IF;
    END LOOP;
    RETURN result;
END
$$;

CREATE TABLE contacts (
    id bigserial PRIMARY KEY,
    owner text NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    address text NOT NULL,                       -- normalized: trimmed, lower-case
    attributes jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(attributes) = 'object'),
    consent_status text NOT NULL DEFAULT 'subscribed'
        CHECK (consent_status IN ('subscribed', 'unconfirmed', 'unsubscribed')),
    consent_source text NOT NULL DEFAULT '',
    consent_at double precision,
    consent_ip text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE UNIQUE INDEX contacts_owner_address ON contacts (owner, address COLLATE "C");
-- Suppression → consent: a hard bounce or complaint finds every owner's contact by address.
CREATE INDEX contacts_address ON contacts (address);

CREATE TABLE lists (
    id bigserial PRIMARY KEY,
    owner text NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name text NOT NULL,
    double_opt_in bigint NOT NULL DEFAULT 0,     -- 1: members start unconfirmed
    created_at double precision NOT NULL,
    UNIQUE (owner, name)
);

CREATE TABLE list_members (
    list_id bigint NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    contact_id bigint NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    status text NOT NULL DEFAULT 'subscribed'
        CHECK (status IN ('subscribed', 'unconfirmed', 'unsubscribed')),
    added_at double precision NOT NULL,
    confirmed_at double precision,
    PRIMARY KEY (list_id, contact_id)
);
CREATE INDEX list_members_contact ON list_members (contact_id);
