use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateError, EventStore};
use postgres_es::PostgresEventRepository;
use sqlite_es::SqliteEventRepository;

use crate::error::classify;
use crate::pg_repository::PgRepository;
use crate::{Db, ExecuteError, Metadata, Store, StoreError};

/// How many times a command is decided again after losing a race for its stream.
const ATTEMPTS: u32 = 6;

/// An aggregate as its stored events make it.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub aggregate: A,
    /// The last sequence number of the stream; 0 when it has no events.
    pub version: u64,
}

/// The outcome of a command that was accepted.
#[derive(Debug, Clone)]
pub struct Committed<A> {
    /// The aggregate after the new events.
    pub aggregate: A,
    pub version: u64,
    /// Global log position of the last event written, or of the stream's last event when the
    /// command changed nothing. 0 for an empty stream.
    pub position: i64,
    /// How many events the command wrote.
    pub written: usize,
}

/// Brings old event shapes to the current ones as streams are loaded (`consult_domain::upcast`).
struct DomainUpcaster;

impl cqrs_es::persist::EventUpcaster for DomainUpcaster {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        event_version != consult_domain::upcast::current_version(event_type)
    }

    fn upcast(
        &self,
        mut event: cqrs_es::persist::SerializedEvent,
    ) -> cqrs_es::persist::SerializedEvent {
        event.payload =
            consult_domain::upcast::upcast(&event.event_type, &event.event_version, event.payload);
        event.event_version = consult_domain::upcast::current_version(&event.event_type).to_owned();
        event
    }
}

fn upcasters() -> Vec<Box<dyn cqrs_es::persist::EventUpcaster>> {
    vec![Box::new(DomainUpcaster)]
}

impl Store {
    async fn load_context<A: Aggregate>(
        &self,
        id: &str,
    ) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
        match &self.db {
            Db::Postgres(pool) => {
                PersistedEventStore::<_, A>::new_event_store(PostgresEventRepository::new(
                    pool.clone(),
                ))
                .with_upcasters(upcasters())
                .load_aggregate(id)
                .await
            }
            Db::Sqlite(pool) => {
                PersistedEventStore::<_, A>::new_event_store(SqliteEventRepository::new(
                    pool.clone(),
                ))
                .with_upcasters(upcasters())
                .load_aggregate(id)
                .await
            }
        }
    }

    /// Appends the events; returns the last sequence written and, where the backend reports
    /// it, the last global position.
    async fn commit<A: Aggregate>(
        &self,
        events: Vec<A::Event>,
        context: EventStoreAggregateContext<A>,
        metadata: &Metadata,
    ) -> Result<(usize, Option<i64>), AggregateError<A::Error>> {
        let position = Arc::new(AtomicI64::new(0));
        let committed = match &self.db {
            Db::Postgres(pool) => {
                PersistedEventStore::<_, A>::new_event_store(PgRepository::new(
                    pool.clone(),
                    Arc::clone(&position),
                ))
                .commit(events, context, metadata.to_map())
                .await?
            }
            Db::Sqlite(pool) => {
                PersistedEventStore::<_, A>::new_event_store(SqliteEventRepository::new(
                    pool.clone(),
                ))
                .commit(events, context, metadata.to_map())
                .await?
            }
        };
        let position = Some(position.load(Ordering::Acquire)).filter(|p| *p > 0);
        Ok((committed.last().map_or(0, |e| e.sequence), position))
    }

    /// Loads an aggregate; `None` when its stream is empty.
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Option<Loaded<A>>, StoreError> {
        let context =
            self.load_context::<A>(id)
                .await
                .map_err(|e| match classify::<_, StoreError>(e) {
                    ExecuteError::Store(store) => store,
                    other => StoreError::Unexpected(other.to_string().into()),
                })?;
        if context.current_sequence == 0 {
            return Ok(None);
        }
        Ok(Some(Loaded {
            version: context.current_sequence as u64,
            aggregate: context.aggregate,
        }))
    }

    /// Decides and commits a command against the aggregate `id`.
    ///
    /// `decide` is pure and may refuse for any reason of type `D` (the domain's rules, or the
    /// caller's right to act on this aggregate); it runs again on the fresh state when another writer won the race for
    /// the stream, a few times, before the conflict is reported. With `expected_version` the
    /// command only runs on that version (the `If-Match` of the API).
    pub async fn execute<A, D, F>(
        &self,
        id: &str,
        metadata: &Metadata,
        expected_version: Option<u64>,
        decide: F,
    ) -> Result<Committed<A>, ExecuteError<D>>
    where
        A: Aggregate + Clone,
        D: std::error::Error,
        F: Fn(&A) -> Result<Vec<A::Event>, D>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let context = self.load_context::<A>(id).await.map_err(classify)?;
            let current = context.current_sequence as u64;
            if let Some(expected) = expected_version {
                if expected != current {
                    return Err(ExecuteError::VersionMismatch { current });
                }
            }
            let events = decide(&context.aggregate).map_err(ExecuteError::Refused)?;
            let mut after = context.aggregate.clone();
            if events.is_empty() {
                let position = self.position_of(A::TYPE, id, current).await?;
                return Ok(Committed {
                    aggregate: after,
                    version: current,
                    position,
                    written: 0,
                });
            }
            for event in &events {
                after.apply(event.clone());
            }
            let written = events.len();
            match self
                .commit::<A>(events, context, metadata)
                .await
                .map_err(classify)
            {
                Ok((version, position)) => {
                    self.wake_subscribers();
                    let version = version as u64;
                    let position = match position {
                        Some(position) => position,
                        None => self.position_of(A::TYPE, id, version).await?,
                    };
                    return Ok(Committed {
                        aggregate: after,
                        version,
                        position,
                        written,
                    });
                }
                Err(ExecuteError::Conflict) => {
                    // Another writer moved the stream (or the database aborted us to break a
                    // deadlock, which moved nothing): with If-Match only the former is an
                    // answer; otherwise decide again on the fresh state.
                    if let Some(expected) = expected_version {
                        let current = self.load::<A>(id).await?.map_or(0, |loaded| loaded.version);
                        if current != expected {
                            return Err(ExecuteError::VersionMismatch { current });
                        }
                    }
                    if attempt >= ATTEMPTS {
                        return Err(ExecuteError::Conflict);
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The global position of one event of a stream; 0 for sequence 0 (an empty stream).
    async fn position_of(
        &self,
        aggregate_type: &str,
        id: &str,
        sequence: u64,
    ) -> Result<i64, StoreError> {
        if sequence == 0 {
            return Ok(0);
        }
        let sequence = i64::try_from(sequence).unwrap_or(i64::MAX);
        const SQL: &str = "SELECT position FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3";
        let position: Option<i64> = with_pool!(&self.db, pool => {
            sqlx::query_scalar(SQL)
                .bind(aggregate_type)
                .bind(id)
                .bind(sequence)
                .fetch_optional(pool)
                .await?
        });
        Ok(position.unwrap_or(0))
    }
}

/// Exponential backoff with jitter between retries of a conflicting command: about 2, 4, 8 …
/// milliseconds, spread so that the writers that lost together do not collide again.
fn backoff(attempt: u32) -> Duration {
    let base_ms = 1u64 << attempt.min(6);
    let mut byte = [0u8; 1];
    let jitter = match getrandom::fill(&mut byte) {
        Ok(()) => u64::from(byte[0]) % (base_ms + 1),
        Err(_) => base_ms / 2,
    };
    Duration::from_millis(base_ms + jitter)
}
