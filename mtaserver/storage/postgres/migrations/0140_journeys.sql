-- Triggers, contact events and sequence steps on PostgreSQL (SQLite's 0140_journeys): the
-- same columns, so rows copy across unchanged, plus the step's lease (lease_node,
-- lease_until): several nodes run the step runner against one table, and a node claims
-- the due steps it will fire with FOR UPDATE SKIP LOCKED, so no two nodes compose the same
-- step; the fired mark (state='pending' → 'fired' in the transaction that queues the
-- mail) is what makes it fire once, even after a lease ran out.

CREATE TABLE triggers (
    id bigserial PRIMARY KEY,
    owner text NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name text NOT NULL,
    event text NOT NULL,
    definition text NOT NULL,                  -- outreach.triggers JSON
    enabled bigint NOT NULL DEFAULT 1,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    UNIQUE (owner, name)
);

CREATE TABLE contact_events (
    id bigserial PRIMARY KEY,
    contact_id bigint NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    name text NOT NULL,
    properties text NOT NULL DEFAULT '{}',
    occurred_at double precision NOT NULL,
    received_at double precision NOT NULL
);
CREATE INDEX contact_events_contact ON contact_events(contact_id, occurred_at);

CREATE TABLE journey_steps (
    id bigserial PRIMARY KEY,
    trigger_id bigint NOT NULL REFERENCES triggers(id) ON DELETE CASCADE,
    contact_id bigint NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    step bigint NOT NULL,
    window_start double precision NOT NULL,
    event_id bigint REFERENCES contact_events(id) ON DELETE SET NULL,
    due_at double precision NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'fired', 'cancelled', 'skipped')),
    queue_id text,
    reason text,
    updated_at double precision NOT NULL,
    lease_node text,                           -- the node composing it, until lease_until
    lease_until double precision,
    UNIQUE (trigger_id, contact_id, step, window_start)
);
CREATE INDEX journey_steps_due ON journey_steps(due_at) WHERE state = 'pending';
CREATE INDEX journey_steps_contact ON journey_steps(contact_id);
