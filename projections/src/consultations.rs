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
//! swaps it in once caught up (the store's [`Summaries`] does both); reads meanwhile see the
//! previous table. On SQLite the table is emptied and refilled in place.

use std::collections::HashMap;
use std::sync::Arc;

use consult_domain::{Consultation, ConsultationEvent};
use consult_store::{
    BoxFuture, Flush, Handler, HandlerError, RecordedEvent, Replay, Summaries, SummaryWrite, Tx,
};

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
            let table = Summaries::target(tx).await?;
            let mut rows = load(tx, table, &ids).await?;
            fold(&mut rows, &events)?;
            upsert(tx, table, &rows).await
        })
    }

    fn replayer(&self) -> Option<Box<dyn Replay>> {
        Some(Box::new(Replayer::default()))
    }

    fn reset<'a>(&'a self, tx: &'a mut Tx<'_>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move { Ok(Summaries::reset(tx).await?) })
    }

    fn finish_replay<'a>(&'a self, tx: &'a mut Tx<'_>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move { Ok(Summaries::finish_replay(tx).await?) })
    }
}

/// The consultation events of a batch (the log holds other streams too).
fn consultation_events(events: &[RecordedEvent]) -> Vec<&RecordedEvent> {
    events
        .iter()
        .filter(|e| e.aggregate_type == "consultation")
        .collect()
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
                let table = Summaries::target(conn).await?;
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
            let table = Summaries::target(tx).await?;
            upsert(tx, table, &self.0).await?;
            Ok(table.flushed(tx).await?)
        })
    }
}

/// The current state of the rows a batch touches (the ones that exist).
async fn load(
    tx: &mut Tx<'_>,
    table: Summaries,
    ids: &[&str],
) -> Result<HashMap<String, Pending>, HandlerError> {
    Ok(table
        .load(tx, ids)
        .await?
        .into_iter()
        .map(|row| {
            let pending = Pending {
                state: row.state,
                position: 0,
            };
            (row.id, pending)
        })
        .collect())
}

fn millis(instant: Option<chrono::DateTime<chrono::Utc>>) -> i64 {
    instant.map_or(0, |t| t.timestamp_millis())
}

/// The columns of one row.
fn columns<'a>(id: &'a str, row: &'a Pending) -> SummaryWrite<'a> {
    let state = &row.state;
    let booking = state.booking.as_ref();
    SummaryWrite {
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
        state,
    }
}

/// Writes the rows (the ones with a booking: a stream always starts with Booked, so a row
/// without one has nothing to show).
async fn upsert(
    tx: &mut Tx<'_>,
    table: Summaries,
    rows: &HashMap<String, Pending>,
) -> Result<(), HandlerError> {
    let rows: Vec<SummaryWrite> = rows
        .iter()
        .filter(|(_, row)| row.state.booking.is_some())
        .map(|(id, row)| columns(id, row))
        .collect();
    Ok(table.upsert(tx, &rows).await?)
}
