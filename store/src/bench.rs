//! Fixtures and ceiling measurements for the benchmark (`consult-bench`); the engine never calls
//! them. PostgreSQL only.
//!
//! The fixtures grow a scratch database to a given number of consultations in bulk statements
//! and queue notification jobs at once; the ceilings are the bare database operations each
//! engine figure is set beside (a single-row `INSERT` loop, one `LISTEN`/`NOTIFY` hop, a
//! streaming scan of the log, a `SELECT` of one stream).

use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection, PgPool};

use crate::{Db, Store, StoreError};

/// A database created on a PostgreSQL server for one run, dropped by [`Self::drop_database`].
pub struct ScratchDatabase {
    admin: PgConnection,
    name: String,
    url: String,
}

impl std::fmt::Debug for ScratchDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchDatabase")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ScratchDatabase {
    /// Creates the database `name` (letters, digits and `_`) on the server of `server_url`.
    pub async fn create(server_url: &str, name: &str) -> Result<Self, StoreError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(StoreError::Unexpected(
                format!("{name:?} is not a plain database name").into(),
            ));
        }
        let mut admin = PgConnection::connect(server_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        let base = server_url
            .rsplit_once('/')
            .map_or(server_url, |(base, _)| base);
        Ok(Self {
            admin,
            url: format!("{base}/{name}"),
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The scratch database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database, closing the connections still open to it.
    pub async fn drop_database(mut self) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut self.admin)
        .await?;
        Ok(())
    }
}

/// The benchmark's handle on a PostgreSQL store: its fixtures and its ceilings.
#[derive(Debug, Clone)]
pub struct BenchDb {
    pool: PgPool,
    url: String,
}

impl BenchDb {
    /// The fixtures of `store`, opened from `url`; an error on SQLite.
    pub fn new(store: &Store, url: &str) -> Result<Self, StoreError> {
        match store.db() {
            Db::Postgres(pool) => Ok(Self {
                pool: pool.clone(),
                url: url.to_owned(),
            }),
            Db::Sqlite(_) => Err(StoreError::Unexpected(
                "the benchmark runs on PostgreSQL".into(),
            )),
        }
    }

