-- Durable jobs and timers written by the reactors and run by the dispatcher.
--
-- `key` is the job's idempotency key: the reactor derives it from the event (or the timer) that
-- caused the job, so a redelivered event or a replay inserts nothing new. A job is claimed by
-- setting it `running` with a lock that expires (a worker that dies mid-run leaves its jobs to
-- be claimed again once the lock runs out); failures go back to `pending` with a later `due_at_ms`
-- until `max_attempts`, then `dead`. Timers are jobs whose `due_at_ms` lies ahead; a reschedule or
-- a cancellation marks pending timers `cancelled`.
CREATE TABLE jobs
(
    id               text    PRIMARY KEY,
    key              text    NOT NULL UNIQUE,
    kind             text    NOT NULL,
    consultation_id  text    NOT NULL,
    payload          text    NOT NULL,
    status           text    NOT NULL,
    due_at_ms        integer  NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    locked_by        text,
    locked_until_ms  integer NOT NULL DEFAULT 0,
    last_error       text,
    created_at_ms    integer  NOT NULL,
    updated_at_ms    integer  NOT NULL,
    finished_at_ms   integer
) STRICT;

CREATE INDEX jobs_due ON jobs (due_at_ms) WHERE status = 'pending';
CREATE INDEX jobs_locked ON jobs (locked_until_ms) WHERE status = 'running';
CREATE INDEX jobs_by_consultation ON jobs (consultation_id);
CREATE INDEX jobs_dead ON jobs (updated_at_ms) WHERE status = 'dead';

-- The flood guard counts recent sends per recipient by a hash of the address.
ALTER TABLE notification_log ADD COLUMN recipient_key text NOT NULL DEFAULT '';
CREATE INDEX notification_log_by_recipient ON notification_log (recipient_key, sent_at_ms);
