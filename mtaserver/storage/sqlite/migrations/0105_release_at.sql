-- A scheduled message (the API's send_at, SMTP FUTURERELEASE) counts its queue lifetime and
-- its delay warning from its release, not from its acceptance: a message held 72 h still
-- gets the whole max_lifetime of retries once it is released.
ALTER TABLE messages ADD COLUMN release_at REAL;
