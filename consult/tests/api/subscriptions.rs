//! The global log and the subscription runner, below the HTTP layer: safe order under late
//! commits, exactly-once delivery under concurrent writers, failure handling, and rebuilds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use consult_domain::{
    Booking, Consultation, ConsultationCommand, ConsultationError, Contact, DurationMinutes,
    EmailAddress, Mode, PatientId, ProviderId, StartTime, TimeZone,
};
use consult_projections::ConsultationsProjection;
use consult_store::{
    with_pool, with_tx, BoxFuture, Handler, HandlerError, Metadata, RecordedEvent, Runner,
    RunnerOptions, Store, StoreOptions, SubscriptionStatus, Tx,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::helpers::{owner_pid, Backend, DbGuard, TestDb};

/// Records each event it is handed in `deliveries`, in the checkpoint's transaction. The
/// primary key (subscription, position) turns a second delivery of an event into an error, and
/// `n` keeps the order of delivery. With `poison`, it refuses the events of one aggregate until
/// the flag is set.
struct Recorder {
    name: &'static str,
    delivered: AtomicI64,
    poison: Option<(&'static str, Arc<AtomicBool>)>,
}

impl Recorder {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            delivered: AtomicI64::new(0),
            poison: None,
        })
    }
}

impl Handler for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            for event in events {
                if let Some((poisoned, healed)) = &self.poison {
                    if event.aggregate_id == *poisoned && !healed.load(Ordering::SeqCst) {
                        return Err(format!("cannot handle {poisoned} yet").into());
                    }
                }
                let n = self.delivered.fetch_add(1, Ordering::SeqCst);
                const SQL: &str = "INSERT INTO deliveries (subscription, position, aggregate_id, \
                                   sequence, n) VALUES ($1, $2, $3, $4, $5)";
                with_tx!(&mut *tx, conn => {
                    sqlx::query(SQL)
                        .bind(self.name)
                        .bind(event.position)
                        .bind(&event.aggregate_id)
                        .bind(event.sequence)
                        .bind(n)
                        .execute(conn)
                        .await
                        .map(|_| ())?
                });
            }
            Ok(())
        })
    }

    fn reset<'a>(&'a self, tx: &'a mut Tx<'_>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            with_tx!(tx, conn => {
                sqlx::query("DELETE FROM deliveries WHERE subscription = $1")
                    .bind(self.name)
                    .execute(conn)
                    .await
                    .map(|_| ())?
            });
            Ok(())
        })
    }
}

/// A migrated store on a fresh database, with the `deliveries` table of [`Recorder`].
async fn open(backend: Backend) -> Option<(Store, DbGuard)> {
    let db = TestDb::fresh(backend).await?;
    let guard = DbGuard(db.clone());
    let store = Store::connect(&StoreOptions::new(db.url.clone()))
        .await
        .expect("open the store");
    store.migrate().await.expect("migrate");
    const SQL: &str = "CREATE TABLE deliveries (subscription text NOT NULL, position bigint \
                       NOT NULL, aggregate_id text NOT NULL, sequence bigint NOT NULL, \
                       n bigint NOT NULL, PRIMARY KEY (subscription, position))";
    with_pool!(store.db(), pool => sqlx::query(SQL).execute(pool).await.map(|_| ()))
        .expect("create deliveries");
    Some((store, guard))
}

/// A runner in the background until the returned sender says stop.
fn run(
    store: &Store,
    handlers: Vec<Arc<dyn Handler>>,
    owner: &str,
) -> (watch::Sender<bool>, JoinHandle<()>) {
    let options = RunnerOptions {
        batch_size: 50,
        lease: Duration::from_secs(3),
        poll_interval: Duration::from_millis(200),
        max_retry_delay: Duration::from_millis(400),
        // Small, so that a replay flushes many times.
        replay_flush_items: 20,
        replay_flush_events: 120,
    };
    let mut runner = Runner::new(store.clone(), owner, options);
    for handler in handlers {
        runner = runner.with(handler);
    }
    let (stop, stopped) = watch::channel(false);
    let listening = stopped.clone();
    let listener = store.clone();
    tokio::spawn(async move { listener.listen_for_appends(listening).await });
    (stop, tokio::spawn(runner.run(stopped)))
}

