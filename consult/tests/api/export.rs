//! `consult export` streams the log in constant memory and its output round-trips through
//! `consult import`: measured on 100,000 events on PostgreSQL, with the peak resident memory of
//! the export process compared between a 10,000-event and a 100,000-event export. And an old
//! event shape in the store is read in the current one (the upcaster).

use std::process::{Command, Stdio};

use std::time::Duration;

use consult_api::Role;
use consult_domain::{Consultation, Status};
use consult_store::{Store, StoreOptions};
use serde_json::{json, Value};

use crate::helpers::{eventually, spawn_app, Backend, DbGuard, TestDb};
use crate::on_both_backends;

const EVENTS: i64 = 100_000;

/// Runs the binary and returns its stdout and its peak resident set size in KiB (the kernel's
/// high-water mark, sampled every 5 ms while it runs).
fn run(
    args: &[&str],
    url: &str,
    data_dir: &std::path::Path,
    stdin: Option<&std::path::Path>,
) -> (Vec<u8>, i64) {
    let out_path = data_dir.join(format!("out-{}.jsonl", uuid::Uuid::new_v4().simple()));
    let out = std::fs::File::create(&out_path).expect("output file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_consult"));
    command
        .args(args)
        .env("DATABASE_URL", url)
        .env("DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .stdout(out)
        .stderr(Stdio::null());
    if let Some(input) = stdin {
        command.stdin(std::fs::File::open(input).expect("input file"));
    }
    let mut child = command.spawn().expect("start consult");
    // The high-water mark of its resident memory, sampled until it exits.
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok());
            peak = peak.max(hwm.unwrap_or(0));
        }
        if let Some(status) = child.try_wait().expect("wait for consult") {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(status.success(), "consult {args:?} failed: {status}");
    let output = std::fs::read(&out_path).expect("read the output");
    (output, peak)
}

/// The lines without their `position` (an import gives new positions, in the same order).
fn without_positions(jsonl: &[u8]) -> Vec<Value> {
    std::str::from_utf8(jsonl)
        .expect("utf-8")
        .lines()
        .map(|line| {
            let mut value: Value = serde_json::from_str(line).expect("a JSON line");
            value.as_object_mut().expect("an object").remove("position");
            value
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_100000_events_streams_in_constant_memory_and_round_trips() {
    let Some(source) = TestDb::fresh(Backend::Postgres).await else {
        return;
    };
    let source = DbGuard(source);
    let Some(target) = TestDb::fresh(Backend::Postgres).await else {
        return;
    };
    let target = DbGuard(target);
    std::fs::create_dir_all(&source.0.data_dir).expect("data dir");
    let store = Store::connect(&StoreOptions::new(source.0.url.clone()))
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    // 10,000 streams of 10 events each, with payloads the size of a real booking.
    consult_store::with_pool!(store.db(), pool => {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                                 event_version, payload, metadata, prev_hash, hash) \
             SELECT 'consultation', 'c-' || (g / 10), (g % 10) + 1, 'Noted', '1.0', \
                    jsonb_build_object('Noted', jsonb_build_object( \
                        'text', repeat('x', 300), 'n', g, 'at', '2030-01-01T00:00:00Z')), \
                    jsonb_build_object('actor_id', 'pat-' || (g % 97), 'actor_role', 'patient'), \
                    NULL, CASE WHEN g % 2 = 0 THEN md5(g::text) || md5(g::text) END \
               FROM generate_series(0, $1 - 1) AS g",
        )
        .bind(EVENTS)
        .execute(pool)
        .await
        .map(|_| ())
    })
    .expect("seed the log");
    store.close().await;

    let dir = source.0.data_dir.clone();
    let (all, all_rss) = run(&["export"], &source.0.url, &dir, None);
    let (tail, tail_rss) = run(
        &["export", "--after-position", &(EVENTS - 10_000).to_string()],
        &source.0.url,
        &dir,
        None,
    );
    let all_lines = without_positions(&all);
    assert_eq!(all_lines.len() as i64, EVENTS, "every event exported");
    assert_eq!(
        without_positions(&tail).len(),
        10_000,
        "resumed after a position"
    );
    eprintln!(
        "export peak RSS: {all_rss} KiB for {EVENTS} events ({} MB written), {tail_rss} KiB for 10,000",
        all.len() / 1_000_000
    );
    // Ten times the events, not ten times the memory: the export streams.
    assert!(
        all_rss < tail_rss + 16 * 1024,
        "peak RSS grows with the export: {tail_rss} KiB → {all_rss} KiB"
    );
    assert!(all_rss < 128 * 1024, "peak RSS {all_rss} KiB");

    // Round trip: import into an empty store and export again.
    let file = dir.join("all.jsonl");
    std::fs::write(&file, &all).expect("write the export");
    std::fs::create_dir_all(&target.0.data_dir).expect("data dir");
    run(&["import"], &target.0.url, &target.0.data_dir, Some(&file));
    let (again, _) = run(&["export"], &target.0.url, &target.0.data_dir, None);
    assert_eq!(
        without_positions(&again),
        all_lines,
        "the import holds exactly what was exported"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&target.0.data_dir);
}

/// A `Cancelled` written at version 1.0 (before the refund policy) and still in the store is
/// read as version 2.0 by every reader: the write side, the read model, the reactors and the
/// auditors' history; the chain seals it as stored.
async fn a_version_1_event_in_the_store_is_read_as_version_2(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 48).await;
    let accept = app
        .post(
            &format!("/v1/consultations/{id}/accept"),
            &app.token(Role::Provider, "prov-1"),
            &json!({}),
        )
        .await;
    assert_eq!(accept.status(), reqwest::StatusCode::OK);
    let v1 =
        r#"{"Cancelled":{"by":"patient","reason":"No longer needed","at":"2030-01-05T12:00:00Z"}}"#;
    let cast = if backend == Backend::Postgres {
        "::jsonb"
    } else {
        ""
    };
    let store = Store::connect(&StoreOptions::new(app.db.url.clone()))
        .await
        .expect("store");
    let sql = format!(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
                             payload, metadata) \
         VALUES ('consultation', $1, 3, 'Cancelled', '1.0', $2{cast}, $3{cast})"
    );
    consult_store::with_pool!(store.db(), pool => {
        sqlx::query(&sql)
            .bind(&id)
            .bind(v1)
            .bind(r#"{"actor_id":"pat-1","actor_role":"patient"}"#)
            .execute(pool)
            .await
            .map(|_| ())
    })
    .expect("a version 1.0 event");
    // The write side.
    let loaded = store
        .load::<Consultation>(&id)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(loaded.aggregate.status, Status::Cancelled);
    store.close().await;
    // The read model.
    let admin = app.token(Role::Admin, "admin-1");
    let projected = eventually(Duration::from_secs(10), || async {
        let body: Value = app
            .get(&format!("/v1/consultations/{id}"), &admin)
            .await
            .json()
            .await
            .expect("json");
        body["status"] == "cancelled"
    })
    .await;
    assert!(projected, "the read model folded the old event");
    // The auditors' history, with the event as stored.
    let history: Value = app
        .get(&format!("/v1/consultations/{id}/history"), &admin)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(history["state"]["status"], "cancelled");
    assert_eq!(history["events"][2]["version"], "1.0");
    assert!(history["events"][2]["payload"]["Cancelled"]
        .get("refund")
        .is_none());
    // Sealed as stored: the chain verifies.
    let sealed = eventually(Duration::from_secs(10), || async {
        app.db
            .scalar("SELECT count(*) FROM events WHERE hash IS NULL")
            .await
            == 0
    })
    .await;
    assert!(sealed, "every event sealed");
    let store = Store::connect(&StoreOptions::new(app.db.url.clone()))
        .await
        .expect("store");
    let report = store.verify_chain(|_, _| {}).await.expect("verify");
    store.close().await;
    assert!(report.intact(), "{:?}", report.breaks);
}

