//! The `jobs` table: durable work with an idempotency key, claimed by dispatchers with
//! `FOR UPDATE SKIP LOCKED` (PostgreSQL; SQLite has one writer at a time), retried with
//! backoff, dead-lettered after its last attempt.

use std::time::Duration;

use consult_store::{with_pool, with_tx, Db, Store, StoreError, Tx};
use serde::{Deserialize, Serialize};

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// A job to insert.
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

/// A claimed job.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub id: String,
    pub key: String,
    pub kind: String,
    pub consultation_id: String,
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

const JOB_COLUMNS: &str = "id, key, kind, consultation_id, payload, status, due_at_ms, \
                           attempts, max_attempts, last_error, created_at_ms, updated_at_ms";

fn payload_sql(db_is_pg: bool) -> &'static str {
    if db_is_pg {
        "payload::text AS payload"
    } else {
        "payload"
    }
}

fn columns(pg: bool) -> String {
    JOB_COLUMNS.replace("payload,", &format!("{},", payload_sql(pg)))
}

/// Inserts a job unless one with its key exists; returns whether it was inserted.
pub async fn insert(tx: &mut Tx<'_>, job: &NewJob, now_ms: i64) -> Result<bool, sqlx::Error> {
    let payload = job.payload.to_string();
    let cast = if matches!(tx, Tx::Postgres(_)) {
        "$5::json"
    } else {
        "$5"
    };
    let sql = format!(
        "INSERT INTO jobs (id, key, kind, consultation_id, payload, status, due_at_ms, \
                           max_attempts, created_at_ms, updated_at_ms) \
         VALUES ($1, $2, $3, $4, {cast}, 'pending', $6, $7, $8, $8) \
         ON CONFLICT (key) DO NOTHING"
    );
    let done = with_tx!(tx, conn => {
        sqlx::query(&sql)
            .bind(&job.id)
            .bind(&job.key)
            .bind(job.kind.as_str())
            .bind(&job.consultation_id)
            .bind(&payload)
            .bind(job.due_at_ms)
            .bind(job.max_attempts)
            .bind(now_ms)
            .execute(conn)
            .await?
            .rows_affected()
    });
    Ok(done == 1)
}

/// Whether a job with this key was ever queued (whatever became of it since).
pub async fn exists(tx: &mut Tx<'_>, key: &str) -> Result<bool, sqlx::Error> {
    const SQL: &str = "SELECT count(*) FROM jobs WHERE key = $1";
    let count: i64 = with_tx!(tx, conn => {
        sqlx::query_scalar(SQL).bind(key).fetch_one(conn).await?
    });
    Ok(count > 0)
}

