-- Durable subscriptions to the global log (projections now, reactors later).
--
-- The checkpoint is the (transaction_id, position) of the last event the subscription handled;
-- a batch of events and the move of the checkpoint commit together. One process owns a
-- subscription at a time: the lease (owner, lease_until_ms by the database clock) is renewed
-- while it works and can be taken once it has run out. reset_pending asks the owner to empty
-- the read model and replay from the start.
CREATE TABLE subscriptions
(
    name              text    PRIMARY KEY,
    transaction_id    xid8    NOT NULL DEFAULT '0',
    position          bigint  NOT NULL DEFAULT 0,
    applied           bigint  NOT NULL DEFAULT 0,
    owner             text,
    lease_until_ms    bigint  NOT NULL DEFAULT 0,
    reset_pending     boolean NOT NULL DEFAULT false,
    reset_at_ms       bigint,
    updated_at_ms     bigint  NOT NULL DEFAULT 0,
    failing_since_ms  bigint,
    failures          integer NOT NULL DEFAULT 0,
    last_error        text
);

-- Read model of the `consultations` projection: one row per consultation, for the summary, the
-- filtered lists and the providers' schedules. Instants are milliseconds since the Unix epoch
-- (the same on both backends). `state` is the consultation as the domain folds it, so the next
-- event is applied by the domain's own rules.
CREATE TABLE consultation_summaries
(
    id             text   PRIMARY KEY,
    patient_id     text   NOT NULL,
    provider_id    text   NOT NULL,
    status         text   NOT NULL,
    payment_status text   NOT NULL,
    mode           text   NOT NULL,
    starts_at_ms   bigint NOT NULL,
    ends_at_ms     bigint NOT NULL,
    version        bigint NOT NULL,
    position       bigint NOT NULL,
    updated_at_ms  bigint NOT NULL,
    state          jsonb  NOT NULL
) WITH (fillfactor = 70);
-- Most events change a row without touching an indexed column (status, payment, state): room
-- left on each page lets PostgreSQL update those rows in place without new index entries.

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
    scheduled_for_ms    bigint  NOT NULL,
    sent_at_ms          bigint,
    last_error          text,
    updated_at_ms       bigint  NOT NULL
);

CREATE INDEX notification_log_by_consultation ON notification_log (consultation_id, scheduled_for_ms);
CREATE UNIQUE INDEX notification_log_by_message ON notification_log (provider_message_id);
