//! The `jobs` table: durable work with an idempotency key, claimed by dispatchers with
//! `FOR UPDATE SKIP LOCKED` (PostgreSQL; SQLite has one writer at a time), retried with
//! backoff, dead-lettered after its last attempt.
//!
//! Batches go in one statement on both backends: arrays (`unnest`) on PostgreSQL, a JSON
//! array (`json_each`) on SQLite. The two texts of each statement sit side by side here; the
//! algorithm is the same.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::notification_log::{self, LogOutcome, LogUpdate};
use crate::{with_tx, Db, Store, StoreError, Tx};

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Send one notification (its row in `notification_log` has the job's id).
    Notify,
    /// A reminder timer: when due, re-checks the consultation and queues the reminder's sends.
    Reminder,
    /// A deadline timer: when due, re-checks the consultation and expires it if still due.
    Deadline,
    /// Create or end a consultation's video room (creation and the end-of-time close are
    /// timers too).
    Room,
    /// Place a phone call between the two participants.
    Call,
    /// Ask the payment provider to refund a payment.
    Refund,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Notify => "notify",
            Self::Reminder => "reminder",
            Self::Deadline => "deadline",
            Self::Room => "room",
            Self::Call => "call",
            Self::Refund => "refund",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "notify" => Some(Self::Notify),
            "reminder" => Some(Self::Reminder),
            "deadline" => Some(Self::Deadline),
            "room" => Some(Self::Room),
            "call" => Some(Self::Call),
            "refund" => Some(Self::Refund),
            _ => None,
        }
    }
}

/// A job to insert. The payload is the serde form of the job kind's typed payload.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub key: String,
    pub kind: JobKind,
    pub consultation_id: String,
    pub payload: serde_json::Value,
    pub due_at_ms: i64,
    pub max_attempts: i32,
}

/// A stored job (claimed, dead-lettered or re-queued).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub id: String,
    pub key: String,
    /// The stored kind; [`Job::job_kind`] reads it (a kind this build does not know is a job
    /// it cannot run, dead-lettered with that reason).
    pub kind: String,
    pub consultation_id: String,
    /// The payload's JSON text.
    pub payload: String,
    pub status: String,
    pub due_at_ms: i64,
    /// Attempts including the current one.
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Job {
    pub fn job_kind(&self) -> Option<JobKind> {
        JobKind::parse(&self.kind)
    }
}

/// A job that is not a notification, as an audit shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TimerRow {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub due_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

/// What becomes of a claimed job once it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    Done,
    /// Back to `pending`, due again at this instant.
    Retry {
        at_ms: i64,
    },
    /// Dead-lettered: never run again unless an admin asks.
    Dead,
}

impl Settlement {
    fn status(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Retry { .. } => "pending",
            Self::Dead => "dead",
        }
    }

    fn due_at(self) -> Option<i64> {
        match self {
            Self::Retry { at_ms } => Some(at_ms),
            Self::Done | Self::Dead => None,
        }
    }
}

/// One claimed job's outcome, to record.
#[derive(Debug, Clone)]
pub struct Settled {
    pub id: String,
    pub settlement: Settlement,
    pub error: Option<String>,
    /// What becomes of the job's notification (notify jobs).
    pub log: Option<LogOutcome>,
    /// The attempts made, as the notification log shows them.
    pub attempts: i32,
}

/// SELECT list of [`Job`]: the payload as text on PostgreSQL, where the column is `json`.
fn job_columns(tx_is_pg: bool) -> &'static str {
    if tx_is_pg {
        "id, key, kind, consultation_id, payload::text AS payload, status, due_at_ms, \
         attempts, max_attempts, last_error, created_at_ms, updated_at_ms"
    } else {
        "id, key, kind, consultation_id, payload, status, due_at_ms, \
         attempts, max_attempts, last_error, created_at_ms, updated_at_ms"
    }
}

fn is_pg(db: &Db) -> bool {
    matches!(db, Db::Postgres(_))
}

/// Inserts a job unless one with its key exists; returns whether it was inserted.
pub async fn insert(tx: &mut Tx<'_>, job: &NewJob, now_ms: i64) -> Result<bool, StoreError> {
    Ok(insert_many(tx, &[(job, false)], now_ms)
        .await?
        .contains(&job.id))
}

