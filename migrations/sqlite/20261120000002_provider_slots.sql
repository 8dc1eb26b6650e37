-- A provider's accepted consultations may not overlap. Triggers on events keep provider_slots in
-- the transaction that stores the event, and refuse an overlap by aborting it. SQLite runs one
-- write transaction at a time, so the check and the insert cannot interleave with another's.
-- Instants are kept as Julian day numbers so that they compare as numbers.
CREATE TABLE provider_slots
(
    consultation_id text PRIMARY KEY,
    provider_id     text NOT NULL,
    starts_at       real NOT NULL,
    ends_at         real NOT NULL
) STRICT;

CREATE INDEX provider_slots_by_provider ON provider_slots (provider_id, starts_at);

CREATE TRIGGER events_slot_taken
    AFTER INSERT ON events
    WHEN NEW.aggregate_type = 'consultation' AND NEW.event_type = 'Accepted'
BEGIN
    SELECT RAISE(ABORT, 'slot_conflict')
     WHERE EXISTS (SELECT 1
                     FROM provider_slots
                    WHERE provider_id = json_extract(NEW.payload, '$.Accepted.provider_id')
                      AND consultation_id <> NEW.aggregate_id
                      AND starts_at < julianday(json_extract(NEW.payload, '$.Accepted.ends_at'))
                      AND ends_at > julianday(json_extract(NEW.payload, '$.Accepted.starts_at')));
    INSERT INTO provider_slots (consultation_id, provider_id, starts_at, ends_at)
    VALUES (NEW.aggregate_id,
            json_extract(NEW.payload, '$.Accepted.provider_id'),
            julianday(json_extract(NEW.payload, '$.Accepted.starts_at')),
            julianday(json_extract(NEW.payload, '$.Accepted.ends_at')));
END;

CREATE TRIGGER events_slot_moved
    AFTER INSERT ON events
    WHEN NEW.aggregate_type = 'consultation' AND NEW.event_type = 'Rescheduled'
BEGIN
    SELECT RAISE(ABORT, 'slot_conflict')
     WHERE EXISTS (SELECT 1 FROM provider_slots WHERE consultation_id = NEW.aggregate_id)
       AND EXISTS (SELECT 1
                     FROM provider_slots
                    WHERE provider_id = json_extract(NEW.payload, '$.Rescheduled.provider_id')
                      AND consultation_id <> NEW.aggregate_id
                      AND starts_at < julianday(json_extract(NEW.payload, '$.Rescheduled.ends_at'))
                      AND ends_at > julianday(json_extract(NEW.payload, '$.Rescheduled.starts_at')));
    UPDATE provider_slots
       SET starts_at = julianday(json_extract(NEW.payload, '$.Rescheduled.starts_at')),
           ends_at   = julianday(json_extract(NEW.payload, '$.Rescheduled.ends_at'))
     WHERE consultation_id = NEW.aggregate_id;
END;

CREATE TRIGGER events_slot_freed
    AFTER INSERT ON events
    WHEN NEW.aggregate_type = 'consultation'
     AND NEW.event_type IN ('Declined', 'Cancelled', 'Expired', 'NoShowRecorded')
BEGIN
    DELETE FROM provider_slots WHERE consultation_id = NEW.aggregate_id;
END;
