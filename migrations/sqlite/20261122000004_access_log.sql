-- Who looked at what (HIPAA audit controls): every read of a consultation, its history, its
-- notifications or its FHIR export, with the caller, the outcome and the request id. Written by
-- the API before the response leaves; a read that cannot be recorded is not answered.
CREATE TABLE access_log
(
    id              integer PRIMARY KEY AUTOINCREMENT,
    at_ms           integer NOT NULL,
    actor_id        text   NOT NULL,
    actor_role      text   NOT NULL,
    action          text   NOT NULL,
    consultation_id text   NOT NULL,
    outcome         integer NOT NULL,
    request_id      text   NOT NULL
) STRICT;

CREATE INDEX access_log_by_consultation ON access_log (consultation_id, at_ms);
CREATE INDEX access_log_by_time ON access_log (at_ms);