/// Whether a job with this key was ever queued (whatever became of it since).
pub async fn exists(tx: &mut Tx<'_>, key: &str) -> Result<bool, StoreError> {
    Ok(!existing_keys(tx, &[key.to_owned()]).await?.is_empty())
}

/// Which of `keys` were ever queued, in one query.
pub async fn existing_keys(
    tx: &mut Tx<'_>,
    keys: &[String],
) -> Result<HashSet<String>, StoreError> {
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let found: Vec<String> = match tx {
        Tx::Postgres(conn) => {
            sqlx::query_scalar("SELECT key FROM jobs WHERE key = ANY($1)")
                .bind(keys)
                .fetch_all(&mut **conn)
                .await?
        }
        Tx::Sqlite(conn) => {
            sqlx::query_scalar(
                "SELECT key FROM jobs WHERE key IN (SELECT value FROM json_each($1))",
            )
            .bind(json!(keys).to_string())
            .fetch_all(&mut **conn)
            .await?
        }
    };
    Ok(found.into_iter().collect())
}

/// Cancels the pending timers of several (consultation, kind) pairs, in one statement.
pub async fn cancel_timers_of(
    tx: &mut Tx<'_>,
    pairs: &[(&str, JobKind)],
    now_ms: i64,
) -> Result<u64, StoreError> {
    if pairs.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = pairs.iter().map(|(id, _)| *id).collect();
    let kinds: Vec<&str> = pairs.iter().map(|(_, kind)| kind.as_str()).collect();
    let done = match tx {
        Tx::Postgres(conn) => {
            const SQL: &str = "UPDATE jobs SET status = 'cancelled', updated_at_ms = $3, \
                                      finished_at_ms = $3 \
                                 FROM (SELECT DISTINCT id, kind \
                                         FROM unnest($1::text[], $2::text[]) AS c(id, kind)) AS c \
                                WHERE jobs.consultation_id = c.id AND jobs.kind = c.kind \
                                  AND jobs.status = 'pending'";
            sqlx::query(SQL)
                .bind(&ids)
                .bind(&kinds)
                .bind(now_ms)
                .execute(&mut **conn)
                .await?
                .rows_affected()
        }
        Tx::Sqlite(conn) => {
            const SQL: &str = "UPDATE jobs SET status = 'cancelled', updated_at_ms = $2, \
                                      finished_at_ms = $2 \
                                WHERE status = 'pending' \
                                  AND (consultation_id, kind) IN \
                                      (SELECT json_extract(value, '$[0]'), \
                                              json_extract(value, '$[1]') \
                                         FROM json_each($1))";
            let pairs: Vec<[&str; 2]> = ids.iter().zip(&kinds).map(|(i, k)| [*i, *k]).collect();
            sqlx::query(SQL)
                .bind(json!(pairs).to_string())
                .bind(now_ms)
                .execute(&mut **conn)
                .await?
                .rows_affected()
        }
    };
    Ok(done)
}

/// Cancels the pending timers of a consultation of one kind.
pub async fn cancel_timers(
    tx: &mut Tx<'_>,
    consultation_id: &str,
    kind: JobKind,
    now_ms: i64,
) -> Result<u64, StoreError> {
    cancel_timers_of(tx, &[(consultation_id, kind)], now_ms).await
}

