//! The PostgreSQL event repository: postgres-es for every read, and for writes a single
//! autocommit `INSERT … RETURNING position` of all of a command's events.
//!
//! postgres-es writes each event in its own statement inside `BEGIN … COMMIT` (three round trips
//! for one event) and cannot report the global position of what it wrote, which every command
//! response carries. One multi-row statement is just as atomic, takes one round trip, and
//! returns the positions. The triggers on `events` (the provider calendar) run inside it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};

pub(crate) struct PgRepository {
    /// Reads go through postgres-es unchanged.
    reads: PostgresEventRepository,
    pool: PgPool,
    /// The highest position written by the last `persist`, for the command's response.
    last_position: Arc<AtomicI64>,
}

impl PgRepository {
    pub(crate) fn new(pool: PgPool, last_position: Arc<AtomicI64>) -> Self {
        Self {
            reads: PostgresEventRepository::new(pool.clone()),
            pool,
            last_position,
        }
    }

    async fn insert(&self, events: &[SerializedEvent]) -> Result<(), PersistenceError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut insert = QueryBuilder::<Postgres>::new(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata) ",
        );
        insert.push_values(events, |mut row, event| {
            row.push_bind(&event.aggregate_type)
                .push_bind(&event.aggregate_id)
                .push_bind(i64::try_from(event.sequence).unwrap_or(i64::MAX))
                .push_bind(&event.event_type)
                .push_bind(&event.event_version)
                .push_bind(&event.payload)
                .push_bind(&event.metadata);
        });
        insert.push(" RETURNING position");
        let positions: Vec<i64> = insert
            .build_query_scalar()
            .fetch_all(&self.pool)
            .await
            .map_err(persistence_error)?;
        if let Some(max) = positions.into_iter().max() {
            self.last_position.store(max, Ordering::Release);
        }
        Ok(())
    }
}

/// The same sorting postgres-es does: a duplicate key is a lost race for the stream; the
/// original error is kept inside so that callers can recognise other constraints.
fn persistence_error(err: sqlx::Error) -> PersistenceError {
    match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            PersistenceError::OptimisticLockError
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            PersistenceError::ConnectionError(Box::new(err))
        }
        _ => PersistenceError::UnknownError(Box::new(err)),
    }
}

impl PersistedEventRepository for PgRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads.get_events::<A>(aggregate_id).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.reads.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        match snapshot_update {
            // Event-store mode never snapshots; anything else keeps postgres-es's behaviour.
            Some(update) => self.reads.persist::<A>(events, Some(update)).await,
            None => self.insert(events).await,
        }
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.reads.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.reads.stream_all_events::<A>().await
    }
}
