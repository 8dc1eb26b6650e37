-- Every event the payment provider's webhook delivered, once: the primary key on the provider's
-- event id makes the claim atomic, so two copies arriving together are processed once. A row
-- without an outcome is a claim in progress (released if processing fails, taken over after
-- 30 s if its process died). `outcome`: applied, flagged (amount or currency not the price),
-- already_recorded, refused (the consultation's state refuses it), ignored (not about a known
-- consultation, or a type not handled).
CREATE TABLE payment_events
(
    event_id         text    PRIMARY KEY,
    event_type       text    NOT NULL,
    consultation_id  text    NOT NULL,
    outcome          text,
    detail           text,
    received_at_ms   integer  NOT NULL,
    claimed_at_ms    integer  NOT NULL,
    finished_at_ms   integer
) STRICT;

CREATE INDEX payment_events_by_time ON payment_events (received_at_ms);
CREATE INDEX payment_events_by_consultation ON payment_events (consultation_id);
