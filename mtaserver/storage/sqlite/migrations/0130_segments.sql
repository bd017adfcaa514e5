-- Saved segments: a named filter over one owner's contacts (mtaserver.segments' language).
--
-- The filter is stored as the JSON document the owner gave, checked before it is stored;
-- it is compiled to SQL (bound parameters only) each time it is counted or paged, so date
-- arithmetic ("days_ago") is relative to when it runs, not to when it was saved.

CREATE TABLE segments (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    filter TEXT NOT NULL CHECK (json_valid(filter)),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (owner, name)
);
