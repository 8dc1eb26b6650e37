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

/// Which of `keys` were ever queued (PostgreSQL: one query).
pub async fn existing_keys(
    tx: &mut Tx<'_>,
    keys: &[String],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let found: Vec<String> = match tx {
        Tx::Postgres(conn) => {
            sqlx::query_scalar("SELECT key FROM jobs WHERE key = ANY($1)")
                .bind(keys)
                .fetch_all(&mut **conn)
                .await?
        }
        Tx::Sqlite(_) => {
            let mut found = Vec::new();
            for key in keys {
                if exists(tx, key).await? {
                    found.push(key.clone());
                }
            }
            found
        }
    };
    Ok(found.into_iter().collect())
}

/// [`cancel_timers`] for several (consultation, kind) pairs in one statement (PostgreSQL).
pub async fn cancel_timers_of(
    tx: &mut Tx<'_>,
    pairs: &[(&str, JobKind)],
    now_ms: i64,
) -> Result<u64, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(0);
    }
    let Tx::Postgres(conn) = tx else {
        let mut done = 0;
        for (id, kind) in pairs {
            done += cancel_timers(tx, id, *kind, now_ms).await?;
        }
        return Ok(done);
    };
    let ids: Vec<&str> = pairs.iter().map(|(id, _)| *id).collect();
    let kinds: Vec<&str> = pairs.iter().map(|(_, kind)| kind.as_str()).collect();
    const SQL: &str = "UPDATE jobs SET status = 'cancelled', updated_at_ms = $3, \
                              finished_at_ms = $3 \
                         FROM (SELECT DISTINCT id, kind FROM unnest($1::text[], $2::text[]) \
                                 AS c(id, kind)) AS c \
                        WHERE jobs.consultation_id = c.id AND jobs.kind = c.kind \
                          AND jobs.status = 'pending'";
    Ok(sqlx::query(SQL)
        .bind(&ids)
        .bind(&kinds)
        .bind(now_ms)
        .execute(&mut **conn)
        .await?
        .rows_affected())
}

/// Inserts several jobs, each `pending` or, when its flag is set, already `cancelled`, unless
/// one with its key exists (PostgreSQL: one statement). Returns the ids inserted.
pub async fn insert_many(
    tx: &mut Tx<'_>,
    jobs: &[(&NewJob, bool)],
    now_ms: i64,
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let mut inserted = std::collections::HashSet::new();
    if jobs.is_empty() {
        return Ok(inserted);
    }
    let Tx::Postgres(conn) = tx else {
        for (job, cancelled) in jobs {
            if insert(tx, job, now_ms).await? {
                inserted.insert(job.id.clone());
                if *cancelled {
                    const SQL: &str = "UPDATE jobs SET status = 'cancelled', updated_at_ms = $2, \
                                       finished_at_ms = $2 WHERE id = $1";
                    with_tx!(tx, conn => {
                        sqlx::query(SQL).bind(&job.id).bind(now_ms).execute(conn).await.map(|_| ())?
                    });
                }
            }
        }
        return Ok(inserted);
    };
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
        statuses.push(if *cancelled { "cancelled" } else { "pending" });
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
                              AS t(id, key, kind, consultation_id, payload, status, due, attempts) \
                       ON CONFLICT (key) DO NOTHING \
                       RETURNING id";
    let rows: Vec<String> = sqlx::query_scalar(SQL)
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
        .await?;
    inserted.extend(rows);
    Ok(inserted)
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
    dead_letter_abandoned(store, now_ms).await?;
    let pg = matches!(store.db(), Db::Postgres(_));
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

/// Dead-letters running jobs whose lock ran out on their last attempt, instead of claiming
/// them again: a job whose worker keeps dying on it, or keeps failing to record its outcome,
/// would otherwise run (and a message be sent) once per lease for ever. Their notifications
/// are marked `dead` with the same reason.
async fn dead_letter_abandoned(store: &Store, now_ms: i64) -> Result<(), StoreError> {
    const JOBS: &str = "UPDATE jobs SET status = 'dead', locked_by = NULL, updated_at_ms = $1, \
                               finished_at_ms = $1, \
                               last_error = 'attempt ' || attempts || ' of ' || max_attempts || \
                                 ' never finished: its worker stopped or could not record the \
                                 outcome before its lock ran out; not run again' \
                         WHERE status = 'running' AND locked_until_ms < $1 \
                           AND attempts >= max_attempts \
                     RETURNING id, kind, last_error";
    const LOG: &str = "UPDATE notification_log SET status = 'dead', last_error = $2, \
                              updated_at_ms = $3 \
                        WHERE id = $1 AND status NOT IN ('sent', 'delivered')";
    let abandoned: Vec<(String, String, String)> = with_pool!(store.db(), pool => {
        sqlx::query_as(JOBS).bind(now_ms).fetch_all(pool).await?
    });
    for (id, kind, error) in abandoned {
        tracing::warn!(job = %id, %kind, %error, "job dead-lettered");
        if kind == JobKind::Notify.as_str() {
            with_pool!(store.db(), pool => {
                sqlx::query(LOG).bind(&id).bind(&error).bind(now_ms).execute(pool).await.map(|_| ())?
            });
        }
    }
    Ok(())
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
