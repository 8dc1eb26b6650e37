//! The global log: every event of every stream in a safe order, read after a checkpoint.
//!
//! PostgreSQL hands out `position` at insert time, not at commit, so a transaction that inserted
//! position 10 can commit after another one's position 11. A reader that followed positions
//! alone would pass 10 while it was invisible and never come back for it. Readers therefore order
//! by `(transaction_id, position)` and stop below the oldest transaction still running
//! (`pg_snapshot_xmin`): everything before that point is settled, and anything that commits
//! later sorts after it. SQLite commits one writer at a time, so position order is commit order.

use chrono::{DateTime, Utc};

use crate::{Db, Store, StoreError};

/// Where a subscription stands in the global log: the last event it handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Checkpoint {
    /// The writing transaction of that event (PostgreSQL); always 0 on SQLite.
    pub transaction_id: i64,
    pub position: i64,
}

/// One stored event as the global log hands it out. Payload and metadata are the stored JSON
/// text, so that each reader deserializes straight into its own types.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecordedEvent {
    pub transaction_id: i64,
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: String,
    pub metadata: String,
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// The payload in the current shape of its event type: stored payloads of older versions
    /// go through `consult_domain::upcast`. (`payload` itself stays as stored: the hash chain
    /// covers what is stored.)
    pub fn current_payload(&self) -> std::borrow::Cow<'_, str> {
        if self.event_version == consult_domain::upcast::current_version(&self.event_type) {
            std::borrow::Cow::Borrowed(&self.payload)
        } else {
            std::borrow::Cow::Owned(consult_domain::upcast::upcast_text(
                &self.event_type,
                &self.event_version,
                self.payload.clone(),
            ))
        }
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            transaction_id: self.transaction_id,
            position: self.position,
        }
    }
}

/// What one read of the log returned.
#[derive(Debug, Default)]
pub struct LogBatch {
    /// Settled events after the checkpoint, in log order.
    pub events: Vec<RecordedEvent>,
    /// Committed events exist after these but cannot be handed out yet, because an older
    /// transaction is still open; read again shortly.
    pub held_back: bool,
}

#[derive(sqlx::FromRow)]
struct Row {
    #[sqlx(flatten)]
    event: RecordedEvent,
    settled: bool,
}

const PG_READ: &str = "\
    SELECT transaction_id::text::bigint AS transaction_id, position, aggregate_type, aggregate_id, \
           sequence, event_type, event_version, payload::text AS payload, \
           metadata::text AS metadata, recorded_at, \
           transaction_id < pg_snapshot_xmin(pg_current_snapshot()) AS settled \
      FROM events \
     WHERE (transaction_id, position) > (($1::bigint)::text::xid8, $2) \
     ORDER BY events.transaction_id, events.position \
     LIMIT $3";

const SQLITE_READ: &str = "\
    SELECT 0 AS transaction_id, position, aggregate_type, aggregate_id, sequence, event_type, \
           event_version, payload, metadata, recorded_at, 1 AS settled \
      FROM events \
     WHERE position > $2 AND $1 = $1 \
     ORDER BY position \
     LIMIT $3";

impl Store {
    /// Up to `limit` settled events after `after`, in the log's order.
    pub async fn read_log(&self, after: Checkpoint, limit: u32) -> Result<LogBatch, StoreError> {
        let rows: Vec<Row> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as(PG_READ)
                    .bind(after.transaction_id)
                    .bind(after.position)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?
            }
            Db::Sqlite(pool) => {
                sqlx::query_as(SQLITE_READ)
                    .bind(after.transaction_id)
                    .bind(after.position)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?
            }
        };
        let mut batch = LogBatch::default();
        for row in rows {
            if !row.settled {
                batch.held_back = true;
                break;
            }
            batch.events.push(row.event);
        }
        Ok(batch)
    }

    /// The highest position written so far (0 for an empty log): one index probe.
    pub async fn head_position(&self) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT COALESCE(max(position), 0) FROM events";
        Ok(with_pool!(&self.db, pool => sqlx::query_scalar(SQL).fetch_one(pool).await?))
    }

    /// How many events the log holds. Counts every row: for progress and benchmarks, not for
    /// paths that run often.
    pub async fn event_count(&self) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT count(*) FROM events";
        Ok(with_pool!(&self.db, pool => sqlx::query_scalar(SQL).fetch_one(pool).await?))
    }
}
