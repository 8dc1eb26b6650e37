-- Durable subscriptions to the global log (projections now, reactors later).
--
-- The checkpoint is the position of the last event the subscription handled (SQLite commits one
-- writer at a time, so position order is commit order and transaction_id stays 0); a batch of
-- events and the move of the checkpoint commit together. One process owns a subscription at a
-- time: the lease (owner, lease_until_ms) is renewed while it works and can be taken once it
-- has run out. reset_pending asks the owner to empty the read model and replay from the start.
CREATE TABLE subscriptions
(
    name              text    PRIMARY KEY,
    transaction_id    integer NOT NULL DEFAULT 0,
    position          integer NOT NULL DEFAULT 0,
    applied           integer NOT NULL DEFAULT 0,
    owner             text,
    lease_until_ms    integer NOT NULL DEFAULT 0,
    reset_pending     integer NOT NULL DEFAULT 0,
    reset_at_ms       integer,
    updated_at_ms     integer NOT NULL DEFAULT 0,
    failing_since_ms  integer,
    failures          integer NOT NULL DEFAULT 0,
    last_error        text
) STRICT;

-- Read model of the `consultations` projection: one row per consultation, for the summary, the
-- filtered lists and the providers' schedules. Instants are milliseconds since the Unix epoch.
-- `state` is the consultation as the domain folds it, so the next event is applied by the
-- domain's own rules.
CREATE TABLE consultation_summaries
(
    id             text    PRIMARY KEY,
    patient_id     text    NOT NULL,
    provider_id    text    NOT NULL,
    status         text    NOT NULL,
    payment_status text    NOT NULL,
    mode           text    NOT NULL,
    starts_at_ms   integer NOT NULL,
    ends_at_ms     integer NOT NULL,
    version        integer NOT NULL,
    position       integer NOT NULL,
    updated_at_ms  integer NOT NULL,
    state          text    NOT NULL
) STRICT;

CREATE INDEX consultation_summaries_by_start ON consultation_summaries (starts_at_ms, id);
CREATE INDEX consultation_summaries_by_patient ON consultation_summaries (patient_id, starts_at_ms, id);
CREATE INDEX consultation_summaries_by_provider ON consultation_summaries (provider_id, starts_at_ms, id);

-- The notification log the reactors write: one row per notification of a consultation.
-- Recipients are stored masked; the message body is never stored here.
CREATE TABLE notification_log
(
    id                  text    PRIMARY KEY,
    consultation_id     text    NOT NULL,
    recipient_role      text    NOT NULL,
    channel             text    NOT NULL,
    kind                text    NOT NULL,
    recipient_masked    text    NOT NULL,
    status              text    NOT NULL,
    attempts            integer NOT NULL DEFAULT 0,
    provider_message_id text,
    scheduled_for_ms    integer NOT NULL,
    sent_at_ms          integer,
    last_error          text,
    updated_at_ms       integer NOT NULL
) STRICT;

CREATE INDEX notification_log_by_consultation ON notification_log (consultation_id, scheduled_for_ms);
CREATE UNIQUE INDEX notification_log_by_message ON notification_log (provider_message_id);
