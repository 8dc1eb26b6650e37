//! The `consultations` projection: one row per consultation in `consultation_summaries`, the
//! source of the summary, the filtered lists and the providers' schedules.
//!
//! A batch is applied with two statements whatever its size: one read of the rows it touches
//! and one multi-row upsert. Each event is folded by the domain's own `evolve`, so the read
//! model cannot disagree with the write side about a status. Each row remembers the last
//! sequence it applied; an event that is not the next one of its stream is refused, so a gap
//! or a duplicate in delivery stops the projection loudly instead of corrupting it.
//!
//! On PostgreSQL a rebuild replays into a copy of the table that has its primary key only and
//! swaps it in once caught up ([`crate::shadow`]); reads meanwhile see the previous table. On
//! SQLite the table is emptied and refilled in place.

use std::collections::HashMap;
use std::sync::Arc;

use consult_domain::{Consultation, ConsultationEvent};
use consult_store::{with_tx, BoxFuture, Flush, Handler, HandlerError, RecordedEvent, Replay, Tx};
use sqlx::types::Json;
use sqlx::QueryBuilder;

use crate::shadow::Shadow;

const TABLE: Shadow = Shadow {
    live: "consultation_summaries",
    copy: "consultation_summaries_replay",
    key: "id",
};

/// Rows per upsert statement (SQLite allows 32766 bound values; 12 per row).
const ROWS_PER_STATEMENT: usize = 1000;
/// Rows per upsert statement on PostgreSQL (one array per column): bounds a statement's size
/// when a replay flushes.
const PG_ROWS_PER_STATEMENT: usize = 10_000;

#[derive(Debug, Clone, Copy, Default)]
pub struct ConsultationsProjection;

#[derive(Debug, thiserror::Error)]
enum ProjectionError {
    #[error(
        "consultation {id}: event at position {position} cannot be read as a consultation event"
    )]
    Unreadable {
        id: String,
        position: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("consultation {id}: expected sequence {expected}, got {got} at position {position}")]
    OutOfOrder {
        id: String,
        expected: u64,
        got: i64,
        position: i64,
    },
}

/// A row being brought up to date.
#[derive(Clone)]
struct Pending {
    state: Consultation,
    position: i64,
}

impl Handler for ConsultationsProjection {
    fn name(&self) -> &'static str {
        "consultations"
    }

    /// Reads may trail commits by a few milliseconds more (`?after` waits for them); under load one batch takes several commits.
    fn linger(&self) -> std::time::Duration {
        std::time::Duration::from_millis(5)
    }

    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let events = consultation_events(events);
            if events.is_empty() {
                return Ok(());
            }
            let mut ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            let table = target(tx).await?;
            let mut rows = load(tx, table, &ids).await?;
            fold(&mut rows, &events)?;
            upsert(tx, table, &rows).await
        })
    }

    fn replayer(&self) -> Option<Box<dyn Replay>> {
        Some(Box::new(Replayer::default()))
    }

    fn reset<'a>(&'a self, tx: &'a mut Tx<'_>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            match tx {
                Tx::Postgres(conn) => TABLE.create(conn).await?,
                Tx::Sqlite(conn) => {
                    sqlx::query("DELETE FROM consultation_summaries")
                        .execute(&mut **conn)
                        .await?;
                }
            }
            Ok(())
        })
    }

    fn finish_replay<'a>(&'a self, tx: &'a mut Tx<'_>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if let Tx::Postgres(conn) = tx {
                TABLE.swap(conn).await?;
            }
            Ok(())
        })
    }
}

/// The consultation events of a batch (the log holds other streams too).
fn consultation_events(events: &[RecordedEvent]) -> Vec<&RecordedEvent> {
    events
        .iter()
        .filter(|e| e.aggregate_type == "consultation")
        .collect()
}

