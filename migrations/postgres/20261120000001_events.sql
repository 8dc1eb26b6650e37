-- The event store. postgres-es writes the first seven columns; the rest have defaults so its
-- INSERT keeps working:
--   position        global order of insertion (not of commit: see transaction_id)
--   recorded_at     when the row was written, by the database's clock
--   transaction_id  the writing transaction, so readers can order by commit safely
CREATE TABLE events
(
    aggregate_type text                           NOT NULL,
    aggregate_id   text                           NOT NULL,
    sequence       bigint CHECK (sequence >= 0)   NOT NULL,
    event_type     text                           NOT NULL,
    event_version  text                           NOT NULL,
    payload        jsonb                          NOT NULL,
    metadata       jsonb                          NOT NULL,
    position       bigserial                      NOT NULL UNIQUE,
    recorded_at    timestamptz                    NOT NULL DEFAULT clock_timestamp(),
    transaction_id xid8                           NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE INDEX events_commit_order ON events (transaction_id, position);

-- Requests that carried an Idempotency-Key, with the response that was given.
CREATE TABLE idempotency_keys
(
    owner        text    NOT NULL,
    key          text    NOT NULL,
    request_hash text    NOT NULL,
    status       integer,
    response     text,
    created_ms   bigint  NOT NULL,
    PRIMARY KEY (owner, key)
);