/// Inserts several jobs, each `pending` or, when its flag is set, already `cancelled`, unless
/// one with its key exists, in one statement. Returns the ids inserted.
pub async fn insert_many(
    tx: &mut Tx<'_>,
    jobs: &[(&NewJob, bool)],
    now_ms: i64,
) -> Result<HashSet<String>, StoreError> {
    if jobs.is_empty() {
        return Ok(HashSet::new());
    }
    let status = |cancelled: bool| if cancelled { "cancelled" } else { "pending" };
    let rows: Vec<String> = match tx {
        Tx::Postgres(conn) => {
            let mut ids = Vec::with_capacity(jobs.len());
            let mut keys = Vec::with_capacity(jobs.len());
            let mut kinds = Vec::with_capacity(jobs.len());
            let mut consultations = Vec::with_capacity(jobs.len());
            let mut payloads = Vec::with_capacity(jobs.len());
            let mut statuses = Vec::with_capacity(jobs.len());
            let mut due = Vec::with_capacity(jobs.len());
            let mut attempts = Vec::with_capacity(jobs.len());
            for (job, cancelled) in jobs {
                ids.push(job.id.as_str());
                keys.push(job.key.as_str());
                kinds.push(job.kind.as_str());
                consultations.push(job.consultation_id.as_str());
                payloads.push(job.payload.to_string());
                statuses.push(status(*cancelled));
                due.push(job.due_at_ms);
                attempts.push(job.max_attempts);
            }
            const SQL: &str = "INSERT INTO jobs (id, key, kind, consultation_id, payload, status, \
                                      due_at_ms, max_attempts, created_at_ms, updated_at_ms, \
                                      finished_at_ms) \
                               SELECT id, key, kind, consultation_id, payload::json, status, due, \
                                      attempts, $9, $9, \
                                      CASE WHEN status = 'cancelled' THEN $9 END \
                                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                                             $5::text[], $6::text[], $7::bigint[], $8::int[]) \
                                      AS t(id, key, kind, consultation_id, payload, status, due, \
                                           attempts) \
                               ON CONFLICT (key) DO NOTHING \
                               RETURNING id";
            sqlx::query_scalar(SQL)
                .bind(&ids)
                .bind(&keys)
                .bind(&kinds)
                .bind(&consultations)
                .bind(&payloads)
                .bind(&statuses)
                .bind(&due)
                .bind(&attempts)
                .bind(now_ms)
                .fetch_all(&mut **conn)
                .await?
        }
        Tx::Sqlite(conn) => {
            let rows: Vec<serde_json::Value> = jobs
                .iter()
                .map(|(job, cancelled)| {
                    json!([
                        job.id,
                        job.key,
                        job.kind.as_str(),
                        job.consultation_id,
                        job.payload.to_string(),
                        status(*cancelled),
                        job.due_at_ms,
                        job.max_attempts,
                    ])
                })
                .collect();
            // `WHERE true` lets SQLite parse the upsert clause after a SELECT.
            const SQL: &str = "INSERT INTO jobs (id, key, kind, consultation_id, payload, status, \
                                      due_at_ms, max_attempts, created_at_ms, updated_at_ms, \
                                      finished_at_ms) \
                               SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                                      json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
                                      json_extract(value, '$[4]'), json_extract(value, '$[5]'), \
                                      json_extract(value, '$[6]'), json_extract(value, '$[7]'), \
                                      $2, $2, \
                                      CASE WHEN json_extract(value, '$[5]') = 'cancelled' \
                                           THEN $2 END \
                                 FROM json_each($1) WHERE true \
                               ON CONFLICT (key) DO NOTHING \
                               RETURNING id";
            sqlx::query_scalar(SQL)
                .bind(serde_json::Value::Array(rows).to_string())
                .bind(now_ms)
                .fetch_all(&mut **conn)
                .await?
        }
    };
    Ok(rows.into_iter().collect())
}

/// Claims up to `limit` due jobs for `owner` for `lease`: pending jobs whose time has come, and
/// running jobs whose owner's lock ran out (it died mid-run).
pub async fn claim(
    store: &Store,
    owner: &str,
    limit: u32,
    lease: Duration,
    now_ms: i64,
) -> Result<Vec<Job>, StoreError> {
    let lock_until = now_ms + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
    dead_letter_abandoned(store, now_ms).await?;
    let pg = is_pg(store.db());
    // SQLite has one writer at a time: nothing to skip.
    let lock = if pg { " FOR UPDATE SKIP LOCKED" } else { "" };
    let sql = format!(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = $1, \
                locked_until_ms = $2, updated_at_ms = $3 \
          WHERE id IN (SELECT id FROM jobs \
                        WHERE (status = 'pending' AND due_at_ms <= $3) \
                           OR (status = 'running' AND locked_until_ms < $3 \
                               AND attempts < max_attempts) \
                        ORDER BY due_at_ms LIMIT $4{lock}) \
         RETURNING {}",
        job_columns(pg)
    );
    let jobs = with_pool!(store.db(), pool => {
        sqlx::query_as(&sql)
            .bind(owner)
            .bind(lock_until)
            .bind(now_ms)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
    });
    Ok(jobs)
}

