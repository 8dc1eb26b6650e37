//! The `notification_log` table: one row per notification, written with its job by the
//! notifications reactor, moved by the dispatcher (sent, failed, dead), by Twilio's status
//! callbacks (delivered, failed) and by an admin's retry of a dead letter; read by the
//! consultation's notification list, the audit history and the flood guard.
//!
//! Recipients are stored masked for people to read, and as a normalised key for counting;
//! never in clear.

use serde_json::json;

use crate::{with_tx, Store, StoreError, Tx};

/// A notification's row, written when its job is queued.
#[derive(Debug, Clone)]
pub struct NewLogRow {
    /// The notify job's id.
    pub id: String,
    pub consultation_id: String,
    pub recipient_role: String,
    pub channel: String,
    pub kind: String,
    pub recipient_masked: String,
    /// The recipient, normalised, for the flood guard.
    pub recipient_key: String,
    /// The account it is sent from, normalised, for the flood guard.
    pub sender_key: String,
    pub scheduled_for_ms: i64,
}

/// What became of a notification's send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutcome {
    /// It went out; the provider's id for it, when it gave one.
    Sent(Option<String>),
    /// It failed and will be tried again.
    Failed,
    /// It will not be tried again.
    Dead,
}

impl LogOutcome {
    pub fn is_sent(&self) -> bool {
        matches!(self, Self::Sent(_))
    }

    fn status(&self) -> &'static str {
        match self {
            Self::Sent(_) => "sent",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }

    fn provider_id(&self) -> Option<&str> {
        match self {
            Self::Sent(id) => id.as_deref(),
            Self::Failed | Self::Dead => None,
        }
    }
}

/// A notification as its consultation's list shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LogRow {
    pub id: String,
    pub recipient_role: String,
    pub channel: String,
    pub kind: String,
    pub recipient_masked: String,
    pub status: String,
    pub attempts: i32,
    pub provider_message_id: Option<String>,
    pub scheduled_for_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub updated_at_ms: i64,
}

const LOG_COLUMNS: &str = "id, recipient_role, channel, kind, recipient_masked, status, attempts, \
                           provider_message_id, scheduled_for_ms, sent_at_ms, last_error, \
                           updated_at_ms";

/// Writes the rows of queued notifications (`pending`), in one statement; a row that exists is
/// left as it is.
pub async fn insert_many(
    tx: &mut Tx<'_>,
    rows: &[NewLogRow],
    now_ms: i64,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    match tx {
        Tx::Postgres(conn) => {
            let mut columns: [Vec<&str>; 8] = Default::default();
            let mut scheduled = Vec::with_capacity(rows.len());
            for row in rows {
                let [id, consultation, role, channel, kind, masked, key, sender] = &mut columns;
                id.push(&row.id);
                consultation.push(&row.consultation_id);
                role.push(&row.recipient_role);
                channel.push(&row.channel);
                kind.push(&row.kind);
                masked.push(&row.recipient_masked);
                key.push(&row.recipient_key);
                sender.push(&row.sender_key);
                scheduled.push(row.scheduled_for_ms);
            }
            const SQL: &str = "INSERT INTO notification_log (id, consultation_id, recipient_role, \
                               channel, kind, recipient_masked, status, attempts, \
                               scheduled_for_ms, updated_at_ms, recipient_key, sender_key) \
                               SELECT id, consultation_id, role, channel, kind, masked, 'pending', \
                                      0, scheduled, $9, key, sender \
                                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                                             $5::text[], $6::text[], $7::text[], $8::bigint[], \
                                             $10::text[]) \
                                      AS t(id, consultation_id, role, channel, kind, masked, key, \
                                           scheduled, sender) \
                               ON CONFLICT (id) DO NOTHING";
            let [id, consultation, role, channel, kind, masked, key, sender] = &columns;
            sqlx::query(SQL)
                .bind(id)
                .bind(consultation)
                .bind(role)
                .bind(channel)
                .bind(kind)
                .bind(masked)
                .bind(key)
                .bind(&scheduled)
                .bind(now_ms)
                .bind(sender)
                .execute(&mut **conn)
                .await?;
        }
        Tx::Sqlite(conn) => {
            let rows: Vec<serde_json::Value> = rows
                .iter()
                .map(|row| {
                    json!([
                        row.id,
                        row.consultation_id,
                        row.recipient_role,
                        row.channel,
                        row.kind,
                        row.recipient_masked,
                        row.recipient_key,
                        row.scheduled_for_ms,
                        row.sender_key,
                    ])
                })
                .collect();
            const SQL: &str = "INSERT INTO notification_log (id, consultation_id, recipient_role, \
                               channel, kind, recipient_masked, status, attempts, \
                               scheduled_for_ms, updated_at_ms, recipient_key, sender_key) \
                               SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                                      json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
                                      json_extract(value, '$[4]'), json_extract(value, '$[5]'), \
                                      'pending', 0, json_extract(value, '$[7]'), $2, \
                                      json_extract(value, '$[6]'), json_extract(value, '$[8]') \
                                 FROM json_each($1) WHERE true \
                               ON CONFLICT (id) DO NOTHING";
            sqlx::query(SQL)
                .bind(serde_json::Value::Array(rows).to_string())
                .bind(now_ms)
                .execute(&mut **conn)
                .await?;
        }
    }
    Ok(())
}

