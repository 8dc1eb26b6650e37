//! What auditors rely on: a consultation's history as it was at any instant, with the hash
//! chain that seals it; an access log of every read of a consultation, refused ones included;
//! and tamper evidence — `Store::verify_chain` and `consult verify` name each edited, deleted
//! or unsealed event, and a replay of the sealer neither changes a hash nor launders an edit.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use consult_api::Role;
use consult_store::{Store, StoreOptions, VerifyReport};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{act, assert_problem, eventually, instant, spawn_app, Backend, TestApp};
use crate::on_both_backends;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn is_hash(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A GET with an explicit `X-Request-Id`.
async fn get_with_id(
    app: &TestApp,
    path: &str,
    token: &str,
    request_id: &str,
) -> reqwest::Response {
    app.client
        .get(format!("{}{path}", app.address))
        .bearer_auth(token)
        .header("x-request-id", request_id)
        .send()
        .await
        .expect("GET reaches the server")
}

/// The history as the auditor `aud-1` reads it; `query` is appended as is.
async fn history(app: &TestApp, id: &str, query: &str) -> reqwest::Response {
    app.get(
        &format!("/v1/consultations/{id}/history{query}"),
        &app.token(Role::Auditor, "aud-1"),
    )
    .await
}

async fn history_ok(app: &TestApp, id: &str, query: &str) -> Value {
    let response = history(app, id, query).await;
    assert_eq!(response.status(), StatusCode::OK, "history{query}");
    response.json().await.expect("json")
}

/// The whole history once it holds `count` events, all sealed.
async fn sealed_history(app: &TestApp, id: &str, count: usize) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = history_ok(app, id, "").await;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        if events.len() == count
            && events
                .iter()
                .all(|e| is_hash(&e["hash"]) && is_hash(&e["prev_hash"]))
        {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{count} sealed events expected: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the chain has sealed every event in the store.
async fn all_sealed(app: &TestApp) {
    let sealed = eventually(Duration::from_secs(10), || async {
        app.db
            .scalar("SELECT count(*) FROM events WHERE hash IS NULL")
            .await
            == 0
    })
    .await;
    assert!(sealed, "the chain seals every event");
}

async fn store(app: &TestApp) -> Store {
    Store::connect(&StoreOptions::new(app.db.url.clone()))
        .await
        .expect("open the store")
}

async fn verify(app: &TestApp) -> VerifyReport {
    let store = store(app).await;
    let mut calls = 0;
    let report = store.verify_chain(|_, _| calls += 1).await.expect("verify");
    store.close().await;
    assert!(calls >= 1, "progress is reported at the end");
    report
}

/// Runs one statement against the app's database; returns the rows it changed.
async fn exec(app: &TestApp, sql: &str) -> u64 {
    let store = store(app).await;
    let done = consult_store::with_pool!(store.db(), pool => {
        sqlx::query(sql).execute(pool).await.map(|r| r.rows_affected())
    });
    store.close().await;
    done.unwrap_or_else(|err| panic!("{sql}: {err}"))
}

/// `(aggregate_id, sequence, prev_hash, hash)` of every event, in stream order.
async fn seals(app: &TestApp) -> Vec<(String, i64, Option<String>, Option<String>)> {
    let store = store(app).await;
    let rows = consult_store::with_pool!(store.db(), pool => {
        sqlx::query_as(
            "SELECT aggregate_id, sequence, prev_hash, hash FROM events \
              ORDER BY aggregate_type, aggregate_id, sequence",
        )
        .fetch_all(pool)
        .await
    });
    store.close().await;
    rows.expect("read the seals")
}

/// `(aggregate_id, sequence)` of each break.
fn broken_at(report: &VerifyReport) -> BTreeSet<(String, i64)> {
    report
        .breaks
        .iter()
        .map(|b| (b.aggregate_id.clone(), b.sequence))
        .collect()
}

/// Adds `"tampered": true` to the payload of one event.
async fn tamper_payload(app: &TestApp, id: &str, sequence: i64) {
    let sql = match app.db.backend {
        Backend::Postgres => format!(
            "UPDATE events SET payload = jsonb_set(payload, '{{tampered}}', 'true') \
              WHERE aggregate_id = '{id}' AND sequence = {sequence}"
        ),
        Backend::Sqlite => format!(
            "UPDATE events SET payload = json_set(payload, '$.tampered', json('true')) \
              WHERE aggregate_id = '{id}' AND sequence = {sequence}"
        ),
    };
    assert_eq!(exec(app, &sql).await, 1, "one event edited");
}

async fn delete_event(app: &TestApp, id: &str, sequence: i64) {
    let sql = format!("DELETE FROM events WHERE aggregate_id = '{id}' AND sequence = {sequence}");
    assert_eq!(exec(app, &sql).await, 1, "one event deleted");
}

/// Moves the `chain` subscription back to the start and waits until it has gone through the
/// whole log again.
async fn replay_chain(app: &TestApp) {
    let total = app.db.event_count().await;
    let head = app.db.head_position().await;
    let rewound = exec(
        app,
        "UPDATE subscriptions SET position = 0, transaction_id = '0', applied = 0 \
          WHERE name = 'chain'",
    )
    .await;
    assert_eq!(rewound, 1, "the chain subscription exists");
    let replayed = eventually(Duration::from_secs(15), || async {
        app.db
            .scalar("SELECT applied FROM subscriptions WHERE name = 'chain'")
            .await
            == total
            && app
                .db
                .scalar("SELECT position FROM subscriptions WHERE name = 'chain'")
                .await
                == head
    })
    .await;
    assert!(replayed, "the chain went through all {total} events again");
}

/// `consult verify` on the app's database: (success, stdout).
async fn verify_binary(app: &TestApp) -> (bool, String) {
    let url = app.db.url.clone();
    let data_dir = std::env::temp_dir().join(format!("consult_verify_{}", uuid::Uuid::new_v4()));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_consult"))
            .arg("verify")
            .arg("--database-url")
            .arg(&url)
            .env("DATA_DIR", &data_dir)
            .env_remove("DATABASE_URL")
            .output()
    })
    .await
    .expect("join")
    .expect("run consult verify");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// A consultation booked by pat-1 and, 1.1 s later, accepted by prov-1: its history as of any
/// instant shows what had been recorded by then, each event with its actor and its seal, the
/// seals forming a chain from the genesis hash.
async fn history_as_of_shows_the_consultation_as_it_was(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 48).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = app
        .client
        .post(format!("{}/v1/consultations/{id}/accept", app.address))
        .bearer_auth(app.token(Role::Provider, "prov-1"))
        .header("x-request-id", "accept-req-1")
        .json(&json!({}))
        .send()
        .await
        .expect("accept");
    assert_eq!(response.status(), StatusCode::OK);

    let full = sealed_history(&app, &id, 2).await;
    assert_eq!(full["consultation_id"], id.as_str());
    assert!(full["as_of"].is_null());
    assert_eq!(full["state"]["status"], "accepted");
    assert_eq!(full["state"]["version"], 2);
    let events = full["events"].as_array().expect("events");
    let (first, second) = (&events[0], &events[1]);
    assert_eq!(first["sequence"], 1);
    assert_eq!(second["sequence"], 2);
    assert!(first["position"].as_i64() < second["position"].as_i64());
    assert_eq!(first["actor"], json!({"id": "pat-1", "role": "patient"}));
    assert_eq!(second["actor"], json!({"id": "prov-1", "role": "provider"}));
    assert_eq!(second["request_id"], "accept-req-1");
    for event in events {
        assert!(event["type"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(event["version"].as_str().is_some_and(|v| !v.is_empty()));
        assert!(event["correlation_id"].is_string(), "{event}");
        assert!(event["causation_id"].is_string(), "{event}");
        assert!(event["payload"].is_object(), "{event}");
    }
    // The chain: genesis, then each event's previous hash is the hash of the one before.
    assert_eq!(first["prev_hash"], GENESIS);
    assert_eq!(second["prev_hash"], first["hash"]);
    assert_ne!(first["hash"], second["hash"]);
    // The seals are the store's.
    let stored = seals(&app).await;
    let ours: Vec<_> = stored.iter().filter(|s| s.0 == id).collect();
    assert_eq!(ours.len(), 2);
    assert_eq!(ours[0].3.as_deref(), first["hash"].as_str());
    assert_eq!(ours[1].3.as_deref(), second["hash"].as_str());

    let booked = instant(&first["recorded_at"]);
    let accepted = instant(&second["recorded_at"]);
    assert!(
        accepted - booked >= chrono::Duration::milliseconds(1000),
        "{booked} then {accepted}"
    );
    // The provider heard of the request at booking; the patient of the acceptance later.
    let told = eventually(Duration::from_secs(10), || async {
        let body = history_ok(&app, &id, "").await;
        let kinds: BTreeSet<String> = body["side_effects"]["notifications"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["kind"].as_str().map(str::to_owned))
            .collect();
        kinds.contains("new_request") && kinds.contains("accepted")
    })
    .await;
    assert!(told, "both notifications are side effects of the history");

    // Between the two events: the booking only.
    let between = booked + (accepted - booked) / 2;
    let then = history_ok(&app, &id, &format!("?as_of={}", rfc3339(between))).await;
    assert_eq!(then["as_of"], rfc3339(between));
    let then_events = then["events"].as_array().expect("events");
    assert_eq!(then_events.len(), 1, "{then:#}");
    assert_eq!(then_events[0], *first, "the same event, seal and all");
    assert_eq!(then["state"]["status"], "requested");
    assert_eq!(then["state"]["version"], 1);
    let kinds: Vec<&str> = then["side_effects"]["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .filter_map(|n| n["kind"].as_str())
        .collect();
    assert!(
        !kinds.contains(&"accepted"),
        "nothing caused by the acceptance yet: {kinds:?}"
    );

    // The same instant written with another offset is the same instant.
    let paris = between.with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).expect("offset"));
    let same = history_ok(
        &app,
        &id,
        &format!(
            "?as_of={}",
            paris
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
                .replace('+', "%2B")
        ),
    )
    .await;
    assert_eq!(same["events"], then["events"]);

    // As of the instant an event shows, that event is in.
    let at_booking = history_ok(&app, &id, &format!("?as_of={}", rfc3339(booked))).await;
    assert_eq!(
        at_booking["events"].as_array().map(Vec::len),
        Some(1),
        "as_of = the first event's recorded_at includes it: {at_booking:#}"
    );
    let at_accept = history_ok(&app, &id, &format!("?as_of={}", rfc3339(accepted))).await;
    assert_eq!(at_accept["events"], full["events"]);
    assert_eq!(at_accept["state"]["status"], "accepted");

    // Before the first event: nothing was recorded yet.
    let before = history_ok(
        &app,
        &id,
        &format!("?as_of={}", rfc3339(booked - chrono::Duration::hours(1))),
    )
    .await;
    assert_eq!(before["events"], json!([]));
    assert_eq!(before["state"]["status"], "new");
    assert_eq!(before["state"]["version"], 0);
    for effect in ["notifications", "calls", "jobs"] {
        assert_eq!(before["side_effects"][effect], json!([]), "{effect}");
    }

    // After the last: all of it.
    let later = history_ok(
        &app,
        &id,
        &format!("?as_of={}", rfc3339(Utc::now() + chrono::Duration::days(1))),
    )
    .await;
    assert_eq!(later["events"], full["events"]);
    assert_eq!(later["state"]["status"], "accepted");

    // A bad instant names the parameter.
    for bad in ["yesterday", "2030-13-01T00:00:00Z", "2030-01-31", ""] {
        let body = assert_problem(
            history(&app, &id, &format!("?as_of={bad}")).await,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        )
        .await;
        assert_eq!(body["field"], "as_of", "{bad}: {body}");
    }
    // Unknown parameters and unknown consultations.
    assert_eq!(
        history(&app, &id, "?since=2030-01-01T00:00:00Z")
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_problem(
        history(&app, &uuid::Uuid::new_v4().to_string(), "").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_problem(
        history(&app, "not-a-uuid", "").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // Admins read it too; the parties and other callers do not.
    let admin = app
        .get(
            &format!("/v1/consultations/{id}/history"),
            &app.token(Role::Admin, "admin-1"),
        )
        .await;
    assert_eq!(admin.status(), StatusCode::OK);
    for (role, who) in [(Role::Patient, "pat-1"), (Role::Provider, "prov-1")] {
        assert_problem(
            app.get(
                &format!("/v1/consultations/{id}/history"),
                &app.token(role, who),
            )
            .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
}

/// The access log entries (newest first) for a query such as `?consultation_id=…`.
async fn access_log(app: &TestApp, query: &str) -> Vec<Value> {
    let response = app
        .get(
            &format!("/v1/admin/access-log{query}"),
            &app.token(Role::Auditor, "aud-1"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    body["items"].as_array().expect("items").clone()
}

fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("an X-Request-Id")
        .to_owned()
}

/// The entry of one request, by its id.
fn entry<'a>(log: &'a [Value], request_id: &str) -> &'a Value {
    let found: Vec<&Value> = log
        .iter()
        .filter(|e| e["request_id"] == request_id)
        .collect();
    assert_eq!(found.len(), 1, "one entry for {request_id}: {log:#?}");
    found[0]
}

fn assert_entry(entry: &Value, actor: &str, role: &str, action: &str, id: &str, outcome: u16) {
    assert_eq!(
        entry["actor"],
        json!({"id": actor, "role": role}),
        "{entry}"
    );
    assert_eq!(entry["action"], action, "{entry}");
    assert_eq!(entry["consultation_id"], id, "{entry}");
    assert_eq!(entry["outcome"], outcome, "{entry}");
    let at = instant(&entry["at"]);
    assert!((Utc::now() - at).num_seconds().abs() < 60, "{entry}");
}

/// Every read of a consultation — its summary, history and notifications — is logged with the
/// caller, the action, the outcome and the request id, refused reads too; only auditors and
/// admins read the log.
async fn every_read_of_a_consultation_is_in_the_access_log(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 48).await;
    let other = app.book("pat-2", "prov-1", 72).await;
    let auditor = app.token(Role::Auditor, "aud-1");
    let patient = app.token(Role::Patient, "pat-1");
    let provider = app.token(Role::Provider, "prov-1");
    assert!(
        access_log(&app, "").await.is_empty(),
        "booking is not a read"
    );

    // The auditor's history read, with the request id the server made up.
    let read = history(&app, &id, "").await;
    assert_eq!(read.status(), StatusCode::OK);
    let auditor_read = request_id(&read);
    // With the client's request id.
    let read = get_with_id(
        &app,
        &format!("/v1/consultations/{id}/history"),
        &auditor,
        "audit-req-1",
    )
    .await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(request_id(&read), "audit-req-1");
    // The patient may not read the history: refused, and logged.
    let refused = app
        .get(&format!("/v1/consultations/{id}/history"), &patient)
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let patient_history = request_id(&refused);
    // The patient's own consultation, and someone else's.
    let own = app.read(&format!("/v1/consultations/{id}"), &patient).await;
    assert_eq!(own.status(), StatusCode::OK);
    let patient_read = request_id(&own);
    let theirs = app
        .read(&format!("/v1/consultations/{other}"), &patient)
        .await;
    assert!(
        matches!(
            theirs.status(),
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
        ),
        "{}",
        theirs.status()
    );
    let patient_snoop = (request_id(&theirs), theirs.status().as_u16());
    // The provider's notifications read.
    let notes = app
        .get(&format!("/v1/consultations/{id}/notifications"), &provider)
        .await;
    assert_eq!(notes.status(), StatusCode::OK);
    let provider_notes = request_id(&notes);
    // Without a token.
    let anonymous = app
        .client
        .get(format!("{}/v1/consultations/{id}", app.address))
        .send()
        .await
        .expect("GET");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let anonymous = request_id(&anonymous);
    // Writes and lists are not reads of a consultation.
    act(&app, Role::Provider, "prov-1", &other, "accept", json!({})).await;
    let list = app.get("/v1/consultations", &patient).await;
    assert_eq!(list.status(), StatusCode::OK);
    let list = request_id(&list);

    let log = access_log(&app, "").await;
    assert_eq!(log.len(), 7, "{log:#?}");
    assert!(!log.iter().any(|e| e["request_id"] == list));
    assert_entry(
        entry(&log, &auditor_read),
        "aud-1",
        "auditor",
        "read_history",
        &id,
        200,
    );
    assert_entry(
        entry(&log, "audit-req-1"),
        "aud-1",
        "auditor",
        "read_history",
        &id,
        200,
    );
    assert_entry(
        entry(&log, &patient_history),
        "pat-1",
        "patient",
        "read_history",
        &id,
        403,
    );
    assert_entry(
        entry(&log, &patient_read),
        "pat-1",
        "patient",
        "read_consultation",
        &id,
        200,
    );
    assert_entry(
        entry(&log, &patient_snoop.0),
        "pat-1",
        "patient",
        "read_consultation",
        &other,
        patient_snoop.1,
    );
    assert_entry(
        entry(&log, &provider_notes),
        "prov-1",
        "provider",
        "read_notifications",
        &id,
        200,
    );
    assert_entry(
        entry(&log, &anonymous),
        "anonymous",
        "none",
        "read_consultation",
        &id,
        401,
    );
    // Newest first.
    let ids: Vec<i64> = log.iter().map(|e| e["id"].as_i64().expect("id")).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted);
    assert_eq!(log[0]["request_id"], anonymous.as_str());

    // Filters.
    let of_pat = access_log(&app, "?actor_id=pat-1").await;
    assert_eq!(of_pat.len(), 3);
    assert!(of_pat.iter().all(|e| e["actor"]["id"] == "pat-1"));
    let of_other = access_log(&app, &format!("?consultation_id={other}")).await;
    assert_eq!(of_other.len(), 1);
    assert_eq!(of_other[0]["request_id"], patient_snoop.0.as_str());
    let both = access_log(&app, &format!("?consultation_id={id}&actor_id=aud-1")).await;
    assert_eq!(both.len(), 2);
    assert!(access_log(&app, "?actor_id=nobody").await.is_empty());
    assert_eq!(
        app.get("/v1/admin/access-log?who=me", &auditor)
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );

    // A consultation read under another spelling of its id is logged under the id itself.
    let upper = app
        .read(
            &format!("/v1/consultations/{}", id.to_uppercase()),
            &patient,
        )
        .await;
    assert_eq!(upper.status(), StatusCode::OK);
    let upper = request_id(&upper);
    let simple = id.replace('-', "");
    let notes = app
        .get(
            &format!("/v1/consultations/{simple}/notifications"),
            &provider,
        )
        .await;
    assert_eq!(notes.status(), StatusCode::OK);
    let simple = request_id(&notes);
    // Percent-encoded: `{<id>}` with braces, which the handler decodes and accepts.
    let braced = app
        .get(&format!("/v1/consultations/%7B{id}%7D/history"), &auditor)
        .await;
    assert_eq!(braced.status(), StatusCode::OK);
    let braced = request_id(&braced);
    // HEAD runs the read and answers whether it was allowed: a read too.
    let head = app
        .client
        .head(format!("{}/v1/consultations/{other}", app.address))
        .bearer_auth(&patient)
        .send()
        .await
        .expect("HEAD");
    let head_status = head.status().as_u16();
    assert!(matches!(head_status, 403 | 404), "{head_status}");
    let head = request_id(&head);
    let log = access_log(&app, &format!("?consultation_id={id}")).await;
    assert_entry(
        entry(&log, &braced),
        "aud-1",
        "auditor",
        "read_history",
        &id,
        200,
    );
    let log_other = access_log(&app, &format!("?consultation_id={other}")).await;
    assert_entry(
        entry(&log_other, &head),
        "pat-1",
        "patient",
        "read_consultation",
        &other,
        head_status,
    );
    assert_entry(
        entry(&log, &upper),
        "pat-1",
        "patient",
        "read_consultation",
        &id,
        200,
    );
    assert_entry(
        entry(&log, &simple),
        "prov-1",
        "provider",
        "read_notifications",
        &id,
        200,
    );

    // Only auditors and admins read the log; reading it is not a consultation read.
    for (role, who) in [(Role::Patient, "pat-1"), (Role::Provider, "prov-1")] {
        assert_problem(
            app.get("/v1/admin/access-log", &app.token(role, who)).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    let admin = app
        .get("/v1/admin/access-log", &app.token(Role::Admin, "admin-1"))
        .await;
    assert_eq!(admin.status(), StatusCode::OK);
    let anonymous = app
        .client
        .get(format!("{}/v1/admin/access-log", app.address))
        .send()
        .await
        .expect("GET");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        access_log(&app, "").await.len(),
        11,
        "the log's own reads are not in it"
    );
}

/// No unlogged access: while the access log cannot be written, reads of a consultation are
/// refused (503, nothing of the consultation in the answer); other routes keep working.
async fn a_read_that_cannot_be_logged_is_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 48).await;
    let patient = app.token(Role::Patient, "pat-1");
    let own = app.read(&format!("/v1/consultations/{id}"), &patient).await;
    assert_eq!(own.status(), StatusCode::OK);

    exec(&app, "ALTER TABLE access_log RENAME TO access_log_away").await;
    for (path, token) in [
        (format!("/v1/consultations/{id}"), patient.clone()),
        (
            format!("/v1/consultations/{id}/history"),
            app.token(Role::Auditor, "aud-1"),
        ),
        (
            format!("/v1/consultations/{id}/notifications"),
            patient.clone(),
        ),
    ] {
        let body = assert_problem(
            app.get(&path, &token).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
        )
        .await;
        let text = body.to_string();
        assert!(
            !text.contains("prov-1") && !text.contains("follow-up"),
            "{path}: {text}"
        );
    }
    // Not a read of a consultation: served.
    let list = app.get("/v1/consultations", &patient).await;
    assert_eq!(list.status(), StatusCode::OK);

    exec(&app, "ALTER TABLE access_log_away RENAME TO access_log").await;
    let own = app.get(&format!("/v1/consultations/{id}"), &patient).await;
    assert_eq!(own.status(), StatusCode::OK);
    let log = access_log(&app, "").await;
    assert_eq!(log.len(), 2, "the refused reads left no entry: {log:#?}");
    assert!(log
        .iter()
        .all(|e| e["outcome"] == 200 && e["actor"]["id"] == "pat-1"));
}

/// Books consultations and takes each through its steps; returns their ids.
async fn busy_store(app: &TestApp) -> Vec<String> {
    app.register_provider("prov-1").await;
    let mut ids = Vec::new();
    for (n, patient) in ["pat-1", "pat-2", "pat-3", "pat-4"].iter().enumerate() {
        let hours = 48 + 24 * i64::try_from(n).expect("small");
        let id = app.book(patient, "prov-1", hours).await;
        act(app, Role::Provider, "prov-1", &id, "accept", json!({})).await;
        act(
            app,
            Role::Patient,
            patient,
            &id,
            "cancel",
            json!({"reason": "cannot make it"}),
        )
        .await;
        ids.push(id);
    }
    ids
}

/// Edits, deletions in the middle and at the end of a stream are each reported at their
/// stream and sequence, by the store and by `consult verify`, which passes an untouched store.
async fn tampering_is_reported_where_it_happened(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let ids = busy_store(&app).await;
    for id in &ids {
        assert_eq!(app.db.stream(id).await.len(), 3, "book, accept, cancel");
    }
    all_sealed(&app).await;
    let total = app.db.event_count().await;
    let streams = app
        .db
        .scalar("SELECT count(*) FROM (SELECT DISTINCT aggregate_type, aggregate_id FROM events) s")
        .await;

    let report = verify(&app).await;
    assert!(report.intact(), "{report:#?}");
    assert_eq!(report.events, u64::try_from(total).expect("count"));
    assert_eq!(report.streams, u64::try_from(streams).expect("count"));
    assert_eq!(report.unsealed, 0);
    let (ok, stdout) = verify_binary(&app).await;
    assert!(ok, "an untouched store passes: {stdout}");
    assert!(!stdout.contains("BROKEN"), "{stdout}");
    assert!(
        stdout.contains(&format!("{total} events in {streams} streams")),
        "{stdout}"
    );

    let (edited, gap, cut, untouched) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    tamper_payload(&app, edited, 2).await;
    let report = verify(&app).await;
    assert!(!report.intact());
    assert_eq!(
        broken_at(&report),
        BTreeSet::from([(edited.clone(), 2)]),
        "{report:#?}"
    );
    let problem = &report.breaks[0];
    assert_eq!(problem.aggregate_type, "consultation");
    assert!(problem.problem.contains("altered"), "{problem:?}");

    delete_event(&app, gap, 2).await;
    delete_event(&app, cut, 3).await;
    let report = verify(&app).await;
    assert_eq!(
        broken_at(&report),
        BTreeSet::from([(edited.clone(), 2), (gap.clone(), 3), (cut.clone(), 3)]),
        "{report:#?}"
    );
    assert!(report
        .breaks
        .iter()
        .filter(|b| &b.aggregate_id == gap)
        .any(|b| b.problem.contains("missing")));
    assert!(report
        .breaks
        .iter()
        .filter(|b| &b.aggregate_id == cut)
        .all(|b| b.problem.contains("missing")));
    assert!(!report.breaks.iter().any(|b| &b.aggregate_id == untouched));
    assert_eq!(report.events, u64::try_from(total - 2).expect("count"));

    let (ok, stdout) = verify_binary(&app).await;
    assert!(!ok, "a broken store fails: {stdout}");
    for (id, sequence) in [(edited, 2), (gap, 3), (cut, 3)] {
        assert!(
            stdout.contains(&format!("BROKEN consultation/{id} sequence {sequence}: ")),
            "{id} {sequence}: {stdout}"
        );
    }
    assert!(!stdout.contains(untouched.as_str()), "{stdout}");

    // A stream deleted whole is seen through its head.
    let deleted = exec(
        &app,
        &format!("DELETE FROM events WHERE aggregate_id = '{untouched}'"),
    )
    .await;
    assert_eq!(deleted, 3);
    let report = verify(&app).await;
    assert!(
        broken_at(&report).contains(&(untouched.clone(), 1)),
        "{report:#?}"
    );
}

/// Replaying the sealer from the start changes no hash and keeps the chain intact; after an
/// edit, or a hash wiped, a replay seals nothing again: the change is still reported.
async fn a_replay_keeps_the_chain_and_launders_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let ids = busy_store(&app).await;
    all_sealed(&app).await;
    let before = seals(&app).await;
    assert_eq!(
        i64::try_from(before.len()).expect("count"),
        app.db.event_count().await
    );
    assert!(before.iter().all(|s| s.2.is_some() && s.3.is_some()));

    replay_chain(&app).await;
    assert_eq!(seals(&app).await, before, "a replay changes no hash");
    let report = verify(&app).await;
    assert!(report.intact(), "{report:#?}");
    assert_eq!(report.unsealed, 0);

    tamper_payload(&app, &ids[0], 1).await;
    let wiped = exec(
        &app,
        &format!(
            "UPDATE events SET hash = NULL, prev_hash = NULL \
              WHERE aggregate_id = '{}' AND sequence = 2",
            ids[1]
        ),
    )
    .await;
    assert_eq!(wiped, 1);
    replay_chain(&app).await;
    let after = seals(&app).await;
    let edited = after
        .iter()
        .find(|s| s.0 == ids[0] && s.1 == 1)
        .expect("the edited event");
    let sealed = before
        .iter()
        .find(|s| s.0 == ids[0] && s.1 == 1)
        .expect("the edited event");
    assert_eq!(edited, sealed, "the edited event keeps its seal");
    let unsealed = after
        .iter()
        .find(|s| s.0 == ids[1] && s.1 == 2)
        .expect("the wiped event");
    assert!(unsealed.3.is_none(), "a replay does not seal it again");
    let report = verify(&app).await;
    assert_eq!(
        broken_at(&report),
        BTreeSet::from([
            (ids[0].clone(), 1),
            (ids[1].clone(), 2),
            (ids[1].clone(), 3)
        ]),
        "{report:#?}"
    );
    let (ok, stdout) = verify_binary(&app).await;
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains(&format!("BROKEN consultation/{} sequence 1: ", ids[0])),
        "{stdout}"
    );
}

on_both_backends!(
    history_as_of_shows_the_consultation_as_it_was,
    every_read_of_a_consultation_is_in_the_access_log,
    a_read_that_cannot_be_logged_is_refused,
    tampering_is_reported_where_it_happened,
    a_replay_keeps_the_chain_and_launders_nothing,
);