/// `(position, aggregate_id, sequence)` in delivery order.
async fn deliveries(store: &Store, subscription: &str) -> Vec<(i64, String, i64)> {
    const SQL: &str = "SELECT position, aggregate_id, sequence FROM deliveries \
                       WHERE subscription = $1 ORDER BY n";
    with_pool!(store.db(), pool => {
        sqlx::query_as(SQL).bind(subscription).fetch_all(pool).await
    })
    .expect("read deliveries")
}

/// The subscription's status; a subscription not registered yet reads as the start of the
/// log with nothing applied.
async fn status(store: &Store, name: &str) -> SubscriptionStatus {
    store
        .subscription_statuses()
        .await
        .expect("statuses")
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| SubscriptionStatus {
            name: name.to_owned(),
            transaction_id: 0,
            position: 0,
            applied: 0,
            owner: None,
            lease_until_ms: 0,
            reset_pending: false,
            reset_at_ms: None,
            replaying: false,
            updated_at_ms: 0,
            failing_since_ms: None,
            failures: 0,
            last_error: None,
            lag_events: 0,
            lag_ms: 0,
        })
}

/// Polls `check` until it holds or `limit` passes; returns whether it held.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn event_count(store: &Store) -> i64 {
    store.event_count().await.expect("count")
}

/// Appends a bare event of a test stream with one autocommit statement; returns its position.
async fn append_raw(store: &Store, id: &str, sequence: i64) -> i64 {
    const INSERT: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, \
                          event_type, event_version, payload, metadata) \
                          VALUES ('test', $1, $2, 'Noted', '1.0', '{}', '{}')";
    // SQLite's position is set by a trigger after the row is returned: read it back.
    const POSITION: &str =
        "SELECT position FROM events WHERE aggregate_type = 'test' AND aggregate_id = $1 \
         AND sequence = $2";
    store.wake_subscribers();
    with_pool!(store.db(), pool => {
        sqlx::query(INSERT).bind(id).bind(sequence).execute(pool).await.expect("append");
        sqlx::query_scalar(POSITION).bind(id).bind(sequence).fetch_one(pool).await
    })
    .expect("position")
}

/// The late-commit case: a transaction takes a position, stays open while later ones commit;
/// the subscriber must wait for it rather than pass it, and deliver it once it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_is_waited_for_and_never_skipped() {
    let Some((store, _guard)) = open(Backend::Postgres).await else {
        return;
    };
    let recorder = Recorder::new("late-commit");
    let (stop, task) = run(&store, vec![recorder], "owner-a");
    append_raw(&store, "before", 1).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            deliveries(&store, "late-commit").await.len() == 1
        })
        .await,
        "the subscriber runs"
    );

    let consult_store::Db::Postgres(pool) = store.db() else {
        unreachable!("a PostgreSQL store")
    };
    let mut late = pool.begin().await.expect("begin");
    let late_position: i64 = sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata) VALUES ('test', 'late', 1, 'Noted', '1.0', '{}', '{}') \
         RETURNING position",
    )
    .fetch_one(&mut *late)
    .await
    .expect("insert in the open transaction");
    let mut after = Vec::new();
    for i in 1..=3 {
        after.push(append_raw(&store, &format!("after-{i}"), 1).await);
    }
    assert!(
        after.iter().all(|p| *p > late_position),
        "the later commits hold higher positions: a reader following positions alone would \
         pass {late_position} while it is invisible"
    );
    // Give the subscriber ample time to (wrongly) move on.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let seen = deliveries(&store, "late-commit").await;
    assert_eq!(
        seen.iter().map(|d| d.1.as_str()).collect::<Vec<_>>(),
        ["before"],
        "nothing committed after the open transaction is delivered before it"
    );
    assert!(status(&store, "late-commit").await.position < late_position);

    late.commit().await.expect("commit late");
    assert!(
        eventually(Duration::from_secs(10), || async {
            deliveries(&store, "late-commit").await.len() == 5
        })
        .await,
        "everything is delivered once the late transaction commits"
    );
    let seen = deliveries(&store, "late-commit").await;
    let order: Vec<&str> = seen.iter().map(|d| d.1.as_str()).collect();
    assert_eq!(order, ["before", "late", "after-1", "after-2", "after-3"]);
    let _ = stop.send(true);
    task.await.expect("runner stops");
}

