//! The `consultations` projection: one row per consultation in `consultation_summaries`, the
//! source of the summary, the filtered lists and the providers' schedules.
//!
//! A batch is applied with two statements whatever its size: one read of the rows it touches
//! and one multi-row upsert. Each event is folded by the domain's own `evolve`, so the read
//! model cannot disagree with the write side about a status. Each row remembers the last
//! sequence it applied; an event that is not the next one of its stream is refused, so a gap
//! or a duplicate in delivery stops the projection loudly instead of corrupting it.

use std::collections::HashMap;

use consult_domain::{Consultation, ConsultationEvent};
use consult_store::{with_tx, BoxFuture, Handler, HandlerError, RecordedEvent, Tx};
use sqlx::types::Json;
use sqlx::QueryBuilder;

/// Rows per upsert statement (SQLite allows 32766 bound values; 12 per row).
const ROWS_PER_STATEMENT: usize = 1000;

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
struct Pending {
    state: Consultation,
    position: i64,
}

impl Handler for ConsultationsProjection {
    fn name(&self) -> &'static str {
        "consultations"
    }

    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let events: Vec<&RecordedEvent> = events
                .iter()
                .filter(|e| e.aggregate_type == "consultation")
                .collect();
            if events.is_empty() {
                return Ok(());
            }
            let mut ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            let mut rows = load(tx, &ids).await?;
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
                    }
                    .into());
                }
                let folded: ConsultationEvent =
                    serde_json::from_str(&event.payload).map_err(|source| {
                        ProjectionError::Unreadable {
                            id: event.aggregate_id.clone(),
                            position: event.position,
                            source,
                        }
                    })?;
                row.state.evolve(folded);
                row.position = event.position;
            }
            let rows: Vec<(String, Pending)> = rows
                .into_iter()
                .filter(|(_, row)| row.state.booking.is_some() && row.position > 0)
                .collect();
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                upsert(tx, chunk).await?;
            }
            Ok(())
        })
    }

    fn reset<'a>(&'a self, tx: &'a mut Tx<'_>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            with_tx!(tx, conn => {
                sqlx::query("DELETE FROM consultation_summaries").execute(conn).await.map(|_| ())?
            });
            Ok(())
        })
    }
}

/// The current state of the rows a batch touches (the ones that exist).
async fn load(tx: &mut Tx<'_>, ids: &[&str]) -> Result<HashMap<String, Pending>, HandlerError> {
    let mut rows = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let found: Vec<(String, Json<Consultation>)> = with_tx!(tx, conn => {
            let mut query = QueryBuilder::new("SELECT id, state FROM consultation_summaries WHERE id IN (");
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

async fn upsert(tx: &mut Tx<'_>, rows: &[(String, Pending)]) -> Result<(), HandlerError> {
    with_tx!(tx, conn => {
        let mut query = QueryBuilder::new(
            "INSERT INTO consultation_summaries (id, patient_id, provider_id, status, \
             payment_status, mode, starts_at_ms, ends_at_ms, version, position, updated_at_ms, state) ",
        );
        query.push_values(rows, |mut values, (id, row)| {
            let state = &row.state;
            let booking = state.booking.as_ref();
            values
                .push_bind(id)
                .push_bind(booking.map_or("", |b| b.patient_id.as_str()))
                .push_bind(booking.map_or("", |b| b.provider_id.as_str()))
                .push_bind(state.status.as_str())
                .push_bind(state.payment.as_str())
                .push_bind(booking.map_or("", |b| b.mode.as_str()))
                .push_bind(millis(state.starts_at()))
                .push_bind(millis(state.ends_at()))
                .push_bind(i64::try_from(state.version).unwrap_or(i64::MAX))
                .push_bind(row.position)
                .push_bind(millis(state.updated_at))
                .push_bind(Json(state));
        });
        query.push(
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
              payment_status = excluded.payment_status, starts_at_ms = excluded.starts_at_ms, \
              ends_at_ms = excluded.ends_at_ms, version = excluded.version, \
              position = excluded.position, updated_at_ms = excluded.updated_at_ms, \
              state = excluded.state",
        );
        query.build().execute(conn).await.map(|_| ())?
    });
    Ok(())
}
