//! Durable subscriptions: a named handler fed the global log in batches, each batch handled in
//! the transaction that moves the subscription's checkpoint, so a read model sees every event
//! exactly once whatever crashes in between.
//!
//! Several processes may run the same subscriptions. A lease row decides who works: the owner
//! renews it with every batch and while idle; when the owner dies the lease runs out and another
//! process takes it. Moving the checkpoint is a compare-and-set on the old checkpoint and the
//! owner, so even a process that lost its lease while paused cannot apply a batch twice.
//!
//! A handler that fails leaves the checkpoint where it was; the runner records the error on the
//! subscription's row, waits (exponential backoff) and tries the same batch again.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, SqliteConnection};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::log::{Checkpoint, RecordedEvent};
use crate::{error_chain, Db, Store, StoreError};

/// A boxed future, so that handlers can be kept as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a handler could not handle a batch. Shown on the status endpoint: ids only, never
/// personal data.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// The open transaction a handler writes in, on either backend.
#[derive(Debug)]
pub enum Tx<'c> {
    Postgres(&'c mut PgConnection),
    Sqlite(&'c mut SqliteConnection),
}

/// Runs the same sqlx expression on whichever connection a [`Tx`] holds.
#[macro_export]
macro_rules! with_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::Tx::Postgres(c) => {
                let $conn: &mut ::sqlx::PgConnection = &mut **c;
                $body
            }
            $crate::Tx::Sqlite(c) => {
                let $conn: &mut ::sqlx::SqliteConnection = &mut **c;
                $body
            }
        }
    };
}

/// What a subscription does with the events.
pub trait Handler: Send + Sync + 'static {
    /// The subscription's durable name.
    fn name(&self) -> &'static str;

    /// Handles a batch, in log order, inside the transaction that then moves the checkpoint
    /// past it. An error rolls everything back.
    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), HandlerError>>;

    /// Empties whatever the handler maintains, before a replay from the start of the log.
    fn reset<'a>(&'a self, tx: &'a mut Tx<'_>) -> BoxFuture<'a, Result<(), HandlerError>>;

    /// Called once a replay after [`Handler::reset`] has caught up with the log, in the
    /// transaction that marks the replay done: a handler that replays somewhere reads do not
    /// look (a table built without its secondary indexes, say) puts the result in place here.
    /// Until it commits, reads are not told the subscription reached any position.
    fn finish_replay<'a>(&'a self, tx: &'a mut Tx<'_>) -> BoxFuture<'a, Result<(), HandlerError>> {
        let _ = tx;
        Box::pin(async { Ok(()) })
    }

    /// A fast path for replays: state folded in memory over many batches and written in a few
    /// large flushes, each in the transaction that moves the checkpoint. `None` (the default)
    /// replays through [`Handler::handle`] batch by batch.
    fn replayer(&self) -> Option<Box<dyn Replay>> {
        None
    }

    /// How long the subscription waits after a wake-up from idle before it reads the log, so
    /// that under load one batch (one transaction) takes the events of many commits: the
    /// latency it can spare for less work. Zero (the default) reads at once.
    fn linger(&self) -> Duration {
        Duration::ZERO
    }
}

/// A replay folded in memory (see [`Handler::replayer`]). Nothing it holds counts until a
/// [`Flush`] taken from it commits with the checkpoint; after any failure the runner drops it
/// and goes on from the last flush that committed.
pub trait Replay: Send {
    /// Folds a batch (in log order) into memory. `conn` is a plain connection, for reading what
    /// earlier flushes wrote; it must not be written through.
    fn fold<'a>(
        &'a mut self,
        conn: &'a mut Tx<'_>,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), HandlerError>>;

    /// How many items (rows) are held: the runner flushes before this grows past its bound.
    fn held(&self) -> usize;

    /// Takes everything held, to be written while folding goes on. Until the next `take`, what
    /// was taken must stay visible to [`Replay::fold`] (the write may not have committed yet);
    /// the runner waits for one flush to commit before it takes the next.
    fn take(&mut self) -> Box<dyn Flush>;
}

