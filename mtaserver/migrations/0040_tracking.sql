-- Tracking and stats: per-message event lookups by type (delivery time of a recipient when a
-- click arrives; stats per cohort of messages) walk this index instead of every event.
CREATE INDEX IF NOT EXISTS events_queue_type ON events(queue_id, type);
