//! Reads of event streams outside command execution: a consultation's state before one of its
//! events (what the reactors compare), providers' profiles, and a stream's stored events with
//! their chain (the audit history). Every payload read here reaches the caller in the current
//! shape of its type (`consult_domain::upcast`), so an old event shape cannot reach a reader
//! raw; the stored text is kept beside it where the hash chain needs it.

use std::collections::HashMap;

use consult_domain::{Consultation, ConsultationEvent, ProviderEvent, ProviderProfile};
use serde_json::json;

use crate::{Store, StoreError, Tx};

/// A stored payload's current shape.
fn current(event_type: &str, event_version: &str, payload: String) -> String {
    consult_domain::upcast::upcast_text(event_type, event_version, payload)
}

fn unreadable(err: serde_json::Error) -> StoreError {
    StoreError::Unexpected(Box::new(err))
}

#[derive(sqlx::FromRow)]
struct Row {
    aggregate_id: String,
    event_type: String,
    event_version: String,
    payload: String,
}

/// Events of several streams of one aggregate type, each before its own sequence, in stream
/// order: one query on either backend (`unnest` on PostgreSQL, `json_each` on SQLite).
async fn streams_before(
    tx: &mut Tx<'_>,
    aggregate_type: &str,
    firsts: &[(&str, i64)],
) -> Result<Vec<Row>, StoreError> {
    if firsts.is_empty() {
        return Ok(Vec::new());
    }
    let rows = match tx {
        Tx::Postgres(conn) => {
            const SQL: &str = "SELECT e.aggregate_id, e.event_type, e.event_version, \
                                      e.payload::text AS payload \
                                 FROM unnest($1::text[], $2::bigint[]) AS t(id, seq) \
                                 JOIN events e ON e.aggregate_type = $3 \
                                  AND e.aggregate_id = t.id AND e.sequence < t.seq \
                                ORDER BY e.aggregate_id, e.sequence";
            let ids: Vec<&str> = firsts.iter().map(|(id, _)| *id).collect();
            let sequences: Vec<i64> = firsts.iter().map(|(_, sequence)| *sequence).collect();
            sqlx::query_as(SQL)
                .bind(&ids)
                .bind(&sequences)
                .bind(aggregate_type)
                .fetch_all(&mut **conn)
                .await?
        }
        Tx::Sqlite(conn) => {
            const SQL: &str = "SELECT e.aggregate_id, e.event_type, e.event_version, e.payload \
                                 FROM json_each($1) AS t \
                                 JOIN events e ON e.aggregate_type = $2 \
                                  AND e.aggregate_id = json_extract(t.value, '$[0]') \
                                  AND e.sequence < json_extract(t.value, '$[1]') \
                                ORDER BY e.aggregate_id, e.sequence";
            sqlx::query_as(SQL)
                .bind(json!(firsts).to_string())
                .bind(aggregate_type)
                .fetch_all(&mut **conn)
                .await?
        }
    };
    Ok(rows)
}

/// The states of several consultations, each before the given sequence (`i64::MAX`: as it
/// stands), in one query. A consultation without events is the default state.
pub async fn consultations_before(
    tx: &mut Tx<'_>,
    firsts: &[(&str, i64)],
) -> Result<HashMap<String, Consultation>, StoreError> {
    let mut states: HashMap<String, Consultation> = firsts
        .iter()
        .map(|(id, _)| ((*id).to_owned(), Consultation::default()))
        .collect();
    for row in streams_before(tx, "consultation", firsts).await? {
        let payload = current(&row.event_type, &row.event_version, row.payload);
        let event: ConsultationEvent = serde_json::from_str(&payload).map_err(unreadable)?;
        if let Some(state) = states.get_mut(&row.aggregate_id) {
            state.evolve(event);
        }
    }
    Ok(states)
}

/// One consultation as it stood before `sequence` (`i64::MAX`: as it stands).
pub async fn consultation_before(
    tx: &mut Tx<'_>,
    id: &str,
    sequence: i64,
) -> Result<Consultation, StoreError> {
    Ok(consultations_before(tx, &[(id, sequence)])
        .await?
        .remove(id)
        .unwrap_or_default())
}

/// Several providers' profiles (`None` for an unknown provider), in one query.
pub async fn provider_profiles(
    tx: &mut Tx<'_>,
    ids: &[String],
) -> Result<HashMap<String, Option<ProviderProfile>>, StoreError> {
    let firsts: Vec<(&str, i64)> = ids.iter().map(|id| (id.as_str(), i64::MAX)).collect();
    let mut profiles: HashMap<String, Option<ProviderProfile>> =
        ids.iter().map(|id| (id.clone(), None)).collect();
    for row in streams_before(tx, "provider", &firsts).await? {
        let payload = current(&row.event_type, &row.event_version, row.payload);
        let ProviderEvent::Registered { profile, .. } =
            serde_json::from_str(&payload).map_err(unreadable)?;
        profiles.insert(row.aggregate_id, Some(profile));
    }
    Ok(profiles)
}

/// One provider's profile, `None` when unknown.
pub async fn provider_profile(
    tx: &mut Tx<'_>,
    id: &str,
) -> Result<Option<ProviderProfile>, StoreError> {
    Ok(provider_profiles(tx, &[id.to_owned()])
        .await?
        .remove(id)
        .flatten())
}

/// One stored event of a stream, as an audit shows it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub sequence: i64,
    pub position: i64,
    /// `recorded_at` in RFC 3339 (PostgreSQL: microseconds, UTC).
    pub recorded_at: String,
    pub event_type: String,
    pub event_version: String,
    /// The payload as stored (what the hash chain covers).
    pub stored_payload: String,
    /// The payload in the current shape of its type.
    pub payload: String,
    pub metadata: String,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

#[derive(sqlx::FromRow)]
struct StoredRow {
    sequence: i64,
    position: i64,
    recorded_at: String,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
    prev_hash: Option<String>,
    hash: Option<String>,
}

/// Every event of a consultation's stream, in order, with its place in the log and its chain.
pub async fn consultation_stream(store: &Store, id: &str) -> Result<Vec<StoredEvent>, StoreError> {
    let rows: Vec<StoredRow> = match store.db() {
        crate::Db::Postgres(pool) => {
            sqlx::query_as(
                "SELECT sequence, position, \
                        to_char(recorded_at AT TIME ZONE 'UTC', \
                                'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS recorded_at, \
                        event_type, event_version, payload::text AS payload, \
                        metadata::text AS metadata, prev_hash, hash \
                   FROM events WHERE aggregate_type = 'consultation' AND aggregate_id = $1 \
                  ORDER BY sequence",
            )
            .bind(id)
            .fetch_all(pool)
            .await?
        }
        crate::Db::Sqlite(pool) => {
            sqlx::query_as(
                "SELECT sequence, position, recorded_at, event_type, event_version, payload, \
                        metadata, prev_hash, hash \
                   FROM events WHERE aggregate_type = 'consultation' AND aggregate_id = $1 \
                  ORDER BY sequence",
            )
            .bind(id)
            .fetch_all(pool)
            .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|row| StoredEvent {
            payload: current(&row.event_type, &row.event_version, row.payload.clone()),
            sequence: row.sequence,
            position: row.position,
            recorded_at: row.recorded_at,
            event_type: row.event_type,
            event_version: row.event_version,
            stored_payload: row.payload,
            metadata: row.metadata,
            prev_hash: row.prev_hash,
            hash: row.hash,
        })
        .collect())
}