/// What a [`Replay`] held, written inside the transaction that moves the checkpoint.
pub trait Flush: Send + Sync + 'static {
    fn write<'a>(&'a self, tx: &'a mut Tx<'_>) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// How the runner paces itself.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Most events handled in one transaction. Batches start at [`FIRST_BATCH`] events and
    /// double while they come back full (catching up, rebuilding) up to this.
    pub batch_size: u32,
    /// How long a lease lasts without renewal: the longest a dead owner's subscription waits.
    pub lease: Duration,
    /// How often the log is read when no wake-up comes.
    pub poll_interval: Duration,
    /// Longest wait between two attempts of a failing batch.
    pub max_retry_delay: Duration,
    /// A replay held in memory ([`Replay`]) is flushed once it holds this many items...
    pub replay_flush_items: usize,
    /// ...or has folded this many events since its last flush.
    pub replay_flush_events: u64,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            batch_size: 10_000,
            lease: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(30),
            replay_flush_items: 50_000,
            replay_flush_events: 500_000,
        }
    }
}

/// A subscription's row, as the status endpoint and the rebuild command show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SubscriptionStatus {
    pub name: String,
    pub transaction_id: i64,
    pub position: i64,
    /// Events handled since the last reset.
    pub applied: i64,
    pub owner: Option<String>,
    pub lease_until_ms: i64,
    pub reset_pending: bool,
    pub reset_at_ms: Option<i64>,
    /// Replaying the log after a reset, not caught up yet.
    pub replaying: bool,
    pub updated_at_ms: i64,
    pub failing_since_ms: Option<i64>,
    pub failures: i32,
    pub last_error: Option<String>,
    /// Events after the checkpoint (counted up to [`LAG_COUNT_CAP`]).
    pub lag_events: i64,
    /// How long the oldest event not yet handled has been waiting, in milliseconds.
    pub lag_ms: i64,
}

/// How often at most a wake-up makes an idle subscription read its row again.
const RECHECK_EVERY: Duration = Duration::from_millis(100);

/// The size of a subscription's first batch, and of batches while it keeps up.
pub const FIRST_BATCH: u32 = 500;

/// Lag counts stop here, so that a status read stays cheap on a long backlog.
pub const LAG_COUNT_CAP: i64 = 100_000;

/// The backend-specific pieces of the runner's statements.
struct Sql {
    now: &'static str,
    tx_out: &'static str,
    tx_in: fn(usize) -> String,
}

impl Sql {
    fn of(db: &Db) -> Self {
        match db {
            Db::Postgres(_) => Self {
                now: "(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                tx_out: "transaction_id::text::bigint",
                tx_in: |n| format!("(${n}::bigint)::text::xid8"),
            },
            Db::Sqlite(_) => Self {
                now: "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
                tx_out: "transaction_id",
                tx_in: |n| format!("${n}"),
            },
        }
    }
}

