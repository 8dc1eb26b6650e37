//! The event store: cqrs-es in event-store mode over postgres-es (PostgreSQL) or sqlite-es
//! (SQLite, the embedded default), with the extra columns and tables of our migrations.
//!
//! Commands go through [`Store::execute`], which loads the aggregate, runs the pure decision,
//! commits through cqrs-es's `EventStore`, retries optimistic-concurrency conflicts a few times,
//! and reports the version and global position of what it wrote.

/// Runs the same sqlx expression on whichever pool the store has: the statements we write by
/// hand are the same text on both backends, only the pool's type differs.
#[macro_export]
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::Db::Postgres($pool) => $body,
            $crate::Db::Sqlite($pool) => $body,
        }
    };
}

/// Fixtures and ceiling measurements for the benchmark; the engine never calls them.
pub mod bench;
pub mod calls;
mod chain;
mod error;
pub mod events;
mod execute;
pub mod export;
mod files;
mod idempotency;
pub mod jobs;
mod log;
mod metadata;
pub mod notification_log;
mod pg_repository;
mod rate_limit;
mod subscription;
mod write;

mod access_log;
mod payment_events;
mod shadow;
mod summaries;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::watch;

pub use chain::{
    event_hash, Break, ChainSealer, Sealed, VerifyReport, CHAIN_SUBSCRIPTION, GENESIS,
};
pub use error::{error_chain, is_unavailable, ExecuteError, StoreError};
pub use execute::{Committed, Loaded};
pub use files::{private_dir, private_file};
pub use idempotency::{IdempotencyClaim, StoredResponse};
pub use log::{Checkpoint, LogBatch, RecordedEvent};
pub use metadata::Metadata;
pub use rate_limit::WindowCount;
pub use subscription::{
    BoxFuture, Flush, Handler, HandlerError, Replay, Runner, RunnerOptions, SubscriptionStatus, Tx,
    FIRST_BATCH, LAG_COUNT_CAP,
};
pub use write::WriteTx;

pub use access_log::{AccessEntry, AccessRecord};
pub use payment_events::{PaymentEventClaim, PaymentEventRow};
pub use summaries::{Summaries, Summary, SummaryFilter, SummaryState, SummaryWindow, SummaryWrite};

/// Which database holds the events. Both pools are cheap handles to shared connection pools.
#[derive(Debug, Clone)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `postgres://…` or `sqlite://path`.
    pub url: String,
    /// Most connections the pool opens (PostgreSQL).
    pub max_connections: u32,
    /// How long a request waits for a connection before the store reports itself unavailable.
    pub acquire_timeout: Duration,
}

impl StoreOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// Whether a SQLite connection coming back to the pool is out of any transaction, as it must
/// be to be used again.
///
/// After a failed write (disk full, file size limit, I/O error) SQLite may roll the transaction
/// back by itself; sqlx's `ROLLBACK` then fails and sqlx goes on counting the transaction as
/// open, so the next `begin` on this connection opens a savepoint inside a transaction that is
/// never committed, and its `commit` releases the savepoint only: writes acknowledged, holding
/// the write lock, and lost. Such a connection is closed instead (which rolls back whatever it
/// holds) and the pool opens a fresh one.
async fn out_of_transaction(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection as _;
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    // The rollback of a transaction dropped just now may still be queued: let it run first.
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!("a SQLite connection is left inside a failed transaction; closing it");
        return Ok(false);
    }
    Ok(true)
}

/// Opens a transaction that will write: on SQLite `BEGIN IMMEDIATE`, which takes the write lock
/// up front and so waits on the busy timeout when another connection holds it.
///
/// A deferred SQLite transaction (plain `BEGIN`) that reads first and writes later cannot wait:
/// if another connection committed since its read began, its upgrade to a writer fails at once
/// with `database is locked` (SQLITE_BUSY_SNAPSHOT), whatever the busy timeout. Every
/// transaction of ours that writes goes through here; PostgreSQL's plain `BEGIN` is kept.
pub trait BeginWrite {
    type Database: sqlx::Database;

    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = Result<sqlx::Transaction<'static, Self::Database>, sqlx::Error>,
    > + Send;
}

impl BeginWrite for PgPool {
    type Database = sqlx::Postgres;

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }
}

impl BeginWrite for SqlitePool {
    type Database = sqlx::Sqlite;

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

/// The event store and the few tables that live beside it.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    /// Bumped whenever events are known to have been appended, to wake subscribers early.
    appended: Arc<watch::Sender<u64>>,
}

/// The PostgreSQL channel on which writers announce new events.
const EVENTS_CHANNEL: &str = "consult_events";

