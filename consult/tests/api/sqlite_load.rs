//! The embedded default under a light load: eight clients looping book → accept on SQLite.
//! Every write transaction takes SQLite's write lock up front (`BEGIN IMMEDIATE`) and waits on
//! the busy timeout, so no subscription batch fails with `database is locked`.
//!
//! `SQLITE_LOAD_SECS` sets how long the load runs (10 s by default; `BENCHMARKS.md` records a
//! 30 s run). The worst subscription lag seen is printed as a figure, not asserted: timings
//! belong to benchmarks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consult_api::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{booking, eventually, spawn_app_with, Backend, TestApp};

const CLIENTS: usize = 8;

/// The largest `lag_seconds` of any subscription now, and whether all are at the head.
async fn lag(app: &TestApp, admin: &str) -> (f64, bool) {
    let body: Value = app
        .get("/v1/admin/subscriptions", admin)
        .await
        .json()
        .await
        .expect("json");
    let items = body["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let worst = items
        .iter()
        .filter_map(|s| s["lag_seconds"].as_f64())
        .fold(0.0, f64::max);
    let at_head = !items.is_empty() && items.iter().all(|s| s["lag_events"] == 0);
    (worst, at_head)
}

/// The ceiling beside the figure: write transactions per second that `CLIENTS` tasks get from
/// a bare SQLite file in the same directory, opened as the store opens its own (WAL, a 5 s busy
/// timeout, 4 connections, `BEGIN IMMEDIATE`), each transaction one `INSERT`.
async fn bare_commits_per_second(dir: &std::path::Path, seconds: f64) -> f64 {
    use std::str::FromStr as _;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&format!(
        "sqlite://{}",
        dir.join("bare.db").display()
    ))
    .expect("url")
    .create_if_missing(true)
    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
    .busy_timeout(Duration::from_secs(5));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("open a bare SQLite file");
    sqlx::query("CREATE TABLE t (id integer PRIMARY KEY, body text NOT NULL)")
        .execute(&pool)
        .await
        .expect("table");
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut commits = 0_u64;
                while Instant::now() < until {
                    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
                    sqlx::query("INSERT INTO t (body) VALUES ('a row of about this size')")
                        .execute(&mut *tx)
                        .await
                        .expect("insert");
                    tx.commit().await.expect("commit");
                    commits += 1;
                }
                commits
            })
        })
        .collect();
    let mut commits = 0;
    for task in tasks {
        commits += task.await.expect("task");
    }
    pool.close().await;
    commits as f64 / seconds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_on_sqlite_meet_no_lock_errors() {
    let seconds: u64 = std::env::var("SQLITE_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let Some(app) = spawn_app_with(Backend::Sqlite, |config| {
        config.notifications.booking_limit = consult_api::RateLimit {
            limit: 1_000_000,
            window: Duration::from_secs(3600),
        };
        config.notifications.flood = consult_reactors::FloodGuard {
            limit: 1_000_000,
            window: Duration::from_secs(3600),
        };
    })
    .await
    else {
        return;
    };
    // Every failed subscription batch leaves a row here, whatever else the process logs.
    app.db
        .execute(
            "CREATE TABLE seen_failures (name text, error text); \
             CREATE TRIGGER record_failures AFTER UPDATE OF failures ON subscriptions \
             WHEN NEW.failures > OLD.failures \
             BEGIN INSERT INTO seen_failures VALUES (NEW.name, NEW.last_error); END",
        )
        .await;
    for c in 0..CLIENTS {
        app.register_provider(&format!("prov-{c}")).await;
    }
    let app = Arc::new(app);
    let admin = app.token(Role::Admin, "admin-1");
    let errors = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let app = Arc::clone(&app);
            let errors = Arc::clone(&errors);
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let patient = app.token(Role::Patient, &format!("pat-{c}"));
                let provider = app.token(Role::Provider, &format!("prov-{c}"));
                let mut n = 0;
                while Instant::now() < until {
                    n += 1;
                    let booked = app
                        .post(
                            "/v1/consultations",
                            &patient,
                            &booking(&format!("prov-{c}"), 48 + n),
                        )
                        .await;
                    if booked.status() != StatusCode::CREATED {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let id = booked.json::<Value>().await.expect("json")["id"]
                        .as_str()
                        .expect("id")
                        .to_owned();
                    let accepted = app
                        .post(
                            &format!("/v1/consultations/{id}/accept"),
                            &provider,
                            &json!({}),
                        )
                        .await;
                    if accepted.status() == StatusCode::OK {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut worst = 0.0_f64;
    while Instant::now() < until {
        worst = worst.max(lag(&app, &admin).await.0);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for client in clients {
        client.await.expect("client");
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            lag(&app, &admin).await.1
        })
        .await,
        "every subscription reaches the head"
    );
    let cycles = done.load(Ordering::Relaxed);
    let ceiling = bare_commits_per_second(&app.db.data_dir, 3.0).await;
    println!(
        "SQLite, {CLIENTS} clients, {seconds} s: {cycles} book+accept cycles ({:.0}/s, each \
         two commands), worst subscription lag {worst:.3} s; ceiling: {ceiling:.0} bare \
         one-INSERT write transactions/s from {CLIENTS} tasks on the same disk",
        cycles as f64 / seconds as f64
    );
    assert!(cycles > 0, "the load ran");
    assert_eq!(errors.load(Ordering::Relaxed), 0, "no request failed");
    let failures = app.db.scalar("SELECT count(*) FROM seen_failures").await;
    let first = if failures > 0 {
        app.db
            .text("SELECT name || ': ' || COALESCE(error, '') FROM seen_failures LIMIT 1")
            .await
    } else {
        String::new()
    };
    assert_eq!(failures, 0, "no subscription batch failed: {first}");
}