#[derive(sqlx::FromRow)]
struct LeaseRow {
    transaction_id: i64,
    position: i64,
    reset_pending: bool,
    replaying: bool,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Runs `$work` on a handler's transaction, then the checkpoint statement `$update`, and commits
/// only when that statement moved the subscription's row (its compare-and-set held);
/// `Ok(false)` after a rollback otherwise.
///
/// On PostgreSQL the commit does not wait for the WAL flush: the handler's writes and the
/// checkpoint commit together, so a commit lost in a server crash loses both, and the events
/// are handled again.
macro_rules! fenced {
    ($store:expr, $tx:ident => $work:expr, $conn:ident => $update:expr) => {{
        macro_rules! on {
            ($pool:expr, $variant:ident) => {{
                let mut transaction = $crate::BeginWrite::begin_write($pool).await?;
                if matches!($store.db, Db::Postgres(_)) {
                    sqlx::query("SET LOCAL synchronous_commit = off")
                        .execute(&mut *transaction)
                        .await?;
                }
                {
                    let $tx = &mut Tx::$variant(&mut transaction);
                    $work;
                }
                let moved = {
                    let $conn = &mut *transaction;
                    $update.rows_affected()
                };
                if moved == 1 {
                    transaction.commit().await?;
                    Ok(true)
                } else {
                    transaction.rollback().await?;
                    Ok(false)
                }
            }};
        }
        match &$store.db {
            Db::Postgres(pool) => on!(pool, Postgres),
            Db::Sqlite(pool) => on!(pool, Sqlite),
        }
    }};
}

impl Store {
    /// Makes sure the subscription has a row (a new one starts at the beginning of the log).
    pub async fn register_subscription(&self, name: &str) -> Result<(), StoreError> {
        const SQL: &str =
            "INSERT INTO subscriptions (name) VALUES ($1) ON CONFLICT (name) DO NOTHING";
        with_pool!(&self.db, pool => sqlx::query(SQL).bind(name).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Takes or renews the lease; `None` when another live process holds it.
    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<LeaseRow>, StoreError> {
        let Sql { now, tx_out, .. } = Sql::of(&self.db);
        let sql = format!(
            "UPDATE subscriptions SET owner = $2, lease_until_ms = {now} + $3 \
              WHERE name = $1 AND (owner = $2 OR owner IS NULL OR lease_until_ms < {now}) \
             RETURNING {tx_out} AS transaction_id, position, reset_pending, replaying"
        );
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as(&sql)
                .bind(name)
                .bind(owner)
                .bind(millis(lease))
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Gives the lease up (on shutdown), so that another process need not wait for it to run out.
    async fn release_lease(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE subscriptions SET owner = NULL, lease_until_ms = 0 \
                            WHERE name = $1 AND owner = $2";
        with_pool!(&self.db, pool => sqlx::query(SQL).bind(name).bind(owner).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    async fn record_failure(&self, name: &str, error: &str) -> Result<(), StoreError> {
        let now = Sql::of(&self.db).now;
        let sql = format!(
            "UPDATE subscriptions SET failures = failures + 1, \
                    failing_since_ms = COALESCE(failing_since_ms, {now}), last_error = $2 \
              WHERE name = $1"
        );
        with_pool!(&self.db, pool => sqlx::query(&sql).bind(name).bind(error).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Asks the owner of a subscription to empty its read model and replay the log from the
    /// start. Returns at once; the replay runs in whichever process owns the subscription.
    pub async fn request_reset(&self, name: &str) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO subscriptions (name, reset_pending) VALUES ($1, true) \
                           ON CONFLICT (name) DO UPDATE SET reset_pending = true";
        with_pool!(&self.db, pool => sqlx::query(SQL).bind(name).execute(pool).await.map(|_| ())?);
        // Wake the owner wherever it runs: here, and on PostgreSQL in other processes too.
        if let Db::Postgres(pool) = &self.db {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(crate::EVENTS_CHANNEL)
                .execute(pool)
                .await?;
        }
        self.wake_subscribers();
        Ok(())
    }

    /// Every subscription's row with its lag.
    pub async fn subscription_statuses(&self) -> Result<Vec<SubscriptionStatus>, StoreError> {
        let Sql { tx_out, .. } = Sql::of(&self.db);
        let sql = format!(
            "SELECT name, {tx_out} AS transaction_id, position, applied, owner, lease_until_ms, \
                    reset_pending, reset_at_ms, replaying, updated_at_ms, failing_since_ms, \
                    failures, last_error \
               FROM subscriptions ORDER BY name"
        );
        type Row = (
            String,
            i64,
            i64,
            i64,
            Option<String>,
            i64,
            bool,
            Option<i64>,
            bool,
            i64,
            Option<i64>,
            i32,
            Option<String>,
        );
        let rows: Vec<Row> =
            with_pool!(&self.db, pool => sqlx::query_as(&sql).fetch_all(pool).await?);
        let mut statuses = Vec::with_capacity(rows.len());
        for row in rows {
            let checkpoint = Checkpoint {
                transaction_id: row.1,
                position: row.2,
            };
            let (lag_events, lag_ms) = self.lag(checkpoint).await?;
            statuses.push(SubscriptionStatus {
                name: row.0,
                transaction_id: row.1,
                position: row.2,
                applied: row.3,
                owner: row.4,
                lease_until_ms: row.5,
                reset_pending: row.6,
                reset_at_ms: row.7,
                replaying: row.8,
                updated_at_ms: row.9,
                failing_since_ms: row.10,
                failures: row.11,
                last_error: row.12,
                lag_events,
                lag_ms,
            });
        }
        Ok(statuses)
    }

    /// Events after a checkpoint (capped) and the age of the oldest of them.
    async fn lag(&self, after: Checkpoint) -> Result<(i64, i64), StoreError> {
        let (count, oldest): (i64, Option<i64>) = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT (SELECT count(*) FROM (SELECT 1 FROM events \
                              WHERE (transaction_id, position) > (($1::bigint)::text::xid8, $2) \
                              LIMIT $3) pending), \
                            (SELECT (extract(epoch FROM clock_timestamp() - min(recorded_at)) * 1000)::bigint \
                               FROM (SELECT recorded_at FROM events \
                                      WHERE (transaction_id, position) > (($1::bigint)::text::xid8, $2) \
                                      ORDER BY transaction_id, position LIMIT 1) oldest)",
                )
                .bind(after.transaction_id)
                .bind(after.position)
                .bind(LAG_COUNT_CAP)
                .fetch_one(pool)
                .await?
            }
            Db::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT (SELECT count(*) FROM (SELECT 1 FROM events WHERE position > $1 LIMIT $2)), \
                            (SELECT CAST((julianday('now') - julianday(recorded_at)) * 86400000 AS INTEGER) \
                               FROM events WHERE position > $1 ORDER BY position LIMIT 1)",
                )
                .bind(after.position)
                .bind(LAG_COUNT_CAP)
                .fetch_one(pool)
                .await?
            }
        };
        Ok((count, oldest.unwrap_or(0).max(0)))
    }

    /// Whether the subscription has handled the event at `position` (false while that event is
    /// unknown or not yet reached).
    pub async fn subscription_reached(
        &self,
        name: &str,
        position: i64,
    ) -> Result<bool, StoreError> {
        let reached = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM subscriptions s JOIN events e ON e.position = $2 \
                                     WHERE s.name = $1 AND NOT s.reset_pending AND NOT s.replaying \
                                       AND (s.transaction_id, s.position) >= (e.transaction_id, e.position))",
                )
                .bind(name)
                .bind(position)
                .fetch_one(pool)
                .await?
            }
            Db::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM subscriptions \
                                     WHERE name = $1 AND NOT reset_pending AND NOT replaying \
                                       AND position >= $2)",
                )
                .bind(name)
                .bind(position)
                .fetch_one(pool)
                .await?
            }
        };
        Ok(reached)
    }

    /// Waits until every named subscription has handled the event at `position`, for at most
    /// `timeout`. Returns whether they did.
    pub async fn wait_for_subscriptions(
        &self,
        names: &[&str],
        position: i64,
        timeout: Duration,
    ) -> Result<bool, StoreError> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(2);
        for name in names {
            loop {
                if self.subscription_reached(name, position).await? {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(delay.min(deadline - now)).await;
                delay = (delay * 2).min(Duration::from_millis(20));
            }
        }
        Ok(true)
    }

    /// Runs one batch: the handler and the move of the checkpoint in one transaction. `Ok(false)`
    /// when the lease was lost or a reset was asked for (nothing was applied).
    async fn apply_batch(
        &self,
        handler: &dyn Handler,
        owner: &str,
        lease: Duration,
        from: Checkpoint,
        events: &[RecordedEvent],
    ) -> Result<bool, HandlerError> {
        let Some(to) = events.last().map(RecordedEvent::checkpoint) else {
            return Ok(true);
        };
        let count = events.len() as u64;
        let step = Step { from, to, count };
        self.advance(
            handler.name(),
            Work::Batch(handler, events),
            owner,
            lease,
            step,
        )
        .await
    }

    /// Does `work` and moves the checkpoint `from` → `to` (`count` events) in one transaction,
    /// if this process still owns the subscription at `from` and no reset was asked for.
    async fn advance(
        &self,
        name: &str,
        work: Work<'_>,
        owner: &str,
        lease: Duration,
        Step { from, to, count }: Step,
    ) -> Result<bool, HandlerError> {
        let Sql { now, tx_in, .. } = Sql::of(&self.db);
        let sql = format!(
            "UPDATE subscriptions SET transaction_id = {}, position = $3, applied = applied + $4, \
                    lease_until_ms = {now} + $5, updated_at_ms = {now}, \
                    failures = 0, failing_since_ms = NULL, last_error = NULL \
              WHERE name = $1 AND owner = $6 AND transaction_id = {} AND position = $8 \
                AND NOT reset_pending",
            tx_in(2),
            tx_in(7),
        );
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        fenced!(
            self,
            tx => match work {
                Work::Batch(handler, events) => handler.handle(tx, events).await?,
                Work::Flush(flush) => flush.write(tx).await?,
            },
            conn => sqlx::query(&sql)
                .bind(name)
                .bind(to.transaction_id)
                .bind(to.position)
                .bind(count)
                .bind(millis(lease))
                .bind(owner)
                .bind(from.transaction_id)
                .bind(from.position)
                .execute(conn)
                .await?
        )
    }

    /// Empties the handler's read model and moves its checkpoint to the start, in one
    /// transaction.
    async fn apply_reset(&self, handler: &dyn Handler, owner: &str) -> Result<bool, HandlerError> {
        let Sql { now, tx_in, .. } = Sql::of(&self.db);
        let sql = format!(
            "UPDATE subscriptions SET transaction_id = {}, position = 0, applied = 0, \
                    reset_pending = false, replaying = true, reset_at_ms = {now}, \
                    updated_at_ms = {now}, \
                    failures = 0, failing_since_ms = NULL, last_error = NULL \
              WHERE name = $1 AND owner = $2",
            tx_in(3),
        );
        fenced!(
            self,
            tx => handler.reset(tx).await?,
            conn => sqlx::query(&sql)
                .bind(handler.name())
                .bind(owner)
                .bind(0_i64)
                .execute(conn)
                .await?
        )
    }
}