/// A notification's move to its send's outcome.
#[derive(Debug, Clone, Copy)]
pub struct LogUpdate<'a> {
    pub id: &'a str,
    /// The attempts made so far.
    pub attempts: i32,
    pub outcome: &'a LogOutcome,
    pub error: Option<&'a str>,
}

/// Moves notifications to their sends' outcomes, in one statement.
pub async fn record_outcomes(
    tx: &mut Tx<'_>,
    outcomes: &[LogUpdate<'_>],
    now_ms: i64,
) -> Result<(), StoreError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    match tx {
        Tx::Postgres(conn) => {
            const SQL: &str = "UPDATE notification_log SET status = u.status, \
                                      attempts = u.attempts, \
                                      provider_message_id = COALESCE(u.provider_id, \
                                          notification_log.provider_message_id), \
                                      sent_at_ms = CASE WHEN u.status = 'sent' THEN $6 \
                                                        ELSE notification_log.sent_at_ms END, \
                                      last_error = u.error, updated_at_ms = $6 \
                                 FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], \
                                             $5::text[]) \
                                      AS u(id, status, attempts, provider_id, error) \
                                WHERE notification_log.id = u.id";
            sqlx::query(SQL)
                .bind(outcomes.iter().map(|o| o.id).collect::<Vec<_>>())
                .bind(
                    outcomes
                        .iter()
                        .map(|o| o.outcome.status())
                        .collect::<Vec<_>>(),
                )
                .bind(outcomes.iter().map(|o| o.attempts).collect::<Vec<_>>())
                .bind(
                    outcomes
                        .iter()
                        .map(|o| o.outcome.provider_id())
                        .collect::<Vec<_>>(),
                )
                .bind(outcomes.iter().map(|o| o.error).collect::<Vec<_>>())
                .bind(now_ms)
                .execute(&mut **conn)
                .await?;
        }
        Tx::Sqlite(conn) => {
            let rows: Vec<serde_json::Value> = outcomes
                .iter()
                .map(|o| {
                    json!([
                        o.id,
                        o.outcome.status(),
                        o.attempts,
                        o.outcome.provider_id(),
                        o.error
                    ])
                })
                .collect();
            const SQL: &str = "UPDATE notification_log \
                                  SET status = json_extract(u.value, '$[1]'), \
                                      attempts = json_extract(u.value, '$[2]'), \
                                      provider_message_id = COALESCE(json_extract(u.value, '$[3]'), \
                                          notification_log.provider_message_id), \
                                      sent_at_ms = CASE WHEN json_extract(u.value, '$[1]') = 'sent' \
                                                        THEN $2 \
                                                        ELSE notification_log.sent_at_ms END, \
                                      last_error = json_extract(u.value, '$[4]'), \
                                      updated_at_ms = $2 \
                                 FROM json_each($1) AS u \
                                WHERE notification_log.id = json_extract(u.value, '$[0]')";
            sqlx::query(SQL)
                .bind(serde_json::Value::Array(rows).to_string())
                .bind(now_ms)
                .execute(&mut **conn)
                .await?;
        }
    }
    Ok(())
}

/// Marks a notification `dead` with the reason, unless it went out already.
pub(crate) async fn mark_dead(
    store: &Store,
    id: &str,
    error: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    const SQL: &str = "UPDATE notification_log SET status = 'dead', last_error = $2, \
                              updated_at_ms = $3 \
                        WHERE id = $1 AND status NOT IN ('sent', 'delivered')";
    with_pool!(store.db(), pool => {
        sqlx::query(SQL).bind(id).bind(error).bind(now_ms).execute(pool).await?;
    });
    Ok(())
}