impl Store {
    /// Opens the database named by the URL. A SQLite file (and its directory) is created when
    /// missing.
    pub async fn connect(options: &StoreOptions) -> Result<Self, StoreError> {
        let url = options.url.as_str();
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect(url)
                .await?;
            Db::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            files::prepare_sqlite_file(connect.get_filename(), url);
            if let Some(dir) = connect.get_filename().parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(StoreError::DataDir)?;
                }
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(options.acquire_timeout)
                .after_release(|conn, _| Box::pin(out_of_transaction(conn)))
                .connect_with(connect)
                .await?;
            Db::Sqlite(pool)
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        Ok(Self {
            db,
            appended: Arc::new(watch::channel(0).0),
        })
    }

    /// The database, for the crates that keep their own tables beside the events.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Changes whenever events may have been appended: by this process at once, by others
    /// through [`Store::listen_for_appends`].
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Wakes this process's subscribers.
    pub fn wake_subscribers(&self) {
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Announces this process's appends to the other processes (PostgreSQL `NOTIFY`), at most
    /// one notification per `min_interval`, until `stop` turns true. Returns at once on SQLite.
    ///
    /// The notification is sent in its own statement after the events have committed, not by a
    /// trigger inside the writing transaction: a `NOTIFY` in a transaction serializes its
    /// commit with every other notifying commit, which cut a bare insert loop from about 14,000
    /// to 5,000 transactions per second on the reference machine. A lost notification only
    /// delays: subscribers poll too.
    pub async fn notify_appends(&self, mut stop: watch::Receiver<bool>, min_interval: Duration) {
        let Db::Postgres(pool) = &self.db else {
            return;
        };
        let mut appended = self.appended();
        loop {
            tokio::select! {
                changed = appended.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            appended.borrow_and_update();
            if let Err(err) = sqlx::query("SELECT pg_notify($1, '')")
                .bind(EVENTS_CHANNEL)
                .execute(pool)
                .await
            {
                tracing::debug!(%err, "cannot NOTIFY new events; subscribers will poll");
            }
            tokio::time::sleep(min_interval).await;
        }
    }

    /// Relays PostgreSQL's notifications of new events (from any process) to this process's
    /// subscribers until `stop` turns true. Subscribers poll as well, so while the listening
    /// connection is down they are only slower. Returns at once on SQLite, whose writers are
    /// all in this process.
    pub async fn listen_for_appends(&self, mut stop: watch::Receiver<bool>) {
        let Db::Postgres(pool) = &self.db else {
            return;
        };
        let mut listener: Option<sqlx::postgres::PgListener> = None;
        while !*stop.borrow() {
            let Some(active) = listener.as_mut() else {
                match sqlx::postgres::PgListener::connect_with(pool).await {
                    Ok(mut fresh) => match fresh.listen(EVENTS_CHANNEL).await {
                        Ok(()) => {
                            listener = Some(fresh);
                            // Something may have been written while nobody listened.
                            self.wake_subscribers();
                        }
                        Err(err) => tracing::warn!(%err, "cannot LISTEN for new events"),
                    },
                    Err(err) => tracing::warn!(%err, "cannot open the LISTEN connection"),
                }
                if listener.is_none() {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => {}
                    }
                }
                continue;
            };
            tokio::select! {
                received = active.try_recv() => match received {
                    Ok(Some(_)) => self.wake_subscribers(),
                    // The connection dropped; the next try_recv reconnects and listens again.
                    Ok(None) => self.wake_subscribers(),
                    Err(err) => {
                        tracing::warn!(%err, "LISTEN connection failed; reconnecting");
                        listener = None;
                    }
                },
                _ = stop.changed() => {}
            }
        }
    }

    /// `"postgres"` or `"sqlite"`.
    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    /// Applies every migration not applied yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.db {
            Db::Postgres(pool) => consult_migrations::POSTGRES.run(pool).await?,
            Db::Sqlite(pool) => consult_migrations::SQLITE.run(pool).await?,
        }
        Ok(())
    }

    /// Whether the database answers and every migration this build knows is applied.
    pub async fn ready(&self) -> Result<bool, StoreError> {
        let (applied, known): (i64, usize) = match &self.db {
            Db::Postgres(pool) => (
                sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                    .fetch_one(pool)
                    .await?,
                consult_migrations::POSTGRES.iter().count(),
            ),
            Db::Sqlite(pool) => (
                sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                    .fetch_one(pool)
                    .await?,
                consult_migrations::SQLITE.iter().count(),
            ),
        };
        Ok(usize::try_from(applied).is_ok_and(|applied| applied >= known))
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        with_pool!(&self.db, pool => pool.close().await);
    }
}
