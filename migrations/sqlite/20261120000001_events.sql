-- The event store. sqlite-es writes the first seven columns. SQLite lets one writer commit at a
-- time, so the order of rowids is the order of commits: position is the rowid, copied into its
-- own column by a trigger so that readers and the PostgreSQL schema speak of the same thing.
CREATE TABLE events
(
    aggregate_type text                           NOT NULL,
    aggregate_id   text                           NOT NULL,
    sequence       integer CHECK (sequence >= 0)  NOT NULL,
    event_type     text                           NOT NULL,
    event_version  text                           NOT NULL,
    payload        text                           NOT NULL,
    metadata       text                           NOT NULL,
    position       integer,
    recorded_at    text                           NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
) STRICT;

CREATE UNIQUE INDEX events_position ON events (position);

CREATE TRIGGER events_assign_position
    AFTER INSERT ON events
BEGIN
    UPDATE events SET position = NEW.rowid WHERE rowid = NEW.rowid;
END;

-- Requests that carried an Idempotency-Key, with the response that was given.
CREATE TABLE idempotency_keys
(
    owner        text    NOT NULL,
    key          text    NOT NULL,
    request_hash text    NOT NULL,
    status       integer,
    response     text,
    created_ms   integer NOT NULL,
    PRIMARY KEY (owner, key)
) STRICT;
