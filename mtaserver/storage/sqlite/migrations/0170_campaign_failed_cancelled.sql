-- Campaigns can fail, and a cancelled run's rows say so.
--
-- campaigns.status gains 'failed' (the feeder could not start a run: its segment was
-- deleted, its filter no longer compiles) with the reason in campaigns.failure, shown by
-- `mtaserver campaigns show` and GET /v1/campaigns/{name}. campaign_recipients.state gains
-- 'cancelled': cancelling (or failing) a campaign moves its runs' pending rows there, so
-- stats and the feeder agree that nothing more goes out.
--
-- SQLite cannot change a CHECK constraint in place, so the three tables are rebuilt under
-- new names, the old ones dropped children first (no ON DELETE CASCADE fires: the new
-- tables reference the new names) and the new ones renamed (with foreign_keys=ON the rename
-- rewrites the children's REFERENCES). Every row and column is copied unchanged.

CREATE TABLE campaigns_0170 (
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
    local_at TEXT,                               -- local, once: wall time 'YYYY-MM-DDTHH:MM'
    cron TEXT,                                   -- cron, or local with a cron: five fields
    tz TEXT,                                     -- cron: its zone; local: the fallback zone
    status TEXT NOT NULL DEFAULT 'draft'
        CHECK (status IN ('draft', 'scheduled', 'running', 'paused', 'done', 'cancelled',
                          'failed')),
    next_run_at REAL,                            -- scheduled: when the next run starts
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    failure TEXT,                                -- failed: why, naming the thing to fix
    UNIQUE (owner, name)
);
INSERT INTO campaigns_0170 (id, owner, name, template, from_email, from_name, audience_kind,
    audience, schedule, send_at, local_at, cron, tz, status, next_run_at, created_at,
    updated_at)
SELECT id, owner, name, template, from_email, from_name, audience_kind, audience, schedule,
    send_at, local_at, cron, tz, status, next_run_at, created_at, updated_at FROM campaigns;

CREATE TABLE campaign_runs_0170 (
    id INTEGER PRIMARY KEY,
    campaign_id INTEGER NOT NULL REFERENCES campaigns_0170(id) ON DELETE CASCADE,
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
INSERT INTO campaign_runs_0170 (id, campaign_id, fire_at, status, audience, queued, skipped,
    started_at, finished_at)
SELECT id, campaign_id, fire_at, status, audience, queued, skipped, started_at, finished_at
FROM campaign_runs;

CREATE TABLE campaign_recipients_0170 (
    run_id INTEGER NOT NULL REFERENCES campaign_runs_0170(id) ON DELETE CASCADE,
    contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'queued', 'skipped', 'cancelled')),
    due_at REAL NOT NULL DEFAULT 0,              -- local mode: the contact's local send time
    queue_id TEXT,                               -- queued: the message
    reason TEXT,                                 -- skipped: unsubscribed, suppressed, ...
    PRIMARY KEY (run_id, contact_id)
) WITHOUT ROWID;
INSERT INTO campaign_recipients_0170 (run_id, contact_id, address, state, due_at, queue_id,
    reason)
SELECT run_id, contact_id, address, state, due_at, queue_id, reason FROM campaign_recipients;

DROP TABLE campaign_recipients;
DROP TABLE campaign_runs;
DROP TABLE campaigns;
ALTER TABLE campaigns_0170 RENAME TO campaigns;
ALTER TABLE campaign_runs_0170 RENAME TO campaign_runs;
ALTER TABLE campaign_recipients_0170 RENAME TO campaign_recipients;

CREATE INDEX campaigns_due ON campaigns(status, next_run_at);
-- The feeder's keyset: pending rows of a run by due time; a row leaves it when fed or
-- cancelled. Local-time runs are read "due_at <= now" on it, so rows not yet due cost nothing.
CREATE INDEX campaign_recipients_pending ON campaign_recipients(run_id, due_at, contact_id)
    WHERE state = 'pending';
-- Deleting (erasing) a contact finds its snapshot rows.
CREATE INDEX campaign_recipients_contact ON campaign_recipients(contact_id);
