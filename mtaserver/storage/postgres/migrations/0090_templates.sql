-- Stored templates with versions for the send API's template_id (SQLite's 0090_templates).

CREATE TABLE templates (
    id text PRIMARY KEY,                 -- d-<32 hex>
    name text NOT NULL UNIQUE,
    active_version bigint NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);

CREATE TABLE template_versions (
    template_id text NOT NULL,
    version bigint NOT NULL,
    subject text,
    html text,
    text text,
    created_at double precision NOT NULL,
    PRIMARY KEY (template_id, version)
);
