-- Tamper evidence: each event carries the hash of the previous event of its stream and its own
-- hash over a canonical encoding of the event (aggregate, sequence, type, version, payload,
-- metadata, previous hash). The `chain` subscription seals events in log order, shortly after
-- they commit, and never overwrites a hash; `chain_heads` keeps each stream's last sealed
-- sequence and hash, so that deleting the newest events of a stream, or a whole stream, is
-- also seen by `consult verify`.
ALTER TABLE events ADD COLUMN prev_hash text;
ALTER TABLE events ADD COLUMN hash text;

CREATE TABLE chain_heads
(
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    last_sequence  bigint NOT NULL,
    last_hash      text   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
