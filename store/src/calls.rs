//! The `calls` table: one row per phone call a participant asked for, written by the rooms
//! reactor with the call's job, moved by the voice provider's answer (its call id, an error)
//! and by its status callbacks, which carry a sequence number so that a repeated or
//! out-of-order callback changes nothing.

use crate::{with_tx, Store, StoreError, Tx};

/// A call as an audit shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallRow {
    pub id: String,
    pub requested_by: String,
    pub provider_call_id: Option<String>,
    pub status: String,
    pub duration_seconds: Option<i32>,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Records a requested call (`queued`) unless it exists.
pub async fn insert(
    tx: &mut Tx<'_>,
    id: &str,
    consultation_id: &str,
    requested_by: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO calls (id, consultation_id, requested_by, status, \
                       created_at_ms, updated_at_ms) \
                       VALUES ($1, $2, $3, 'queued', $4, $4) \
                       ON CONFLICT (id) DO NOTHING";
    with_tx!(tx, conn => {
        sqlx::query(SQL)
            .bind(id)
            .bind(consultation_id)
            .bind(requested_by)
            .bind(now_ms)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// The provider's answer to placing a call: its id once known, its status unless a callback
/// already reported one, its last error.
pub async fn record_placement(
    store: &Store,
    id: &str,
    provider_call_id: Option<&str>,
    status: Option<&str>,
    error: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    const SQL: &str = "UPDATE calls SET provider_call_id = COALESCE(provider_call_id, $2), \
                              status = CASE WHEN last_sequence IS NULL AND $3::text IS NOT NULL \
                                            THEN $3::text ELSE status END, \
                              last_error = $4, updated_at_ms = $5 \
                        WHERE id = $1";
    with_pool!(store.db(), pool => {
        sqlx::query(SQL)
            .bind(id)
            .bind(provider_call_id)
            .bind(status)
            .bind(error)
            .bind(now_ms)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// The sequence number of the last status callback recorded for a call of this consultation:
/// `None` when no such call exists, `Some(None)` before its first callback.
pub async fn last_sequence(
    store: &Store,
    id: &str,
    consultation_id: &str,
) -> Result<Option<Option<i64>>, StoreError> {
    const SQL: &str = "SELECT last_sequence FROM calls WHERE id = $1 AND consultation_id = $2";
    Ok(with_pool!(store.db(), pool => {
        sqlx::query_scalar(SQL).bind(id).bind(consultation_id).fetch_optional(pool).await?
    }))
}

/// A status callback: moves the call unless a later one was recorded already.
#[derive(Debug)]
pub struct CallStatus<'a> {
    pub id: &'a str,
    pub consultation_id: &'a str,
    pub provider_call_id: &'a str,
    pub status: &'a str,
    pub sequence: i64,
    /// The call's duration, recorded with a final status only.
    pub final_duration_seconds: Option<i64>,
    pub now_ms: i64,
}

pub async fn record_status(store: &Store, call: &CallStatus<'_>) -> Result<(), StoreError> {
    const SQL: &str = "UPDATE calls SET provider_call_id = COALESCE(provider_call_id, $3), \
                              status = $4, last_sequence = $5, \
                              duration_seconds = CASE WHEN $6 THEN $7 ELSE duration_seconds END, \
                              updated_at_ms = $8 \
                        WHERE id = $1 AND consultation_id = $2 \
                          AND (last_sequence IS NULL OR last_sequence < $5)";
    with_pool!(store.db(), pool => {
        sqlx::query(SQL)
            .bind(call.id)
            .bind(call.consultation_id)
            .bind(call.provider_call_id)
            .bind(call.status)
            .bind(call.sequence)
            .bind(call.final_duration_seconds.is_some())
            .bind(call.final_duration_seconds.unwrap_or(0))
            .bind(call.now_ms)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// A consultation's calls created up to `until_ms`, oldest first.
pub async fn of_consultation_until(
    store: &Store,
    consultation_id: &str,
    until_ms: i64,
) -> Result<Vec<CallRow>, StoreError> {
    const SQL: &str = "SELECT id, requested_by, provider_call_id, status, duration_seconds, \
                              last_error, created_at_ms, updated_at_ms \
                         FROM calls WHERE consultation_id = $1 AND created_at_ms <= $2 \
                        ORDER BY created_at_ms, id";
    Ok(with_pool!(store.db(), pool => {
        sqlx::query_as(SQL).bind(consultation_id).bind(until_ms).fetch_all(pool).await?
    }))
}
