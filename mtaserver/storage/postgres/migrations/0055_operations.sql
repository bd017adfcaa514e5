-- The webhook outbox on PostgreSQL (SQLite's 0055_operations and 0056_operations_lean):
-- `webhook_endpoints` mirrors the [[webhooks]] config, `webhook_outbox` holds one row per
-- (webhook, event) to POST, 'pending' for the oldest unsettled row of a message, 'waiting'
-- behind it, 'failed' once given up. The rows are added by a trigger on `events` in the
-- transaction that writes the event; the function is created here, the trigger itself by
-- PgWebhookOutbox.sync only while a webhook is configured (no cost per event otherwise).

CREATE TABLE webhook_endpoints (
    name text PRIMARY KEY,
    types text NOT NULL                -- ',delivered,bounced,' or '*' for every type
);

CREATE TABLE webhook_outbox (
    id bigserial PRIMARY KEY,
    webhook text NOT NULL,
    event_id bigint NOT NULL,
    queue_id text,
    state text NOT NULL,               -- 'pending' | 'waiting' | 'failed'
    attempts bigint NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,
    next_attempt double precision NOT NULL,  -- pending and leased by a node: lease expiry
    last_error text NOT NULL DEFAULT ''
);
CREATE INDEX webhook_outbox_due ON webhook_outbox(webhook, state, next_attempt);
CREATE INDEX webhook_outbox_message ON webhook_outbox(webhook, queue_id, id);
CREATE INDEX webhook_outbox_event ON webhook_outbox(event_id);

-- Two nodes writing events of one message at once: the advisory lock (held to the end of
-- the transaction) makes the second wait, and its EXISTS then sees the first's committed
-- row, so only one of them is 'pending' and the message's order holds across nodes.
CREATE FUNCTION events_webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.queue_id IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('mtaserver.outbox:' || NEW.queue_id));
    END IF;
    INSERT INTO webhook_outbox(webhook, event_id, queue_id, state, created_at, next_attempt)
    SELECT w.name, NEW.id, NEW.queue_id,
           CASE WHEN NEW.queue_id IS NOT NULL AND EXISTS (
                    SELECT 1 FROM webhook_outbox o
                    WHERE o.webhook = w.name AND o.queue_id = NEW.queue_id
                      AND o.state IN ('pending', 'waiting'))
                THEN 'waiting' ELSE 'pending' END,
           extract(epoch FROM clock_timestamp()),
           0
    FROM webhook_endpoints w
    WHERE w.types = '*' OR position(',' || NEW.type || ',' IN w.types) > 0;
    RETURN NULL;
END
$$;
