-- Operations: the webhook outbox and the indexes retention sweeps walk.
--
-- The outbox is filled by a trigger on `events`, so an event and its outbox rows commit in
-- the same transaction whoever writes the event (daemon, CLI, another process): no event
-- can be lost between "written" and "queued for the webhook". `webhook_endpoints` mirrors
-- the [[webhooks]] config (synced at start and on SIGHUP); a webhook receives the events
-- written while it is configured.
--
-- Order per message: a row is 'pending' when it is the oldest unsettled row of its message
-- for that webhook, otherwise 'waiting'. Only 'pending' rows are sent; when one is settled
-- (delivered → deleted, or given up → 'failed') the next 'waiting' row of the same message
-- becomes 'pending'. Rows without a queue id are independent.

CREATE TABLE webhook_endpoints (
    name TEXT PRIMARY KEY,
    types TEXT NOT NULL                -- ',delivered,bounced,' or '*' for every type
);

CREATE TABLE webhook_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    queue_id TEXT,
    state TEXT NOT NULL,               -- 'pending' | 'waiting' | 'failed'
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,          -- unix time; gives up at created_at + max_retry_time
    next_attempt REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX webhook_outbox_due ON webhook_outbox(webhook, state, next_attempt);
CREATE INDEX webhook_outbox_message ON webhook_outbox(webhook, queue_id, id);
CREATE INDEX webhook_outbox_event ON webhook_outbox(event_id);

-- The trigger that fills webhook_outbox from events (webhooks.OUTBOX_TRIGGER) is created
-- by the daemon only while a webhook is configured, and dropped otherwise.


-- Retention: events by age; bodies kept after final delivery ([retention] bodies > 0).
CREATE INDEX events_at ON events(at);
CREATE INDEX messages_kept_bodies ON messages(received_at) WHERE body IS NOT NULL;
