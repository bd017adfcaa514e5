-- The webhook trigger costs every event insert ~45 % even with no webhook configured, so it
-- now exists only while one is: WebhookOutbox.sync creates it (same SQL as 0055) or drops
-- it. Retention finds old events by id order instead of an index on `at` (one less index to
-- maintain per event insert).
DROP TRIGGER IF EXISTS events_webhook_outbox;
DROP INDEX IF EXISTS events_at;
