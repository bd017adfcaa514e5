-- Stored templates for the HTTP send API's template_id (SendGrid dynamic templates).
-- A template is addressed by its id (d-<32 hex>, SendGrid's shape) or its operator-chosen
-- name. Every put adds a version and makes it active; older versions are kept so an
-- operator can go back with `mtaserver template activate NAME VERSION`.

CREATE TABLE templates (
    id TEXT PRIMARY KEY,                 -- d-<32 hex>
    name TEXT NOT NULL UNIQUE,
    active_version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE template_versions (
    template_id TEXT NOT NULL,
    version INTEGER NOT NULL,            -- 1, 2, ... per template
    subject TEXT,
    html TEXT,
    text TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (template_id, version)
);