/// Dead-letters running jobs whose lock ran out on their last attempt, instead of claiming
/// them again: a job whose worker keeps dying on it, or keeps failing to record its outcome,
/// would otherwise run (and a message be sent) once per lease for ever. Their notifications
/// are marked `dead` with the same reason.
async fn dead_letter_abandoned(store: &Store, now_ms: i64) -> Result<(), StoreError> {
    #[derive(sqlx::FromRow)]
    struct Abandoned {
        id: String,
        kind: String,
        last_error: String,
    }
    const JOBS: &str = "UPDATE jobs SET status = 'dead', locked_by = NULL, updated_at_ms = $1, \
                               finished_at_ms = $1, \
                               last_error = 'attempt ' || attempts || ' of ' || max_attempts || \
                                 ' never finished: its worker stopped or could not record the \
                                 outcome before its lock ran out; not run again' \
                         WHERE status = 'running' AND locked_until_ms < $1 \
                           AND attempts >= max_attempts \
                     RETURNING id, kind, last_error";
    let abandoned: Vec<Abandoned> = with_pool!(store.db(), pool => {
        sqlx::query_as(JOBS).bind(now_ms).fetch_all(pool).await?
    });
    for job in abandoned {
        tracing::warn!(job = %job.id, kind = %job.kind, error = %job.last_error, "job dead-lettered");
        if job.kind == JobKind::Notify.as_str() {
            notification_log::mark_dead(store, &job.id, &job.last_error, now_ms).await?;
        }
    }
    Ok(())
}

/// The earliest time a pending job is due, if any.
pub async fn next_due(store: &Store) -> Result<Option<i64>, StoreError> {
    const SQL: &str = "SELECT min(due_at_ms) FROM jobs WHERE status = 'pending'";
    Ok(with_pool!(store.db(), pool => sqlx::query_scalar(SQL).fetch_one(pool).await?))
}

