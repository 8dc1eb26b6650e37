//! The log as auditors take it away: `export` streams the stored events (payloads and metadata
//! as stored, which is what the hash chain covers) as JSON Lines in constant memory, resumable
//! by position; `import` loads such an export into an empty store, hashes and all, so that
//! `verify` can check the copy. Readers of an imported store upcast as every reader does.

use std::io::{BufRead, Write};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{with_tx, BeginWrite as _, Db, Store, StoreError, Tx};

/// One exported event: everything the store holds about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ExportedEvent {
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// RFC 3339, UTC.
    pub recorded_at: String,
    #[sqlx(skip)]
    pub payload: Value,
    #[sqlx(skip)]
    pub metadata: Value,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    #[sqlx(flatten)]
    event: ExportedEvent,
    payload_text: String,
    metadata_text: String,
    settled: bool,
}

/// Which events to export.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub consultation: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Resume: only events after this position.
    pub after_position: i64,
}

/// What an export did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub events: u64,
    /// The position of the last event written: resume with `--after-position` it.
    pub last_position: i64,
    /// Whether the export stopped before events whose transaction had not settled (PostgreSQL):
    /// resuming from `last_position` will pick them up.
    pub stopped_early: bool,
}

const PG_EXPORT: &str = "SELECT position, aggregate_type, aggregate_id, sequence, event_type, \
    event_version, to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
    AS recorded_at, payload::text AS payload_text, metadata::text AS metadata_text, prev_hash, \
    hash, transaction_id < pg_snapshot_xmin(pg_current_snapshot()) AS settled \
    FROM events WHERE position > $1 AND ($2::text IS NULL OR aggregate_id = $2) \
    AND ($3::timestamptz IS NULL OR recorded_at >= $3) ORDER BY position";
const SQLITE_EXPORT: &str = "SELECT position, aggregate_type, aggregate_id, sequence, \
    event_type, event_version, recorded_at, payload AS payload_text, metadata AS metadata_text, \
    prev_hash, hash, 1 AS settled FROM events WHERE position > $1 \
    AND ($2 IS NULL OR aggregate_id = $2) AND ($3 IS NULL OR recorded_at >= $3) \
    ORDER BY position";

