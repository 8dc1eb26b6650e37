-- Phone calls between the two participants of a voice consultation: one row per call asked for
-- (the CallRequested event's call id), kept up to date by the dispatcher (the provider's call
-- id once placed) and by the provider's status callbacks, which may repeat or arrive out of
-- order: a callback only moves the row forward (`last_sequence`, Twilio's SequenceNumber).
CREATE TABLE calls
(
    id               text    PRIMARY KEY,
    consultation_id  text    NOT NULL,
    requested_by     text    NOT NULL,
    provider_call_id text,
    status           text    NOT NULL,
    last_sequence    bigint,
    duration_seconds integer,
    last_error       text,
    created_at_ms    bigint  NOT NULL,
    updated_at_ms    bigint  NOT NULL
);

CREATE INDEX calls_by_consultation ON calls (consultation_id, created_at_ms);
