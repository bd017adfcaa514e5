-- Campaigns, their runs and audience snapshots (SQLite's 0150_campaigns with
-- 0170_campaign_failed_cancelled: 'failed' campaigns with their failure, 'cancelled' rows).
--
-- Starting a run snapshots its audience into campaign_recipients with ONE INSERT … SELECT
-- in the transaction that creates the run; the feeder moves each row pending → queued |
-- skipped in the transaction that queues its message, so neither a crash nor a second
-- node loses or doubles one. PostgreSQL only: lease_node and lease_until, the node that
-- claimed a pending row for its next batch and until when (several nodes feed one run).

CREATE TABLE campaigns (
    id bigserial PRIMARY KEY,
    owner text NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name text NOT NULL,
    template text NOT NULL,                      -- stored template id (d-…) or name
    from_email text NOT NULL,
    from_name text,
    audience_kind text NOT NULL CHECK (audience_kind IN ('list', 'segment')),
    audience text NOT NULL,                      -- list name | segment name or filter JSON
    schedule text NOT NULL CHECK (schedule IN ('once', 'cron', 'local')),
    send_at double precision,                    -- once: the instant (NULL: when started)
    local_at text,                               -- local, once: wall time 'YYYY-MM-DDTHH:MM'
    cron text,                                   -- cron, or local with a cron: five fields
    tz text,                                     -- cron: its zone; local: the fallback zone
    status text NOT NULL DEFAULT 'draft'
        CHECK (status IN ('draft', 'scheduled', 'running', 'paused', 'done', 'cancelled',
                          'failed')),
    next_run_at double precision,                -- scheduled: when the next run starts
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    failure text,                                -- failed: why, naming the thing to fix
    UNIQUE (owner, name)
);
CREATE INDEX campaigns_due ON campaigns(status, next_run_at);

CREATE TABLE campaign_runs (
    id bigserial PRIMARY KEY,
    campaign_id bigint NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    fire_at double precision NOT NULL,           -- the scheduled instant this run is for
    status text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'paused', 'done', 'cancelled')),
    audience bigint NOT NULL DEFAULT 0,          -- rows snapshot
    queued bigint NOT NULL DEFAULT 0,
    skipped bigint NOT NULL DEFAULT 0,
    started_at double precision NOT NULL,
    finished_at double precision,
    UNIQUE (campaign_id, fire_at)                -- one run per fire time, whichever node
);
CREATE INDEX campaign_runs_active ON campaign_runs(status) WHERE status IN ('running', 'cancelled');

CREATE TABLE campaign_recipients (
    run_id bigint NOT NULL REFERENCES campaign_runs(id) ON DELETE CASCADE,
    contact_id bigint NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    address text NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'queued', 'skipped', 'cancelled')),
    due_at double precision NOT NULL DEFAULT 0,  -- local mode: the contact's local send time
    queue_id text,                               -- queued: the message
    reason text,                                 -- skipped: unsubscribed, suppressed, ...
    lease_node text,                             -- pending: the node that claimed it
    lease_until double precision,                -- ... until then (then any node may)
    PRIMARY KEY (run_id, contact_id)
);
-- The feeder's keyset: pending rows of a run by due time; a row leaves it when fed or
-- cancelled, so a million-row run's fed rows cost the claim nothing.
CREATE INDEX campaign_recipients_pending ON campaign_recipients(run_id, due_at, contact_id)
    WHERE state = 'pending';
-- Deleting (erasing) a contact finds its snapshot rows.
CREATE INDEX campaign_recipients_contact ON campaign_recipients(contact_id);