/// The table writes go to: the replay's copy while one is being built.
async fn target(tx: &mut Tx<'_>) -> Result<&'static str, HandlerError> {
    let replaying = match tx {
        Tx::Postgres(conn) => TABLE.active(conn).await?,
        Tx::Sqlite(_) => false,
    };
    Ok(if replaying { TABLE.copy } else { TABLE.live })
}

/// Folds events, in log order, into the rows they belong to (a row missing from `rows` starts
/// empty).
fn fold(
    rows: &mut HashMap<String, Pending>,
    events: &[&RecordedEvent],
) -> Result<(), ProjectionError> {
    for event in events {
        let row = rows
            .entry(event.aggregate_id.clone())
            .or_insert_with(|| Pending {
                state: Consultation::default(),
                position: 0,
            });
        let expected = row.state.version + 1;
        if u64::try_from(event.sequence).ok() != Some(expected) {
            return Err(ProjectionError::OutOfOrder {
                id: event.aggregate_id.clone(),
                expected,
                got: event.sequence,
                position: event.position,
            });
        }
        let folded: ConsultationEvent =
            serde_json::from_str(&event.current_payload()).map_err(|source| {
                ProjectionError::Unreadable {
                    id: event.aggregate_id.clone(),
                    position: event.position,
                    source,
                }
            })?;
        row.state.evolve(folded);
        row.position = event.position;
    }
    Ok(())
}

/// A replay folded in memory: rows stay here across batches until the runner flushes them, so
/// a consultation's events cost one row write per flush instead of one per batch.
#[derive(Default)]
struct Replayer {
    rows: HashMap<String, Pending>,
    /// The rows of the last flush taken, which may not have committed yet.
    flushing: Option<Arc<HashMap<String, Pending>>>,
}

impl Replay for Replayer {
    fn fold<'a>(
        &'a mut self,
        conn: &'a mut Tx<'_>,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let events = consultation_events(events);
            // Streams that began before this batch and are not in memory: in the flush being
            // written, or in the table.
            let mut missing: Vec<&str> = Vec::new();
            for event in &events {
                let id = &event.aggregate_id;
                if event.sequence == 1 || self.rows.contains_key(id) {
                    continue;
                }
                match self.flushing.as_ref().and_then(|f| f.get(id)) {
                    Some(row) => {
                        self.rows.insert(id.clone(), row.clone());
                    }
                    None => missing.push(id),
                }
            }
            missing.sort_unstable();
            missing.dedup();
            if !missing.is_empty() {
                let table = target(conn).await?;
                self.rows.extend(load(conn, table, &missing).await?);
            }
            fold(&mut self.rows, &events)?;
            Ok(())
        })
    }

    fn held(&self) -> usize {
        self.rows.len()
    }

    fn take(&mut self) -> Box<dyn Flush> {
        let rows = Arc::new(std::mem::take(&mut self.rows));
        self.flushing = Some(Arc::clone(&rows));
        Box::new(Rows(rows))
    }
}

/// Rows a replay took, to be written.
struct Rows(Arc<HashMap<String, Pending>>);

impl Flush for Rows {
    fn write<'a>(&'a self, tx: &'a mut Tx<'_>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let table = target(tx).await?;
            upsert(tx, table, &self.0).await?;
            if let Tx::Postgres(conn) = tx {
                if table == TABLE.copy {
                    // The copy grew from empty: without statistics PostgreSQL would look rows up
                    // by scanning it whole. Sampling the key alone is cheap.
                    TABLE.analyze_key(conn).await?;
                }
            }
            Ok(())
        })
    }
}

/// The current state of the rows a batch touches (the ones that exist).
async fn load(
    tx: &mut Tx<'_>,
    table: &str,
    ids: &[&str],
) -> Result<HashMap<String, Pending>, HandlerError> {
    let mut rows = HashMap::with_capacity(ids.len());
    if let Tx::Postgres(conn) = tx {
        // One array parameter, whatever the batch size.
        let found: Vec<(String, Json<Consultation>)> =
            sqlx::query_as(&format!("SELECT id, state FROM {table} WHERE id = ANY($1)"))
                .bind(ids)
                .fetch_all(&mut **conn)
                .await?;
        for (id, Json(state)) in found {
            rows.insert(id, Pending { state, position: 0 });
        }
        return Ok(rows);
    }
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let found: Vec<(String, Json<Consultation>)> = with_tx!(tx, conn => {
            let mut query = QueryBuilder::new(format!("SELECT id, state FROM {table} WHERE id IN ("));
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            query.push(")");
            query.build_query_as().fetch_all(conn).await?
        });
        for (id, Json(state)) in found {
            rows.insert(id, Pending { state, position: 0 });
        }
    }
    Ok(rows)
}

fn millis(instant: Option<chrono::DateTime<chrono::Utc>>) -> i64 {
    instant.map_or(0, |t| t.timestamp_millis())
}

/// The columns of one row, in table order.
struct Columns<'a> {
    id: &'a str,
    patient_id: &'a str,
    provider_id: &'a str,
    status: &'static str,
    payment_status: &'static str,
    mode: &'static str,
    starts_at_ms: i64,
    ends_at_ms: i64,
    version: i64,
    position: i64,
    updated_at_ms: i64,
}