/// Cancels the pending timers of a consultation (reminders, deadlines or both).
pub async fn cancel_timers(
    tx: &mut Tx<'_>,
    consultation_id: &str,
    kind: JobKind,
    now_ms: i64,
) -> Result<u64, sqlx::Error> {
    const SQL: &str = "UPDATE jobs SET status = 'cancelled', updated_at_ms = $3, \
                              finished_at_ms = $3 \
                        WHERE consultation_id = $1 AND kind = $2 AND status = 'pending'";
    let done = with_tx!(tx, conn => {
        sqlx::query(SQL)
            .bind(consultation_id)
            .bind(kind.as_str())
            .bind(now_ms)
            .execute(conn)
            .await?
            .rows_affected()
    });
    Ok(done)
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
    let pg = matches!(store.db(), Db::Postgres(_));
    // SQLite has one writer at a time: nothing to skip.
    let lock = if pg { " FOR UPDATE SKIP LOCKED" } else { "" };
    let sql = format!(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = $1, \
                locked_until_ms = $2, updated_at_ms = $3 \
          WHERE id IN (SELECT id FROM jobs \
                        WHERE (status = 'pending' AND due_at_ms <= $3) \
                           OR (status = 'running' AND locked_until_ms < $3) \
                        ORDER BY due_at_ms LIMIT $4{lock}) \
         RETURNING {}",
        columns(pg)
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

/// The earliest time a pending job is due, if any.
pub async fn next_due(store: &Store) -> Result<Option<i64>, StoreError> {
    const SQL: &str = "SELECT min(due_at_ms) FROM jobs WHERE status = 'pending'";
    Ok(with_pool!(store.db(), pool => sqlx::query_scalar(SQL).fetch_one(pool).await?))
}

/// Marks a claimed job done, if `owner` still holds it.
pub async fn complete(
    tx: &mut Tx<'_>,
    id: &str,
    owner: &str,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    const SQL: &str = "UPDATE jobs SET status = 'done', locked_by = NULL, last_error = NULL, \
                              updated_at_ms = $3, finished_at_ms = $3 \
                        WHERE id = $1 AND locked_by = $2 AND status = 'running'";
    let done = with_tx!(tx, conn => {
        sqlx::query(SQL).bind(id).bind(owner).bind(now_ms).execute(conn).await?.rows_affected()
    });
    Ok(done == 1)
}

/// Puts a failed job back for another attempt at `retry_at_ms`, or dead-letters it (`retry_at_ms`
/// `None`). Returns whether `owner` still held it.
pub async fn fail(
    tx: &mut Tx<'_>,
    id: &str,
    owner: &str,
    error: &str,
    retry_at_ms: Option<i64>,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    let done = match retry_at_ms {
        Some(at) => {
            const SQL: &str = "UPDATE jobs SET status = 'pending', due_at_ms = $4, \
                                      locked_by = NULL, last_error = $3, updated_at_ms = $5 \
                                WHERE id = $1 AND locked_by = $2 AND status = 'running'";
            with_tx!(tx, conn => {
                sqlx::query(SQL).bind(id).bind(owner).bind(error).bind(at).bind(now_ms)
                    .execute(conn).await?.rows_affected()
            })
        }
        None => {
            const SQL: &str = "UPDATE jobs SET status = 'dead', locked_by = NULL, \
                                      last_error = $3, updated_at_ms = $4, finished_at_ms = $4 \
                                WHERE id = $1 AND locked_by = $2 AND status = 'running'";
            with_tx!(tx, conn => {
                sqlx::query(SQL).bind(id).bind(owner).bind(error).bind(now_ms)
                    .execute(conn).await?.rows_affected()
            })
        }
    };
    Ok(done == 1)
}

/// Dead-lettered jobs, newest first.
pub async fn dead_letters(store: &Store, limit: u32) -> Result<Vec<Job>, StoreError> {
    let pg = matches!(store.db(), Db::Postgres(_));
    let sql = format!(
        "SELECT {} FROM jobs WHERE status = 'dead' ORDER BY updated_at_ms DESC, id LIMIT $1",
        columns(pg)
    );
    Ok(with_pool!(store.db(), pool => {
        sqlx::query_as(&sql).bind(i64::from(limit)).fetch_all(pool).await?
    }))
}

/// Puts a dead-lettered job back in the queue, due now, with a fresh set of attempts. Returns
/// the job, or `None` when no dead job has this id.
pub async fn retry_dead(store: &Store, id: &str, now_ms: i64) -> Result<Option<Job>, StoreError> {
    let pg = matches!(store.db(), Db::Postgres(_));
    let sql = format!(
        "UPDATE jobs SET status = 'pending', attempts = 0, due_at_ms = $2, updated_at_ms = $2, \
                finished_at_ms = NULL \
          WHERE id = $1 AND status = 'dead' RETURNING {}",
        columns(pg)
    );
    Ok(with_pool!(store.db(), pool => {
        sqlx::query_as(&sql).bind(id).bind(now_ms).fetch_optional(pool).await?
    }))
}

/// Counts of jobs by kind and status, for `/metrics`.
pub async fn counts(store: &Store) -> Result<Vec<(String, String, i64)>, StoreError> {
    const SQL: &str =
        "SELECT kind, status, count(*) FROM jobs GROUP BY kind, status ORDER BY kind, status";
    Ok(with_pool!(store.db(), pool => sqlx::query_as(SQL).fetch_all(pool).await?))
}
