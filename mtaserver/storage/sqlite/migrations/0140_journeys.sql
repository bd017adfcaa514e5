-- Events in, triggers out: each owner's trigger definitions, the events its contacts did,
-- and every step of every started sequence as a durable row.
--
-- A step row exists from the moment its event is stored (all steps of the sequence at
-- once, each with its due time), so a restart or a kill -9 neither loses nor invents one.
-- UNIQUE (trigger_id, contact_id, step, window_start) means a step is created once; the
-- runner marks it fired in the transaction that queues its message, so it fires once.

CREATE TABLE triggers (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    event TEXT NOT NULL,
    definition TEXT NOT NULL CHECK (json_valid(definition)),  -- outreach.triggers JSON
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (owner, name)
);

CREATE TABLE contact_events (
    id INTEGER PRIMARY KEY,
    contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    properties TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(properties)),
    occurred_at REAL NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX contact_events_contact ON contact_events(contact_id, occurred_at);

CREATE TABLE journey_steps (
    id INTEGER PRIMARY KEY,
    trigger_id INTEGER NOT NULL REFERENCES triggers(id) ON DELETE CASCADE,
    contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,                     -- index into the trigger's steps
    window_start REAL NOT NULL,                -- the starting event's occurred_at
    event_id INTEGER REFERENCES contact_events(id) ON DELETE SET NULL,
    due_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'fired', 'cancelled', 'skipped')),
    queue_id TEXT,                             -- the message, once fired
    reason TEXT,                               -- why cancelled or skipped
    updated_at REAL NOT NULL,
    UNIQUE (trigger_id, contact_id, step, window_start)
);
CREATE INDEX journey_steps_due ON journey_steps(due_at) WHERE state = 'pending';
CREATE INDEX journey_steps_contact ON journey_steps(contact_id);
