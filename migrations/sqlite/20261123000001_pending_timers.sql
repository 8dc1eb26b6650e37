-- Pending timers of one consultation, for the reactors' cancel-and-replace (a reschedule, a
-- cancellation, an acceptance cancelling its deadline). Without it PostgreSQL may answer
-- `consultation_id = $1 AND kind = $2 AND status = 'pending'` by walking `jobs_due`, every
-- pending job of every consultation: a benchmark with 10,000 upcoming consultations spent
-- 24 ms on each such update and the notifications reactor fell behind.
CREATE INDEX jobs_pending_by_consultation ON jobs (consultation_id, kind) WHERE status = 'pending';