on_both_backends!(a_version_1_event_in_the_store_is_read_as_version_2);

/// `GET /v1/consultations/{id}/fhir` answers an R4 Appointment to its participants (and
/// auditors), follows the lifecycle, and is logged.
async fn the_fhir_appointment_follows_the_consultation(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 48).await;
    let read = |who: (Role, &'static str)| {
        let app = &app;
        let id = id.clone();
        async move {
            app.get(
                &format!("/v1/consultations/{id}/fhir"),
                &app.token(who.0, who.1),
            )
            .await
        }
    };
    let response = read((Role::Patient, "pat-1")).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/fhir+json")
    );
    let appointment: Value = response.json().await.expect("json");
    assert_eq!(appointment["resourceType"], "Appointment");
    assert_eq!(appointment["id"], json!(id));
    assert_eq!(appointment["status"], "pending");
    assert!(appointment.get("cancelationReason").is_none());
    assert!(appointment["start"].is_string() && appointment["end"].is_string());
    assert_eq!(appointment["participant"].as_array().map(Vec::len), Some(2));
    let cancel = app
        .post(
            &format!("/v1/consultations/{id}/cancel"),
            &app.token(Role::Provider, "prov-1"),
            &json!({"reason": "unwell"}),
        )
        .await;
    assert_eq!(cancel.status(), reqwest::StatusCode::OK);
    let appointment: Value = read((Role::Auditor, "aud-1"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(appointment["status"], "cancelled");
    assert_eq!(
        appointment["cancelationReason"]["coding"][0]["code"], "prov",
        "{appointment}"
    );
    assert!(!appointment.to_string().contains("unwell"), "no free text");
    assert_eq!(
        read((Role::Patient, "pat-2")).await.status(),
        reqwest::StatusCode::FORBIDDEN
    );
    let log: Value = app
        .get(
            &format!("/v1/admin/access-log?consultation_id={id}"),
            &app.token(Role::Auditor, "aud-1"),
        )
        .await
        .json()
        .await
        .expect("json");
    let fhir_reads: Vec<i64> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "read_fhir")
        .filter_map(|e| e["outcome"].as_i64())
        .collect();
    assert_eq!(fhir_reads.len(), 3, "{log}");
    assert!(fhir_reads.contains(&403));
}

on_both_backends!(the_fhir_appointment_follows_the_consultation);

/// PostgreSQL's horizon of settled transactions is server-wide: a write transaction open in
/// another database (another client, another tenant) holds every event after it back. An
/// export waits for it to end instead of stopping at once before the first event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_waits_for_a_transaction_in_flight_elsewhere() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let Some(other) = TestDb::fresh(Backend::Postgres).await else {
        return;
    };
    let _other_guard = DbGuard(other.clone());
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&other.url)
        .await
        .expect("connect to the other database");
    let mut open = conn.begin().await.expect("begin");
    // A transaction id of its own, older than every event below, held until the commit.
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .expect("take a transaction id");
    app.register_provider("prov-1").await;
    app.book("pat-1", "prov-1", 30).await;
    let events = app.db.event_count().await;
    let url = app.db.url.clone();
    let dir = app.db.data_dir.clone();
    let export = tokio::task::spawn_blocking(move || run(&["export"], &url, &dir, None).0);
    // The other transaction stays open while the export starts and meets it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    open.commit().await.expect("commit");
    let exported = export.await.expect("export");
    assert_eq!(
        without_positions(&exported).len() as i64,
        events,
        "every event exported once the other transaction ended"
    );
}