    /// Adds the seeded consultations `first..=last`: each has the events of `templates` (event
    /// type and payload, with the nil UUID standing for the consultation's id and
    /// `bench-provider` for its provider), two sent notifications and three reminder timers,
    /// finished as a consultation that has run its course leaves them, except for one
    /// consultation in a hundred that is still ahead and whose timers are pending.
    pub async fn insert_seeded_consultations(
        &self,
        first: i64,
        last: i64,
        templates: &[(&str, String)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        for (sequence, (event_type, payload)) in templates.iter().enumerate() {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                 event_version, payload, metadata) \
                 SELECT 'consultation', md5('bench' || g)::uuid::text, $3, $4, $6, \
                        replace(replace($5, '00000000-0000-0000-0000-000000000000', \
                                        md5('bench' || g)::uuid::text), \
                                'bench-provider', 'bench-provider-' || g)::jsonb, \
                        '{\"actor_id\": \"bench\", \"actor_role\": \"system\"}' \
                   FROM generate_series($1::bigint, $2::bigint) AS g",
            )
            .bind(first)
            .bind(last)
            .bind(i64::try_from(sequence + 1).unwrap_or(i64::MAX))
            .bind(*event_type)
            .bind(payload)
            .bind(consult_domain::upcast::current_version(event_type))
            .execute(&self.pool)
            .await?;
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO notification_log (id, consultation_id, recipient_role, channel, kind, \
                     recipient_masked, status, attempts, scheduled_for_ms, sent_at_ms, \
                     updated_at_ms, recipient_key) \
             SELECT 'bench-n-' || g || '-' || r, md5('bench' || g)::uuid::text, r, 'email', \
                    'confirmed', 'p***@example.org', 'sent', 1, $3, $3, $3, md5('bench' || g || r) \
               FROM generate_series($1::bigint, $2::bigint) AS g, \
                    unnest(ARRAY['patient', 'provider']) AS r",
        )
        .bind(first)
        .bind(last)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO jobs (id, key, kind, consultation_id, payload, status, due_at_ms, \
                     attempts, max_attempts, created_at_ms, updated_at_ms, finished_at_ms) \
             SELECT 'bench-t-' || g || '-' || o, 'bench-t-' || g || '-' || o, 'reminder', \
                    md5('bench' || g)::uuid::text, '{}', \
                    CASE WHEN g % 100 = 0 THEN 'pending' ELSE 'done' END, \
                    CASE WHEN g % 100 = 0 THEN $3 + 30 * 86400000::bigint ELSE $3 END, \
                    CASE WHEN g % 100 = 0 THEN 0 ELSE 1 END, 3, $3, $3, \
                    CASE WHEN g % 100 = 0 THEN NULL ELSE $3 END \
               FROM generate_series($1::bigint, $2::bigint) AS g, \
                    unnest(ARRAY['24h', '1h', '15m']) AS o",
        )
        .bind(first)
        .bind(last)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Refreshes the planner's statistics after seeding.
    pub async fn analyze(&self) -> Result<(), StoreError> {
        sqlx::query("ANALYZE").execute(&self.pool).await?;
        Ok(())
    }

    /// Moves the checkpoints of the (registered) subscriptions `names` to the head of the log.
    pub async fn move_subscriptions_to_head(&self, names: &[&str]) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE subscriptions s SET transaction_id = h.transaction_id, position = h.position \
               FROM (SELECT transaction_id, position FROM events \
                      ORDER BY transaction_id DESC, position DESC LIMIT 1) h \
              WHERE s.name = ANY($1)",
        )
        .bind(names)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How many subscriptions are behind the head of the log.
    pub async fn subscriptions_behind(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM subscriptions \
              WHERE position < (SELECT COALESCE(max(position), 0) FROM events)",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// The ceiling of a projection rebuild: one streaming `SELECT` of every event, of the
    /// columns the log reader decodes. Returns the rows read.
    pub async fn scan_events(&self) -> Result<u64, StoreError> {
        use futures_util::StreamExt as _;
        let mut rows = 0u64;
        let mut stream =
            sqlx::query_as::<_, (i64, i64, String, String, i64, String, String, String)>(
                "SELECT transaction_id::text::bigint, position, aggregate_type, aggregate_id, \
                    sequence, event_type, payload::text, metadata::text \
               FROM events ORDER BY transaction_id, position",
            )
            .fetch(&self.pool);
        while let Some(row) = stream.next().await {
            row?;
            rows += 1;
        }
        Ok(rows)
    }

    /// The ceiling of commands: `clients` connections of their own each inserting one row per
    /// autocommit statement into a table of its own, for `duration`. Returns every insert's
    /// latency.
    pub async fn bare_insert_loop(
        &self,
        clients: usize,
        duration: Duration,
    ) -> Result<Vec<Duration>, StoreError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bench_ceiling \
             (id bigserial PRIMARY KEY, payload jsonb NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let url = self.url.clone();
            tasks.spawn(async move {
                let mut conn = PgConnection::connect(&url).await?;
                let mut latencies = Vec::new();
                while started.elapsed() < duration {
                    let t = Instant::now();
                    sqlx::query("INSERT INTO bench_ceiling (payload) VALUES ($1)")
                        .bind(serde_json::json!({"Booked": {"n": 1}}))
                        .execute(&mut conn)
                        .await?;
                    latencies.push(t.elapsed());
                }
                Ok::<_, sqlx::Error>(latencies)
            });
        }
        let mut latencies = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            latencies.extend(joined.map_err(|e| StoreError::Unexpected(Box::new(e)))??);
        }
        Ok(latencies)
    }

    /// The ceiling of every wake-up: round trips of one `NOTIFY` from one connection to a
    /// `LISTEN` on another, for `duration`. Returns each round trip's latency.
    pub async fn notify_hop(&self, duration: Duration) -> Result<Vec<Duration>, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen("bench_hop").await?;
        let mut conn = PgConnection::connect(&self.url).await?;
        let started = Instant::now();
        let mut latencies = Vec::new();
        while started.elapsed() < duration {
            let t = Instant::now();
            sqlx::query("SELECT pg_notify('bench_hop', '')")
                .execute(&mut conn)
                .await?;
            listener.recv().await?;
            latencies.push(t.elapsed());
        }
        Ok(latencies)
    }

    /// Queues `jobs` provider SMS notifications at once, due now, in one transaction, with their
    /// pending notification log rows. `payload` is a notify job's payload whose recipient number
    /// is `+19990000000`: each job gets a number of its own. Ids start with `prefix`; `run`
    /// keeps the numbers of different runs apart.
    pub async fn insert_notification_jobs(
        &self,
        payload: &str,
        jobs: u32,
        prefix: &str,
        run: usize,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO jobs (id, key, kind, consultation_id, payload, status, due_at_ms, \
                               max_attempts, created_at_ms, updated_at_ms) \
             SELECT $4 || g, $4 || g, 'notify', 'bench-c-' || g, \
                    replace($1, '+19990000000', '+188' || lpad($5 || g::text, 8, '0'))::json, \
                    'pending', $2, 3, $2, $2 \
               FROM generate_series(1, $3) AS g",
        )
        .bind(payload)
        .bind(now_ms)
        .bind(i64::from(jobs))
        .bind(prefix)
        .bind(run.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO notification_log (id, consultation_id, recipient_role, channel, kind, \
                     recipient_masked, status, attempts, scheduled_for_ms, updated_at_ms, \
                     recipient_key) \
             SELECT $3 || g, 'bench-c-' || g, 'provider', 'sms', 'new_request', \
                    '+188*****', 'pending', 0, $1, $1, md5($3 || g) \
               FROM generate_series(1, $2) AS g",
        )
        .bind(now_ms)
        .bind(i64::from(jobs))
        .bind(prefix)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The ids of `count` random consultations among the first `seeded` seeded ones.
    pub async fn random_seeded_ids(
        &self,
        count: i64,
        seeded: u64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT md5('bench' || floor(random() * $1)::bigint)::uuid::text \
               FROM generate_series(1, $2)",
        )
        .bind(seeded as f64)
        .bind(count)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The ceiling of a history read: a bare `SELECT` of each consultation's events in turn
    /// (cycling through `ids`) on one connection, for `duration`. Returns the latencies of the
    /// reads that found events.
    pub async fn stream_select_loop(
        &self,
        ids: &[String],
        duration: Duration,
    ) -> Result<Vec<Duration>, StoreError> {
        let mut conn = PgConnection::connect(&self.url).await?;
        let started = Instant::now();
        let mut latencies = Vec::new();
        for id in ids.iter().cycle() {
            if started.elapsed() >= duration {
                break;
            }
            let t = Instant::now();
            let rows = sqlx::query(
                "SELECT position, sequence, event_type, event_version, payload, metadata, \
                        recorded_at, prev_hash, hash \
                   FROM events WHERE aggregate_type = 'consultation' AND aggregate_id = $1 \
                  ORDER BY sequence",
            )
            .bind(id)
            .fetch_all(&mut conn)
            .await?;
            if !rows.is_empty() {
                latencies.push(t.elapsed());
            }
        }
        Ok(latencies)
    }
}