fn booking(id: uuid::Uuid, n: usize) -> Booking {
    let now = Utc::now();
    let start = now + chrono::Duration::days(2) + chrono::Duration::hours(n as i64);
    Booking {
        consultation_id: id,
        patient_id: PatientId::parse(&format!("pat-{}", n % 7)).expect("patient id"),
        provider_id: ProviderId::parse(&format!("prov-{n}")).expect("provider id"),
        starts_at: StartTime::parse(start, now).expect("start"),
        duration: DurationMinutes::parse(30).expect("duration"),
        mode: Mode::Video,
        timezone: TimeZone::parse("Europe/Paris").expect("tz"),
        contact: Contact::new(
            None,
            Some(EmailAddress::parse("patient@example.org").expect("email")),
            false,
        )
        .expect("contact"),
        reason: None,
        price: None,
    }
}

async fn command(store: &Store, id: &str, command: ConsultationCommand) {
    let metadata = Metadata {
        actor_id: "test".into(),
        actor_role: "system".into(),
        correlation_id: id.into(),
        causation_id: id.into(),
        request_id: String::new(),
    };
    store
        .execute::<Consultation, ConsultationError, _>(id, &metadata, None, |c| {
            c.decide(command.clone())
        })
        .await
        .expect("the command commits");
}

/// Asks for a rebuild of the consultations projection and waits until its owner has reset it,
/// replayed all `total` events and put the result in place.
async fn rebuild_consultations(store: &Store, total: i64) {
    store.request_reset("consultations").await.expect("reset");
    assert!(
        eventually(Duration::from_secs(20), || async {
            let s = status(store, "consultations").await;
            !s.reset_pending && !s.replaying && s.reset_at_ms.is_some() && s.applied == total
        })
        .await,
        "the rebuild replays all {total} events"
    );
}

/// The consultations read model as comparable text, row by row.
async fn summaries(store: &Store) -> Vec<(String, String, String, i64, i64, i64, String)> {
    let page = consult_projections::consultations(
        store,
        &consult_projections::ListFilter {
            limit: 1000,
            ..Default::default()
        },
    )
    .await
    .expect("list");
    page.items
        .into_iter()
        .map(|s| {
            (
                s.id,
                s.status,
                s.payment_status,
                s.starts_at_ms,
                s.version,
                s.position,
                serde_json::to_string(&s.state.0).expect("state json"),
            )
        })
        .collect()
}