/// Records the outcomes of claimed jobs in `tx`: the jobs `owner` still holds move in one
/// statement, and their notifications in another. A sent notification is recorded even if the
/// lock was lost meanwhile: it did go out.
///
/// On PostgreSQL the commit does not wait for the WAL flush (`synchronous_commit = off`): a
/// commit lost in a server crash leaves the jobs `running`, their locks run out and they run
/// again, which is within the at-least-once promise.
pub async fn record_outcomes(
    tx: &mut Tx<'_>,
    owner: &str,
    settled: &[Settled],
    now_ms: i64,
) -> Result<(), StoreError> {
    if settled.is_empty() {
        return Ok(());
    }
    let held: Vec<String> = match tx {
        Tx::Postgres(conn) => {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut **conn)
                .await?;
            const SQL: &str = "UPDATE jobs SET status = u.status, \
                                      due_at_ms = COALESCE(u.due_at, jobs.due_at_ms), \
                                      locked_by = NULL, last_error = u.error, updated_at_ms = $6, \
                                      finished_at_ms = CASE WHEN u.status = 'pending' THEN NULL \
                                                            ELSE $6 END \
                                 FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[]) \
                                      AS u(id, status, due_at, error) \
                                WHERE jobs.id = u.id AND jobs.locked_by = $5 \
                                  AND jobs.status = 'running' \
                               RETURNING jobs.id";
            sqlx::query_scalar(SQL)
                .bind(settled.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
                .bind(
                    settled
                        .iter()
                        .map(|s| s.settlement.status())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    settled
                        .iter()
                        .map(|s| s.settlement.due_at())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    settled
                        .iter()
                        .map(|s| s.error.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(owner)
                .bind(now_ms)
                .fetch_all(&mut **conn)
                .await?
        }
        Tx::Sqlite(conn) => {
            let rows: Vec<serde_json::Value> = settled
                .iter()
                .map(|s| json!([s.id, s.settlement.status(), s.settlement.due_at(), s.error]))
                .collect();
            const SQL: &str = "UPDATE jobs SET status = json_extract(u.value, '$[1]'), \
                                      due_at_ms = COALESCE(json_extract(u.value, '$[2]'), \
                                                           jobs.due_at_ms), \
                                      locked_by = NULL, \
                                      last_error = json_extract(u.value, '$[3]'), \
                                      updated_at_ms = $3, \
                                      finished_at_ms = CASE WHEN json_extract(u.value, '$[1]') \
                                                                 = 'pending' \
                                                            THEN NULL ELSE $3 END \
                                 FROM json_each($1) AS u \
                                WHERE jobs.id = json_extract(u.value, '$[0]') \
                                  AND jobs.locked_by = $2 AND jobs.status = 'running' \
                               RETURNING id";
            sqlx::query_scalar(SQL)
                .bind(serde_json::Value::Array(rows).to_string())
                .bind(owner)
                .bind(now_ms)
                .fetch_all(&mut **conn)
                .await?
        }
    };
    let logged: Vec<LogUpdate<'_>> = settled
        .iter()
        .filter_map(|s| {
            let outcome = s.log.as_ref()?;
            let recorded = outcome.is_sent() || held.contains(&s.id);
            recorded.then_some(LogUpdate {
                id: &s.id,
                attempts: s.attempts,
                outcome,
                error: s.error.as_deref(),
            })
        })
        .collect();
    notification_log::record_outcomes(tx, &logged, now_ms).await
}

/// Dead-letters a job `owner` still holds, with the reason; returns whether it held it.
pub async fn dead_letter_held(
    tx: &mut Tx<'_>,
    id: &str,
    owner: &str,
    error: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    const SQL: &str = "UPDATE jobs SET status = 'dead', locked_by = NULL, last_error = $3, \
                              updated_at_ms = $4, finished_at_ms = $4 \
                        WHERE id = $1 AND locked_by = $2 AND status = 'running'";
    let done = with_tx!(tx, conn => {
        sqlx::query(SQL).bind(id).bind(owner).bind(error).bind(now_ms)
            .execute(conn).await?.rows_affected()
    });
    Ok(done == 1)
}

/// Dead-lettered jobs, newest first.
pub async fn dead_letters(store: &Store, limit: u32) -> Result<Vec<Job>, StoreError> {
    let sql = format!(
        "SELECT {} FROM jobs WHERE status = 'dead' ORDER BY updated_at_ms DESC, id LIMIT $1",
        job_columns(is_pg(store.db()))
    );
    Ok(with_pool!(store.db(), pool => {
        sqlx::query_as(&sql).bind(i64::from(limit)).fetch_all(pool).await?
    }))
}

/// Puts a dead-lettered job back in the queue, due now, with a fresh set of attempts, and its
/// notification (if it is one) back to `pending`, in one transaction. Returns the job, or
/// `None` when no dead job has this id.
pub async fn retry_dead(store: &Store, id: &str, now_ms: i64) -> Result<Option<Job>, StoreError> {
    let sql = format!(
        "UPDATE jobs SET status = 'pending', attempts = 0, due_at_ms = $2, updated_at_ms = $2, \
                finished_at_ms = NULL \
          WHERE id = $1 AND status = 'dead' RETURNING {}",
        job_columns(is_pg(store.db()))
    );
    let mut write = store.begin_write().await?;
    let job: Option<Job> = with_tx!(&mut write.tx(), conn => {
        sqlx::query_as(&sql).bind(id).bind(now_ms).fetch_optional(conn).await?
    });
    if job.is_some() {
        notification_log::requeue(&mut write.tx(), id, now_ms).await?;
    }
    write.commit().await?;
    Ok(job)
}

/// Counts of jobs by kind and status, for `/metrics`.
pub async fn counts(store: &Store) -> Result<Vec<(String, String, i64)>, StoreError> {
    const SQL: &str =
        "SELECT kind, status, count(*) FROM jobs GROUP BY kind, status ORDER BY kind, status";
    Ok(with_pool!(store.db(), pool => sqlx::query_as(SQL).fetch_all(pool).await?))
}

/// A consultation's jobs other than notifications created up to `until_ms`, oldest first.
pub async fn timers_of(
    store: &Store,
    consultation_id: &str,
    until_ms: i64,
) -> Result<Vec<TimerRow>, StoreError> {
    const SQL: &str = "SELECT id, kind, status, attempts, last_error, created_at_ms, due_at_ms, \
                              finished_at_ms \
                         FROM jobs WHERE consultation_id = $1 AND kind <> 'notify' \
                          AND created_at_ms <= $2 \
                        ORDER BY created_at_ms, id";
    Ok(with_pool!(store.db(), pool => {
        sqlx::query_as(SQL).bind(consultation_id).bind(until_ms).fetch_all(pool).await?
    }))
}