/// How long an export waits for transactions in flight before it stops early.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Streams the matching events, in log position order, as JSON Lines into `out`. On
/// PostgreSQL an event whose transaction has not settled (a position can commit after a
/// higher one) is waited for, up to [`SETTLE_WAIT`]: PostgreSQL's horizon is the oldest
/// transaction in flight anywhere on the server, so a transaction of another database or
/// another client can hold it back for a moment. If it is still not settled the export stops
/// before it, so that resuming after `last_position` never skips one.
pub async fn export(
    store: &Store,
    filter: &ExportFilter,
    out: &mut impl Write,
) -> Result<ExportSummary, Box<dyn std::error::Error>> {
    let started = std::time::Instant::now();
    let mut summary = ExportSummary {
        last_position: filter.after_position,
        ..ExportSummary::default()
    };
    loop {
        let resumed = ExportFilter {
            after_position: summary.last_position,
            ..filter.clone()
        };
        summary.stopped_early = false;
        export_settled(store, &resumed, out, &mut summary).await?;
        if !summary.stopped_early || started.elapsed() >= SETTLE_WAIT {
            return Ok(summary);
        }
        tracing::debug!(
            position = summary.last_position,
            "waiting for a transaction in flight before the next event"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// One pass of [`export`]: the settled events after `filter.after_position`, added to
/// `summary`.
async fn export_settled(
    store: &Store,
    filter: &ExportFilter,
    out: &mut impl Write,
    summary: &mut ExportSummary,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut write =
        |row: Row, summary: &mut ExportSummary| -> Result<bool, Box<dyn std::error::Error>> {
            if !row.settled {
                summary.stopped_early = true;
                return Ok(false);
            }
            let mut event = row.event;
            event.payload = serde_json::from_str(&row.payload_text)?;
            event.metadata = serde_json::from_str(&row.metadata_text)?;
            serde_json::to_writer(&mut *out, &event)?;
            out.write_all(b"\n")?;
            summary.events += 1;
            summary.last_position = event.position;
            Ok(true)
        };
    match store.db() {
        Db::Postgres(pool) => {
            let mut rows = sqlx::query_as::<_, Row>(PG_EXPORT)
                .bind(filter.after_position)
                .bind(filter.consultation.as_deref())
                .bind(filter.since)
                .fetch(pool);
            while let Some(row) = rows.try_next().await.map_err(StoreError::from)? {
                if !write(row, summary)? {
                    break;
                }
            }
        }
        Db::Sqlite(pool) => {
            let since = filter
                .since
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
            let mut rows = sqlx::query_as::<_, Row>(SQLITE_EXPORT)
                .bind(filter.after_position)
                .bind(filter.consultation.as_deref())
                .bind(since)
                .fetch(pool);
            while let Some(row) = rows.try_next().await.map_err(StoreError::from)? {
                if !write(row, summary)? {
                    break;
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Loads an export into a store that holds no events yet: the events keep their streams,
/// sequences, times, payloads, metadata and hashes (and get new positions in the same order);
/// each stream's chain head is set from its last sealed event. Lines are written 5,000 to a
/// transaction. Returns how many events.
pub async fn import(store: &Store, input: impl BufRead) -> Result<u64, Box<dyn std::error::Error>> {
    let existing: i64 = crate::with_pool!(store.db(), pool => {
        sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await.map_err(StoreError::from)?
    });
    if existing > 0 {
        return Err("import needs an empty store: this one holds events already".into());
    }
    let mut count = 0u64;
    let mut batch: Vec<ExportedEvent> = Vec::with_capacity(5_000);
    for (line_number, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event: ExportedEvent = serde_json::from_str(&line)
            .map_err(|e| format!("line {}: not an exported event: {e}", line_number + 1))?;
        batch.push(event);
        if batch.len() == 5_000 {
            count += write_batch(store, &batch).await?;
            batch.clear();
        }
    }
    count += write_batch(store, &batch).await?;
    Ok(count)
}

async fn write_batch(store: &Store, batch: &[ExportedEvent]) -> Result<u64, StoreError> {
    match store.db() {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            for event in batch {
                insert(&mut Tx::Postgres(&mut tx), event).await?;
            }
            tx.commit().await?;
        }
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_write().await?;
            for event in batch {
                insert(&mut Tx::Sqlite(&mut tx), event).await?;
            }
            tx.commit().await?;
        }
    }
    Ok(batch.len() as u64)
}

async fn insert(tx: &mut Tx<'_>, event: &ExportedEvent) -> Result<(), StoreError> {
    let (json, time) = match tx {
        Tx::Postgres(_) => ("::jsonb", "::timestamptz"),
        Tx::Sqlite(_) => ("", ""),
    };
    let sql = format!(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
                             payload, metadata, recorded_at, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6{json}, $7{json}, $8{time}, $9, $10)"
    );
    let payload = event.payload.to_string();
    let metadata = event.metadata.to_string();
    with_tx!(tx, conn => {
        sqlx::query(&sql)
            .bind(&event.aggregate_type)
            .bind(&event.aggregate_id)
            .bind(event.sequence)
            .bind(&event.event_type)
            .bind(&event.event_version)
            .bind(&payload)
            .bind(&metadata)
            .bind(&event.recorded_at)
            .bind(&event.prev_hash)
            .bind(&event.hash)
            .execute(conn)
            .await
            .map(|_| ())?
    });
    if let Some(hash) = &event.hash {
        const HEAD: &str = "INSERT INTO chain_heads (aggregate_type, aggregate_id, \
                            last_sequence, last_hash) VALUES ($1, $2, $3, $4) \
                            ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
                               SET last_sequence = excluded.last_sequence, \
                                   last_hash = excluded.last_hash \
                             WHERE chain_heads.last_sequence < excluded.last_sequence";
        with_tx!(tx, conn => {
            sqlx::query(HEAD)
                .bind(&event.aggregate_type)
                .bind(&event.aggregate_id)
                .bind(event.sequence)
                .bind(hash)
                .execute(conn)
                .await
                .map(|_| ())?
        });
    }
    Ok(())
}
