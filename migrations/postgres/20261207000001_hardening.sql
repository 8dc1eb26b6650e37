-- Provider message ids (Twilio sids, SMTP Message-IDs) are not ours to make unique: Twilio's
-- published examples and mocks answer one sid for every message, and a unique index turned
-- that into a batch whose outcomes could not be recorded, and so into resends.
DROP INDEX notification_log_by_message;
CREATE INDEX notification_log_by_message ON notification_log (provider_message_id);

-- The flood guard counts recent sends per (sender, recipient): the sender is the other party of
-- the consultation (a hash of their id), so one patient's many bookings cannot use up the
-- provider's allowance for everyone else's.
ALTER TABLE notification_log ADD COLUMN sender_key text NOT NULL DEFAULT '';
DROP INDEX notification_log_by_recipient;
CREATE INDEX notification_log_by_recipient ON notification_log (recipient_key, sender_key, sent_at_ms);

-- Fixed-window counters for request rate limits (bookings per patient): one row per key, its
-- window's start and the requests counted in it, moved by one atomic upsert per request.
CREATE TABLE rate_limits
(
    key             text    PRIMARY KEY,
    window_start_ms bigint  NOT NULL,
    count           integer NOT NULL
);