impl Store {
    /// Ends a replay that has caught up with the log: the handler puts its result in place and
    /// the row stops saying `replaying`, in one transaction, only if this process still owns the
    /// subscription at `at`.
    async fn finish_replay(
        &self,
        handler: &dyn Handler,
        owner: &str,
        lease: Duration,
        at: Checkpoint,
    ) -> Result<bool, HandlerError> {
        let Sql { now, tx_in, .. } = Sql::of(&self.db);
        let sql = format!(
            "UPDATE subscriptions SET replaying = false, updated_at_ms = {now}, \
                    lease_until_ms = {now} + $5 \
              WHERE name = $1 AND owner = $2 AND replaying AND NOT reset_pending \
                AND transaction_id = {} AND position = $4",
            tx_in(3),
        );
        fenced!(
            self,
            tx => {
                // Putting a replay in place can outlast a lease (index builds): the row stays
                // locked meanwhile, so no other process takes the subscription half-way.
                if let Tx::Postgres(conn) = tx {
                    sqlx::query("SELECT 1 FROM subscriptions WHERE name = $1 FOR UPDATE")
                        .bind(handler.name())
                        .execute(&mut **conn)
                        .await?;
                }
                handler.finish_replay(tx).await?
            },
            conn => sqlx::query(&sql)
                .bind(handler.name())
                .bind(owner)
                .bind(at.transaction_id)
                .bind(at.position)
                .bind(millis(lease))
                .execute(conn)
                .await?
        )
    }
}

