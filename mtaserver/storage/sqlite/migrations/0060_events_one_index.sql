-- Every event insert paid for three indexes; opens and clicks are most of the events a
-- tracked campaign produces, so that was most of the cost of a pixel hit. Every query on
-- events names the message: stats join the cohort by queue_id, the DSN check and the
-- delivery-time lookup look for one message (and one recipient of it). One index on
-- (queue_id, recipient) serves them all. Privacy export and erase scan events anyway
-- (they match the address inside the JSON data too), and feeds and metrics walk by id.
DROP INDEX IF EXISTS events_queue;
DROP INDEX IF EXISTS events_type_at;
DROP INDEX IF EXISTS events_recipient;
CREATE INDEX IF NOT EXISTS events_queue_recipient ON events(queue_id, recipient);
