-- Campaigns: a stored template sent to an audience (a list or a segment) once at a time,
-- on a cron schedule in a time zone, or at each contact's local time.
--
-- Starting a run snapshots its audience into campaign_recipients in ONE statement
-- (INSERT … SELECT in the transaction that creates the run), so a contact added later is
-- never half-sent; the feeder then moves each row pending → queued | skipped in the same
-- transaction that queues its message, so a crash neither loses nor doubles one.

CREATE TABLE campaigns (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    template TEXT NOT NULL,                      -- stored template id (d-…) or name
    from_email TEXT NOT NULL,
    from_name TEXT,
    audience_kind TEXT NOT NULL CHECK (audience_kind IN ('list', 'segment')),
    audience TEXT NOT NULL,                      -- list name | segment name or filter JSON
    schedule TEXT NOT NULL CHECK (schedule IN ('once', 'cron', 'local')),
    send_at REAL,                                -- once: the instant (NULL: when started)
    local_at TEXT,                               -- local: wall time 'YYYY-MM-DDTHH:MM'
    cron TEXT,                                   -- cron: five fields or a macro
    tz TEXT,                                     -- cron: its zone; local: the fallback zone
    status TEXT NOT NULL DEFAULT 'draft'
        CHECK (status IN ('draft', 'scheduled', 'running', 'paused', 'done', 'cancelled')),
    next_run_at REAL,                            -- scheduled: when the next run starts
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (owner, name)
);
CREATE INDEX campaigns_due ON campaigns(status, next_run_at);

CREATE TABLE campaign_runs (
    id INTEGER PRIMARY KEY,
    campaign_id INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    fire_at REAL NOT NULL,                       -- the scheduled instant this run is for
    status TEXT NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'paused', 'done', 'cancelled')),
    audience INTEGER NOT NULL DEFAULT 0,         -- rows snapshot
    queued INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE (campaign_id, fire_at)                -- one run per fire time, even after a crash
);

CREATE TABLE campaign_recipients (
    run_id INTEGER NOT NULL REFERENCES campaign_runs(id) ON DELETE CASCADE,
    contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'queued', 'skipped')),
    due_at REAL NOT NULL DEFAULT 0,              -- local mode: the contact's local send time
    queue_id TEXT,                               -- queued: the message
    reason TEXT,                                 -- skipped: unsubscribed, suppressed, ...
    PRIMARY KEY (run_id, contact_id)
) WITHOUT ROWID;
-- The feeder's keyset: pending rows of a run by due time; a row leaves it when fed.
CREATE INDEX campaign_recipients_pending ON campaign_recipients(run_id, due_at, contact_id)
    WHERE state = 'pending';
-- Deleting (erasing) a contact finds its snapshot rows.
CREATE INDEX campaign_recipients_contact ON campaign_recipients(contact_id);