/// What a move of the checkpoint commits with.
enum Work<'a> {
    Batch(&'a dyn Handler, &'a [RecordedEvent]),
    Flush(&'a dyn Flush),
}

/// A move of the checkpoint.
#[derive(Debug, Clone, Copy)]
struct Step {
    from: Checkpoint,
    to: Checkpoint,
    count: u64,
}

/// A pooled connection for a [`Replay`]'s reads.
enum Pooled {
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
}

impl Pooled {
    async fn acquire(db: &Db) -> Result<Self, StoreError> {
        Ok(match db {
            Db::Postgres(pool) => Self::Postgres(pool.acquire().await?),
            Db::Sqlite(pool) => Self::Sqlite(pool.acquire().await?),
        })
    }

    fn tx(&mut self) -> Tx<'_> {
        match self {
            Self::Postgres(conn) => Tx::Postgres(conn),
            Self::Sqlite(conn) => Tx::Sqlite(conn),
        }
    }
}

/// A replay's flush being written: where it moves the checkpoint, and whether it did.
type Writing = (
    Checkpoint,
    tokio::task::JoinHandle<Result<bool, HandlerError>>,
);

/// Waits for a replay's flush to commit and moves the worker's checkpoint to it; `Ok(false)`
/// when it could not move (lease lost, reset asked for).
async fn settle(current: &mut Held, writing: Option<Writing>) -> Result<bool, HandlerError> {
    let Some((to, write)) = writing else {
        return Ok(true);
    };
    if !write.await?? {
        return Ok(false);
    }
    current.checkpoint = to;
    current.renewed = Instant::now();
    tracing::debug!(position = to.position, "replay flushed");
    Ok(true)
}

/// How a replay through a [`Replay`] ended.
enum Replayed {
    /// Caught up with the log (or stopping): the plain path takes over and finishes it.
    CaughtUp,
    /// The lease was lost or a reset was asked for.
    Lost,
}

