-- A provider's accepted consultations may not overlap. The rule is kept by the database, in the
-- transaction that stores the event that takes, moves or frees a slot: a trigger on events
-- maintains provider_slots and the exclusion constraint refuses an overlap, so two accepts that
-- race cannot both commit.
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE provider_slots
(
    consultation_id text      PRIMARY KEY,
    provider_id     text      NOT NULL,
    during          tstzrange NOT NULL,
    CONSTRAINT provider_slots_no_overlap EXCLUDE USING gist (provider_id WITH =, during WITH &&)
);

CREATE FUNCTION events_maintain_provider_slots() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF NEW.aggregate_type <> 'consultation' THEN
        RETURN NEW;
    END IF;
    IF NEW.event_type = 'Accepted' THEN
        INSERT INTO provider_slots (consultation_id, provider_id, during)
        VALUES (NEW.aggregate_id,
                NEW.payload -> 'Accepted' ->> 'provider_id',
                tstzrange((NEW.payload -> 'Accepted' ->> 'starts_at')::timestamptz,
                          (NEW.payload -> 'Accepted' ->> 'ends_at')::timestamptz, '[)'));
    ELSIF NEW.event_type = 'Rescheduled' THEN
        UPDATE provider_slots
           SET during = tstzrange((NEW.payload -> 'Rescheduled' ->> 'starts_at')::timestamptz,
                                  (NEW.payload -> 'Rescheduled' ->> 'ends_at')::timestamptz, '[)')
         WHERE consultation_id = NEW.aggregate_id;
    ELSIF NEW.event_type IN ('Declined', 'Cancelled', 'Expired', 'NoShowRecorded') THEN
        DELETE FROM provider_slots WHERE consultation_id = NEW.aggregate_id;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_provider_slots
    AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_maintain_provider_slots();