/// Many writers on many consultations, some racing on the same streams, while the runner feeds
/// a recorder and the consultations projection: every event delivered once, streams in order,
/// and the read model equal to a rebuild from scratch.
async fn many_writers_every_event_once_in_stream_order(backend: Backend) {
    let Some((store, _guard)) = open(backend).await else {
        return;
    };
    let recorder = Recorder::new("recorder");
    let (stop, task) = run(
        &store,
        vec![recorder, Arc::new(ConsultationsProjection)],
        "owner-a",
    );
    const CONSULTATIONS: usize = 24;
    const WRITERS: usize = 6;
    let ids: Vec<uuid::Uuid> = (0..CONSULTATIONS).map(|_| uuid::Uuid::new_v4()).collect();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        let ids = ids.clone();
        writers.push(tokio::spawn(async move {
            // Each writer books and accepts its own share, then pays for and reschedules
            // every consultation of the next writer's share too, racing that writer.
            for (n, id) in ids
                .iter()
                .enumerate()
                .filter(|(n, _)| n % WRITERS == writer)
            {
                let key = id.to_string();
                let at = Utc::now();
                command(
                    &store,
                    &key,
                    ConsultationCommand::Book {
                        booking: booking(*id, n),
                        at,
                    },
                )
                .await;
                command(&store, &key, ConsultationCommand::Accept { at: Utc::now() }).await;
            }
            for (n, id) in ids
                .iter()
                .enumerate()
                .filter(|(n, _)| n % WRITERS == (writer + 1) % WRITERS)
            {
                let key = id.to_string();
                for round in 0..3 {
                    let now = Utc::now();
                    let start =
                        now + chrono::Duration::days(3 + round) + chrono::Duration::hours(n as i64);
                    let starts_at = StartTime::parse(start, now).expect("start");
                    // The stream may not be booked yet by its own writer: wait for it.
                    loop {
                        let loaded = store.load::<Consultation>(&key).await.expect("load");
                        if loaded.is_some_and(|l| {
                            l.aggregate.status.as_str() == "accepted"
                                || l.aggregate.status.as_str() == "confirmed"
                        }) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    command(
                        &store,
                        &key,
                        ConsultationCommand::Reschedule {
                            starts_at,
                            duration: None,
                            by: consult_domain::Party::Patient,
                            at: now,
                        },
                    )
                    .await;
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let total = event_count(&store).await;
    assert_eq!(total, (CONSULTATIONS * 5) as i64);
    assert!(
        eventually(Duration::from_secs(20), || async {
            deliveries(&store, "recorder").await.len() as i64 == total
                && status(&store, "consultations").await.applied == total
        })
        .await,
        "both subscriptions catch up"
    );

    let delivered = deliveries(&store, "recorder").await;
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (_, id, sequence) in &delivered {
        let previous = last.insert(id, *sequence).unwrap_or(0);
        assert_eq!(
            *sequence,
            previous + 1,
            "stream {id} delivered in order, without gaps"
        );
    }
    assert_eq!(last.len(), CONSULTATIONS);
    assert!(last.values().all(|s| *s == 5));
    let projection = status(&store, "consultations").await;
    assert_eq!(projection.applied, total, "each event applied once");
    assert_eq!(projection.failures, 0);

    let before = summaries(&store).await;
    assert_eq!(before.len(), CONSULTATIONS);
    assert!(before.iter().all(|row| row.4 == 5 && row.1 == "accepted"));

    rebuild_consultations(&store, total).await;
    assert_eq!(
        summaries(&store).await,
        before,
        "a fresh rebuild gives the same read model"
    );
    let _ = stop.send(true);
    task.await.expect("runner stops");
    store.close().await;
}

/// A handler that fails on one event: the checkpoint stays before it, the failure is on the
/// status row, other subscriptions go on, and once the cause is gone it resumes.
async fn a_failing_handler_holds_its_checkpoint_and_recovers(backend: Backend) {
    let Some((store, _guard)) = open(backend).await else {
        return;
    };
    let healed = Arc::new(AtomicBool::new(false));
    let flaky = Arc::new(Recorder {
        name: "flaky",
        delivered: AtomicI64::new(0),
        poison: Some(("poison", Arc::clone(&healed))),
    });
    let (stop, task) = run(&store, vec![flaky, Recorder::new("steady")], "owner-a");
    let good = append_raw(&store, "good", 1).await;
    append_raw(&store, "poison", 1).await;
    append_raw(&store, "later", 1).await;

    assert!(
        eventually(Duration::from_secs(10), || async {
            status(&store, "flaky").await.failures >= 2
        })
        .await,
        "the failure is retried and counted"
    );
    let flaky_status = status(&store, "flaky").await;
    assert_eq!(
        flaky_status.position, good,
        "the checkpoint moves up to the failing event and no further"
    );
    assert!(flaky_status.failing_since_ms.is_some());
    assert!(flaky_status
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("cannot handle poison yet") && e.contains("position")));
    assert_eq!(flaky_status.lag_events, 2);
    let flaky_seen: Vec<String> = deliveries(&store, "flaky")
        .await
        .into_iter()
        .map(|d| d.1)
        .collect();
    assert_eq!(
        flaky_seen,
        ["good"],
        "what the failing event's batches wrote was rolled back"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            deliveries(&store, "steady").await.len() == 3
        })
        .await,
        "another subscription in the same process is not held up"
    );
    assert!(!task.is_finished(), "the runner survives the failure");

    healed.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let s = status(&store, "flaky").await;
            s.failures == 0 && s.last_error.is_none() && s.lag_events == 0
        })
        .await,
        "the subscription recovers once the handler can go on"
    );
    let flaky_seen: Vec<String> = deliveries(&store, "flaky")
        .await
        .into_iter()
        .map(|d| d.1)
        .collect();
    assert_eq!(flaky_seen, ["good", "poison", "later"]);
    let _ = stop.send(true);
    task.await.expect("runner stops");
    store.close().await;
}