/// Puts a notification back to `pending` (its dead job was queued again).
pub(crate) async fn requeue(tx: &mut Tx<'_>, id: &str, now_ms: i64) -> Result<(), StoreError> {
    const SQL: &str = "UPDATE notification_log SET status = 'pending', last_error = NULL, \
                       updated_at_ms = $2 WHERE id = $1";
    with_tx!(tx, conn => {
        sqlx::query(SQL).bind(id).bind(now_ms).execute(conn).await?;
    });
    Ok(())
}

/// A status from the provider's delivery callback for the message with this provider id.
/// Final states (`delivered`, `failed`) stay final; `sent` only moves a message that was not
/// further along. Returns whether a row moved.
pub async fn apply_delivery_status(
    store: &Store,
    provider_message_id: &str,
    status: &str,
    error: Option<&str>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    const SQL: &str = "UPDATE notification_log SET status = $2, \
                              last_error = COALESCE($3, last_error), updated_at_ms = $4 \
                        WHERE provider_message_id = $1 \
                          AND status NOT IN ('delivered', 'failed') \
                          AND NOT ($2 = 'sent' AND status = 'sent')";
    let updated = with_pool!(store.db(), pool => {
        sqlx::query(SQL)
            .bind(provider_message_id)
            .bind(status)
            .bind(error)
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(updated > 0)
}

/// How many messages were sent to each (recipient key, sender key) since `since_ms`, each
/// counted up to `limit` only: what matters is whether the limit is reached, and a recipient
/// with many messages in the window costs no more. One query.
pub async fn recent_sends(
    store: &Store,
    pairs: &[(String, String)],
    since_ms: i64,
    limit: i64,
) -> Result<Vec<((String, String), i64)>, StoreError> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, String, i64)> =
        match store.db() {
            crate::Db::Postgres(pool) => {
                let (recipients, senders): (Vec<&str>, Vec<&str>) =
                    pairs.iter().map(|(r, s)| (r.as_str(), s.as_str())).unzip();
                sqlx::query_as(
                    "SELECT r, s, (SELECT count(*) FROM (SELECT 1 FROM notification_log \
                             WHERE recipient_key = r AND sender_key = s \
                               AND sent_at_ms >= $3 LIMIT $4) AS recent) \
                   FROM unnest($1::text[], $2::text[]) AS k(r, s)",
                )
                .bind(&recipients)
                .bind(&senders)
                .bind(since_ms)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            crate::Db::Sqlite(pool) => sqlx::query_as(
                "SELECT json_extract(k.value, '$[0]') AS r, json_extract(k.value, '$[1]') AS s, \
                        (SELECT count(*) FROM (SELECT 1 FROM notification_log \
                          WHERE recipient_key = json_extract(k.value, '$[0]') \
                            AND sender_key = json_extract(k.value, '$[1]') \
                            AND sent_at_ms >= $2 LIMIT $3)) \
                   FROM json_each($1) AS k",
            )
            .bind(json!(pairs).to_string())
            .bind(since_ms)
            .bind(limit)
            .fetch_all(pool)
            .await?,
        };
    Ok(rows.into_iter().map(|(r, s, n)| ((r, s), n)).collect())
}

/// Every notification of a consultation, in the order its list shows them.
pub async fn of_consultation(
    store: &Store,
    consultation_id: &str,
) -> Result<Vec<LogRow>, StoreError> {
    let sql = format!(
        "SELECT {LOG_COLUMNS} FROM notification_log WHERE consultation_id = $1 \
          ORDER BY scheduled_for_ms, kind, recipient_role, channel, id"
    );
    Ok(with_pool!(store.db(), pool => {
        sqlx::query_as(&sql).bind(consultation_id).fetch_all(pool).await?
    }))
}

/// A consultation's notifications scheduled up to `until_ms`, for its audit history.
pub async fn of_consultation_until(
    store: &Store,
    consultation_id: &str,
    until_ms: i64,
) -> Result<Vec<LogRow>, StoreError> {
    let sql = format!(
        "SELECT {LOG_COLUMNS} FROM notification_log \
          WHERE consultation_id = $1 AND scheduled_for_ms <= $2 \
          ORDER BY scheduled_for_ms, id"
    );
    Ok(with_pool!(store.db(), pool => {
        sqlx::query_as(&sql).bind(consultation_id).bind(until_ms).fetch_all(pool).await?
    }))
}
