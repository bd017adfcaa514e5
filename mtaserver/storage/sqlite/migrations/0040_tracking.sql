-- Tracking keeps no table of its own: click targets are signed into the tokens, not stored,
-- and opens/clicks/unsubscribes are rows of `events`. (An earlier draft of this migration
-- added an index on events(queue_id, type); every event insert paid for it and no query
-- needed it, so it is dropped where it was created.)
DROP INDEX IF EXISTS events_queue_type;