impl<'a> Columns<'a> {
    fn of(id: &'a str, row: &'a Pending) -> Self {
        let state = &row.state;
        let booking = state.booking.as_ref();
        Self {
            id,
            patient_id: booking.map_or("", |b| b.patient_id.as_str()),
            provider_id: booking.map_or("", |b| b.provider_id.as_str()),
            status: state.status.as_str(),
            payment_status: state.payment.as_str(),
            mode: booking.map_or("", |b| b.mode.as_str()),
            starts_at_ms: millis(state.starts_at()),
            ends_at_ms: millis(state.ends_at()),
            version: i64::try_from(state.version).unwrap_or(i64::MAX),
            position: row.position,
            updated_at_ms: millis(state.updated_at),
        }
    }
}

const UPSERT_TAIL: &str = " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
    payment_status = excluded.payment_status, starts_at_ms = excluded.starts_at_ms, \
    ends_at_ms = excluded.ends_at_ms, version = excluded.version, \
    position = excluded.position, updated_at_ms = excluded.updated_at_ms, \
    state = excluded.state";

/// Writes the rows (the ones with a booking: a stream always starts with Booked, so a row
/// without one has nothing to show).
async fn upsert(
    tx: &mut Tx<'_>,
    table: &str,
    rows: &HashMap<String, Pending>,
) -> Result<(), HandlerError> {
    let rows: Vec<(&str, &Pending)> = rows
        .iter()
        .filter(|(_, row)| row.state.booking.is_some())
        .map(|(id, row)| (id.as_str(), row))
        .collect();
    if let Tx::Postgres(conn) = tx {
        for chunk in rows.chunks(PG_ROWS_PER_STATEMENT) {
            upsert_arrays(conn, table, chunk).await?;
        }
        return Ok(());
    }
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        upsert_values(tx, table, chunk).await?;
    }
    Ok(())
}

/// The PostgreSQL upsert: one statement with one array per column, whatever the number of
/// rows, so PostgreSQL parses and plans it once instead of once per thousand rows of values.
async fn upsert_arrays(
    conn: &mut sqlx::PgConnection,
    table: &str,
    rows: &[(&str, &Pending)],
) -> Result<(), HandlerError> {
    let columns: Vec<Columns> = rows.iter().map(|(id, row)| Columns::of(id, row)).collect();
    let states = rows
        .iter()
        .map(|(_, row)| serde_json::to_string(&row.state))
        .collect::<Result<Vec<_>, _>>()?;
    let sql = format!(
        "INSERT INTO {table} (id, patient_id, provider_id, status, \
             payment_status, mode, starts_at_ms, ends_at_ms, version, position, updated_at_ms, \
             state) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
             $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], \
             $11::bigint[], $12::text[]::json[]){UPSERT_TAIL}"
    );
    sqlx::query(&sql)
        .bind(columns.iter().map(|c| c.id).collect::<Vec<_>>())
        .bind(columns.iter().map(|c| c.patient_id).collect::<Vec<_>>())
        .bind(columns.iter().map(|c| c.provider_id).collect::<Vec<_>>())
        .bind(columns.iter().map(|c| c.status).collect::<Vec<_>>())
        .bind(columns.iter().map(|c| c.payment_status).collect::<Vec<_>>())
        .bind(columns.iter().map(|c| c.mode).collect::<Vec<_>>())
        .bind(columns.iter().map(|c| c.starts_at_ms).collect::<Vec<_>>())
        .bind(columns.iter().map(|c| c.ends_at_ms).collect::<Vec<_>>())
        .bind(columns.iter().map(|c| c.version).collect::<Vec<_>>())
        .bind(columns.iter().map(|c| c.position).collect::<Vec<_>>())
        .bind(columns.iter().map(|c| c.updated_at_ms).collect::<Vec<_>>())
        .bind(states)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The portable upsert (SQLite): a multi-row VALUES list.
async fn upsert_values(
    tx: &mut Tx<'_>,
    table: &str,
    rows: &[(&str, &Pending)],
) -> Result<(), HandlerError> {
    with_tx!(tx, conn => {
        let mut query = QueryBuilder::new(format!(
            "INSERT INTO {table} (id, patient_id, provider_id, status, \
             payment_status, mode, starts_at_ms, ends_at_ms, version, position, updated_at_ms, state) ",
        ));
        query.push_values(rows, |mut values, (id, row)| {
            let c = Columns::of(id, row);
            values
                .push_bind(c.id)
                .push_bind(c.patient_id)
                .push_bind(c.provider_id)
                .push_bind(c.status)
                .push_bind(c.payment_status)
                .push_bind(c.mode)
                .push_bind(c.starts_at_ms)
                .push_bind(c.ends_at_ms)
                .push_bind(c.version)
                .push_bind(c.position)
                .push_bind(c.updated_at_ms)
                .push_bind(Json(&row.state));
        });
        query.push(UPSERT_TAIL);
        query.build().execute(conn).await.map(|_| ())?
    });
    Ok(())
}