/// Runs subscriptions until told to stop.
pub struct Runner {
    store: Store,
    handlers: Vec<Arc<dyn Handler>>,
    owner: String,
    options: RunnerOptions,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("owner", &self.owner)
            .field(
                "handlers",
                &self.handlers.iter().map(|h| h.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// `owner` names this process in the lease rows; it must be unique among live processes.
    pub fn new(store: Store, owner: impl Into<String>, options: RunnerOptions) -> Self {
        Self {
            store,
            handlers: Vec::new(),
            owner: owner.into(),
            options,
        }
    }

    pub fn with(mut self, handler: Arc<dyn Handler>) -> Self {
        self.handlers.push(handler);
        self
    }

    /// Runs every subscription in its own task until `stop` turns true; a task that panics is
    /// logged and started again. Leases are given up on the way out.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        let mut by_task = HashMap::new();
        for handler in &self.handlers {
            let id = tasks
                .spawn(self.worker(Arc::clone(handler), &stop).run())
                .id();
            by_task.insert(id, Arc::clone(handler));
        }
        while let Some(done) = tasks.join_next_with_id().await {
            let handler = match done {
                Ok((id, ())) => {
                    by_task.remove(&id);
                    continue;
                }
                Err(err) => match by_task.remove(&err.id()) {
                    Some(handler) if !*stop.borrow() => {
                        tracing::error!(subscription = handler.name(), %err, "subscription task died; starting it again");
                        handler
                    }
                    _ => continue,
                },
            };
            tokio::time::sleep(Duration::from_secs(1)).await;
            let id = tasks
                .spawn(self.worker(Arc::clone(&handler), &stop).run())
                .id();
            by_task.insert(id, handler);
        }
    }

    fn worker(&self, handler: Arc<dyn Handler>, stop: &watch::Receiver<bool>) -> Worker {
        Worker {
            store: self.store.clone(),
            name: handler.name(),
            handler,
            owner: self.owner.clone(),
            options: self.options.clone(),
            stop: stop.clone(),
        }
    }
}

struct Worker {
    store: Store,
    name: &'static str,
    handler: Arc<dyn Handler>,
    owner: String,
    options: RunnerOptions,
    stop: watch::Receiver<bool>,
}

/// What the worker holds while it owns the subscription.
struct Held {
    checkpoint: Checkpoint,
    renewed: Instant,
    /// Replaying after a reset, not finished yet.
    replaying: bool,
}

impl Worker {
    async fn run(mut self) {
        let mut attempts = 0;
        while let Err(err) = self.store.register_subscription(self.name).await {
            attempts += 1;
            self.failed(&err, attempts).await;
            if *self.stop.borrow() {
                return;
            }
        }
        let mut wake = self.store.appended();
        let mut held: Option<Held> = None;
        let mut failures: u32 = 0;
        // Shrinks while batches fail, down to the one event at fault, so that everything
        // before it is applied and the error names it; grows back after successes.
        let most = self.options.batch_size.max(1);
        let mut limit = FIRST_BATCH.min(most);
        // Read the subscription's row again before the next batch.
        let mut recheck = false;
        let renew_every = self.options.lease / 3;
        // A replay whose in-memory path failed goes on through the handler, batch by batch.
        let mut plain_replay = false;
        loop {
            if *self.stop.borrow() {
                break;
            }
            // Own the subscription (or keep owning it) before anything else.
            let due = held
                .as_ref()
                .is_none_or(|h| h.renewed.elapsed() >= renew_every);
            // A wake-up asks for a look at the row (it may be a rebuild request), but at most
            // every RECHECK_EVERY: under load wake-ups come every few milliseconds, and each
            // look renews the lease with a write. A batch's own commit sees a reset request too.
            let recheck_now = recheck
                && held
                    .as_ref()
                    .is_none_or(|h| h.renewed.elapsed() >= RECHECK_EVERY);
            if recheck_now || due {
                recheck = false;
                match self.take_lease().await {
                    Ok(Some(row)) if row.reset_pending => {
                        held = None;
                        match self
                            .store
                            .apply_reset(self.handler.as_ref(), &self.owner)
                            .await
                        {
                            Ok(true) => tracing::info!(
                                subscription = self.name,
                                "reset: replaying from the start"
                            ),
                            // The lease moved meanwhile: the new owner resets.
                            Ok(false) => {}
                            Err(err) => {
                                failures += 1;
                                self.failed(err.as_ref(), failures).await;
                            }
                        }
                        continue;
                    }
                    Ok(Some(row)) => {
                        if held.is_none() {
                            tracing::info!(
                                subscription = self.name,
                                position = row.position,
                                "subscription owned"
                            );
                        }
                        held = Some(Held {
                            checkpoint: Checkpoint {
                                transaction_id: row.transaction_id,
                                position: row.position,
                            },
                            renewed: Instant::now(),
                            replaying: row.replaying,
                        });
                    }
                    Ok(None) => {
                        if held.take().is_some() {
                            tracing::warn!(
                                subscription = self.name,
                                "lease lost to another process"
                            );
                        }
                        self.pause(renew_every.min(Duration::from_secs(1))).await;
                        continue;
                    }
                    Err(err) => {
                        tracing::warn!(subscription = self.name, %err, "cannot take the lease");
                        self.pause(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let Some(current) = held.as_mut() else {
                continue;
            };
            if current.replaying && !plain_replay {
                if let Some(replayer) = self.handler.replayer() {
                    match self.replay(current, replayer).await {
                        Ok(Replayed::CaughtUp) => {}
                        Ok(Replayed::Lost) => {
                            held = None;
                            continue;
                        }
                        Err(err) => {
                            // Go on batch by batch, which narrows a failure to its event.
                            plain_replay = true;
                            failures += 1;
                            self.failed(err.as_ref(), failures).await;
                            continue;
                        }
                    }
                }
            }
            wake.borrow_and_update();
            let batch = match self.store.read_log(current.checkpoint, limit).await {
                Ok(batch) => batch,
                Err(err) => {
                    failures += 1;
                    self.failed(&err, failures).await;
                    continue;
                }
            };
            if batch.events.is_empty() && current.replaying && !batch.held_back {
                // Caught up after a reset: the replay is put in place before anything else.
                let at = current.checkpoint;
                match self
                    .store
                    .finish_replay(self.handler.as_ref(), &self.owner, self.options.lease, at)
                    .await
                {
                    Ok(true) => {
                        current.replaying = false;
                        plain_replay = false;
                        tracing::info!(
                            subscription = self.name,
                            position = at.position,
                            "replay caught up with the log"
                        );
                    }
                    // The lease moved or another reset was asked for: look at the row again.
                    Ok(false) => held = None,
                    Err(err) => {
                        failures += 1;
                        self.failed(err.as_ref(), failures).await;
                    }
                }
                continue;
            }
            if batch.events.is_empty() {
                let wait = if batch.held_back {
                    Duration::from_millis(5)
                } else {
                    self.options.poll_interval.min(renew_every)
                };
                let woken = tokio::select! {
                    changed = wake.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep(wait).await;
                        }
                        true
                    }
                    () = tokio::time::sleep(wait) => false,
                    _ = self.stop.changed() => false,
                };
                if woken && !batch.held_back {
                    // Idle and woken: the wake may be a rebuild request, which only the
                    // subscription's row tells. Renewing the lease reads it.
                    recheck = true;
                    let linger = self.handler.linger();
                    if !linger.is_zero() {
                        tokio::select! {
                            () = tokio::time::sleep(linger) => {}
                            _ = self.stop.changed() => {}
                        }
                    }
                }
                continue;
            }
            match self
                .store
                .apply_batch(
                    self.handler.as_ref(),
                    &self.owner,
                    self.options.lease,
                    current.checkpoint,
                    &batch.events,
                )
                .await
            {
                Ok(true) => {
                    failures = 0;
                    let full = batch.events.len() >= limit as usize;
                    limit = if full {
                        limit.saturating_mul(2).min(most)
                    } else {
                        limit.max(FIRST_BATCH.min(most))
                    };
                    if let Some(last) = batch.events.last() {
                        current.checkpoint = last.checkpoint();
                    }
                    current.renewed = Instant::now();
                }
                // Lost the lease or a reset was asked for: look at the row again.
                Ok(false) => held = None,
                Err(err) if batch.events.len() > 1 => {
                    // Look for the event at fault before counting a failure.
                    tracing::debug!(subscription = self.name, %err, "batch failed; narrowing it");
                    limit = u32::try_from(batch.events.len() / 2).unwrap_or(1).max(1);
                }
                Err(err) => {
                    failures += 1;
                    let position = batch.events.first().map_or(0, |e| e.position);
                    let err = AtPosition {
                        position,
                        source: err,
                    };
                    self.failed(&err, failures).await;
                }
            }
        }
        if held.is_some() {
            if let Err(err) = self.store.release_lease(self.name, &self.owner).await {
                tracing::warn!(subscription = self.name, %err, "cannot release the lease");
            }
        }
    }

    /// Replays through the handler's in-memory path from the checkpoint until caught up with
    /// the log. Three things overlap: the next batch is read while this one is folded, and what
    /// is held is written (with the checkpoint) whenever it reaches its bounds while folding
    /// goes on; one write is in flight at a time, so checkpoints move in order.
    async fn replay(
        &mut self,
        current: &mut Held,
        mut replayer: Box<dyn Replay>,
    ) -> Result<Replayed, HandlerError> {
        let limit = self.options.batch_size.max(1);
        let renew_every = self.options.lease / 3;
        let read = |after: Checkpoint| {
            let store = self.store.clone();
            tokio::spawn(async move { store.read_log(after, limit).await })
        };
        let mut read_to = current.checkpoint;
        // Where the last flush taken ends (committed or in flight).
        let mut taken_to = current.checkpoint;
        let mut folded: u64 = 0;
        let mut writing: Option<Writing> = None;
        let mut next = Some(read(read_to));
        while let Some(reading) = next.take() {
            let batch = reading.await??;
            let at_head = batch.events.len() < limit as usize;
            if let Some(last) = batch.events.last() {
                read_to = last.checkpoint();
            }
            let stopping = *self.stop.borrow();
            if !at_head && !stopping {
                next = Some(read(read_to));
            }
            if !batch.events.is_empty() {
                let mut conn = Pooled::acquire(&self.store.db).await?;
                replayer.fold(&mut conn.tx(), &batch.events).await?;
                folded += batch.events.len() as u64;
            }
            let last = at_head || stopping;
            let bounds = replayer.held() >= self.options.replay_flush_items
                || folded >= self.options.replay_flush_events;
            let written = writing.as_ref().is_some_and(|(_, w)| w.is_finished());
            if folded > 0 && (bounds || last) || written {
                // The previous write commits first: its rows are what the next one builds on.
                if !settle(current, writing.take()).await? {
                    return Ok(Replayed::Lost);
                }
            }
            if folded > 0 && (bounds || last) {
                let step = Step {
                    from: taken_to,
                    to: read_to,
                    count: folded,
                };
                let flush = replayer.take();
                let store = self.store.clone();
                let (name, owner, lease) = (self.name, self.owner.clone(), self.options.lease);
                let write = tokio::spawn(async move {
                    store
                        .advance(name, Work::Flush(flush.as_ref()), &owner, lease, step)
                        .await
                });
                writing = Some((read_to, write));
                taken_to = read_to;
                folded = 0;
            } else if current.renewed.elapsed() >= renew_every {
                // Folding between flushes can outlast a lease: keep it.
                match self.take_lease().await? {
                    Some(row) if !row.reset_pending => current.renewed = Instant::now(),
                    _ => return Ok(Replayed::Lost),
                }
            }
        }
        if !settle(current, writing.take()).await? {
            return Ok(Replayed::Lost);
        }
        Ok(Replayed::CaughtUp)
    }

    async fn take_lease(&self) -> Result<Option<LeaseRow>, StoreError> {
        self.store
            .acquire_lease(self.name, &self.owner, self.options.lease)
            .await
    }

    /// Records the failure on the row and waits before the next attempt.
    async fn failed(
        &mut self,
        err: &(dyn std::error::Error + Send + Sync + 'static),
        failures: u32,
    ) {
        let message = error_chain(err);
        tracing::error!(subscription = self.name, failures, error = %message, "batch failed; will retry");
        if let Err(record) = self.store.record_failure(self.name, &message).await {
            tracing::warn!(subscription = self.name, %record, "cannot record the failure");
        }
        let exponent = failures.saturating_sub(1).min(16);
        let delay = Duration::from_millis(100u64 << exponent).min(self.options.max_retry_delay);
        self.pause(delay).await;
    }

    /// Sleeps, waking early to stop.
    async fn pause(&mut self, duration: Duration) {
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            _ = self.stop.changed() => {}
        }
    }
}

/// A handler's failure on the event at `position`.
#[derive(Debug, thiserror::Error)]
#[error("event at position {position}")]
struct AtPosition {
    position: i64,
    #[source]
    source: HandlerError,
}