crate::on_both_backends!(
    many_writers_every_event_once_in_stream_order,
    a_failing_handler_holds_its_checkpoint_and_recovers,
);

/// Two worker processes on one database: one owns the projection; kill -9 it while commands
/// stream in, the other takes over within seconds, and every event is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_is_replaced_and_nothing_is_lost_or_applied_twice() {
    let Some(db) = TestDb::fresh(Backend::Postgres).await else {
        return;
    };
    let _guard = DbGuard(db.clone());
    let store = Store::connect(&StoreOptions::new(db.url.clone()))
        .await
        .expect("open the store");
    store.migrate().await.expect("migrate");
    let worker = |n: u32| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_consult"))
            .arg("serve")
            .env("ROLES", "workers")
            // Its probes on a port of its own: several workers run at once.
            .env("ADMIN_BIND", "127.0.0.1:0")
            .env("DATABASE_URL", &db.url)
            .env("DATA_DIR", db.data_dir.join(format!("worker-{n}")))
            .env("SUBSCRIPTION_LEASE", "2s")
            .env(
                "AUTH_JWT_SECRET",
                "worker-test-secret-that-is-long-enough-0",
            )
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start a worker process")
    };
    let mut workers = [worker(1), worker(2)];
    let pids: Vec<u32> = workers.iter().map(|w| w.id().expect("pid")).collect();

    // Commands stream in from this process while the workers project them; this process
    // announces them as an API process would.
    let (_stop_notifier, stopped) = watch::channel(false);
    {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .notify_appends(stopped, Duration::from_millis(2))
                .await
        });
    }
    const CONSULTATIONS: usize = 120;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..CONSULTATIONS {
                let id = uuid::Uuid::new_v4();
                let key = id.to_string();
                let at = Utc::now();
                command(
                    &store,
                    &key,
                    ConsultationCommand::Book {
                        booking: booking(id, n),
                        at,
                    },
                )
                .await;
                command(&store, &key, ConsultationCommand::Accept { at: Utc::now() }).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };

    assert!(
        eventually(Duration::from_secs(15), || async {
            let s = status(&store, "consultations").await;
            owner_pid(s.owner.as_deref()).is_some_and(|pid| pids.contains(&pid)) && s.applied > 0
        })
        .await,
        "one of the workers owns the projection and applies events"
    );
    let owner =
        owner_pid(status(&store, "consultations").await.owner.as_deref()).expect("an owner");
    // While both live, ownership does not move.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            owner_pid(status(&store, "consultations").await.owner.as_deref()),
            Some(owner)
        );
    }
    assert!(!writer.is_finished(), "the kill happens mid-stream");
    let (killed, survivor) = if pids[0] == owner { (0, 1) } else { (1, 0) };
    workers[killed].start_kill().expect("kill -9 the owner");
    let _ = workers[killed].wait().await;
    let killed_at = Instant::now();

    assert!(
        eventually(Duration::from_secs(10), || async {
            owner_pid(status(&store, "consultations").await.owner.as_deref())
                == Some(pids[survivor])
        })
        .await,
        "the survivor takes the projection over"
    );
    let takeover = killed_at.elapsed();
    assert!(
        takeover < Duration::from_secs(6),
        "takeover took {takeover:?}"
    );

    writer.await.expect("writer");
    let total = event_count(&store).await;
    assert_eq!(total, (CONSULTATIONS * 2) as i64);
    assert!(
        eventually(Duration::from_secs(20), || async {
            status(&store, "consultations").await.lag_events == 0
        })
        .await,
        "the survivor catches up"
    );
    let projection = status(&store, "consultations").await;
    assert_eq!(
        projection.applied, total,
        "every event applied exactly once"
    );
    assert_eq!(projection.failures, 0, "{:?}", projection.last_error);
    let rows = summaries(&store).await;
    assert_eq!(rows.len(), CONSULTATIONS);
    assert!(rows.iter().all(|row| row.4 == 2 && row.1 == "accepted"));

    // The model the two workers built equals one rebuilt from scratch by the survivor.
    rebuild_consultations(&store, total).await;
    assert_eq!(summaries(&store).await, rows);
    let survivor_alive = workers[survivor].try_wait().expect("status").is_none();
    assert!(survivor_alive, "the survivor is still running");
    store.close().await;
}

