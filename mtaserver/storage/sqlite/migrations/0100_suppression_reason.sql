-- Suppression entries say why in the reason taxonomy (issue 16). From here on an entry the
-- policy makes has a classify.toml reason in `reason` (userunknown, hostunknown, feedback,
-- ...; 'unsubscribe' for tracking's unsubscribes) and the reply or diagnostic it was
-- decided on in `reply`, so `mtaserver suppression review` can judge it again with a newer
-- table. Entries made before this migration keep their old label (a category such as
-- 'unknown-recipient', or 'soft-bounces:mailbox-full') and a NULL reply: review reads
-- their reason as unknown and reclassifies the text of the bounce event that caused them.

ALTER TABLE suppressions ADD COLUMN reply TEXT;  -- NULL: not recorded (older, manual)