/// On PostgreSQL a rebuild replays into a copy of the table while reads keep the previous,
/// complete read model; reads are not told the projection is fresh until the copy, with every
/// index of the live table, has taken its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_builds_a_copy_and_swaps_it_in_whole() {
    let Some((store, _guard)) = open(Backend::Postgres).await else {
        return;
    };
    let consult_store::Db::Postgres(pool) = store.db().clone() else {
        unreachable!("a PostgreSQL store");
    };
    let (stop, task) = run(&store, vec![Arc::new(ConsultationsProjection)], "owner-a");
    const CONSULTATIONS: usize = 30;
    for n in 0..CONSULTATIONS {
        let id = uuid::Uuid::new_v4();
        let key = id.to_string();
        let booking = booking(id, n);
        command(
            &store,
            &key,
            ConsultationCommand::Book {
                booking,
                at: Utc::now(),
            },
        )
        .await;
        if n % 3 != 0 {
            command(&store, &key, ConsultationCommand::Accept { at: Utc::now() }).await;
        }
    }
    let total = event_count(&store).await;
    let head: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&pool)
        .await
        .expect("head");
    assert!(
        eventually(Duration::from_secs(20), || async {
            status(&store, "consultations").await.applied == total
        })
        .await,
        "the projection catches up"
    );
    let before = summaries(&store).await;
    assert_eq!(before.len(), CONSULTATIONS);
    let indexes = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'consultation_summaries' \
              ORDER BY indexname",
        )
        .fetch_all(&pool)
        .await
        .expect("indexes")
    };
    let indexes_before = indexes().await;
    assert_eq!(indexes_before.len(), 4, "{indexes_before:?}");

    // A reader inside a transaction holds the live table: the replay can run to its end but
    // cannot take the table's place until the reader is done.
    let mut reader = pool.begin().await.expect("reader");
    let rows_seen: i64 = sqlx::query_scalar("SELECT count(*) FROM consultation_summaries")
        .fetch_one(&mut *reader)
        .await
        .expect("read");
    assert_eq!(rows_seen, CONSULTATIONS as i64);
    store.request_reset("consultations").await.expect("reset");
    assert!(
        eventually(Duration::from_secs(20), || async {
            let s = status(&store, "consultations").await;
            !s.reset_pending && s.replaying && s.applied == total
        })
        .await,
        "the replay applies every event to the copy"
    );
    let copied: i64 = sqlx::query_scalar("SELECT count(*) FROM consultation_summaries_replay")
        .fetch_one(&mut *reader)
        .await
        .expect("the copy exists");
    assert_eq!(copied, CONSULTATIONS as i64);
    let served: i64 = sqlx::query_scalar("SELECT count(*) FROM consultation_summaries")
        .fetch_one(&mut *reader)
        .await
        .expect("read");
    assert_eq!(served, CONSULTATIONS as i64, "the live table stays whole");
    assert!(
        !store
            .subscription_reached("consultations", head)
            .await
            .expect("reached"),
        "reads are not told the projection is fresh while the copy is not in place"
    );
    reader.rollback().await.expect("release");

    assert!(
        eventually(Duration::from_secs(20), || async {
            !status(&store, "consultations").await.replaying
        })
        .await,
        "the copy takes the table's place"
    );
    assert!(store
        .subscription_reached("consultations", head)
        .await
        .expect("reached"));
    assert_eq!(
        summaries(&store).await,
        before,
        "the rebuilt model is the same"
    );
    assert_eq!(
        indexes().await,
        indexes_before,
        "every index is back under its name"
    );
    let copy: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('consultation_summaries_replay')::text")
            .fetch_one(&pool)
            .await
            .expect("regclass");
    assert_eq!(copy, None, "the copy is gone");

    // The swapped-in table goes on taking new events.
    let id = uuid::Uuid::new_v4();
    let key = id.to_string();
    let booking = booking(id, CONSULTATIONS);
    command(
        &store,
        &key,
        ConsultationCommand::Book {
            booking,
            at: Utc::now(),
        },
    )
    .await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            summaries(&store).await.len() == CONSULTATIONS + 1
        })
        .await,
        "a new booking reaches the rebuilt table"
    );
    let _ = stop.send(true);
    task.await.expect("runner stops");
    store.close().await;
}
