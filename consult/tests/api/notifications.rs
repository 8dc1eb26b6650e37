//! Notifications through the whole engine: who is told what at each step, reminders that follow
//! reschedules and cancellations, and replays that send nothing twice. Messages go to the
//! outbox file (the embedded default) here; `channels.rs` covers Twilio and SMTP on loopback.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use consult_api::Role;
use consult_domain::{Consultation, ConsultationCommand, ConsultationError};
use consult_store::{Metadata, Store, StoreOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{act, eventually, spawn_app_with, Backend, TestApp};
use crate::on_both_backends;

/// The messages in the outbox file (which also records console video rooms).
fn outbox(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("an outbox line is JSON"))
        .filter(|line| line.get("notification_id").is_some())
        .collect()
}

/// `(recipient, kind, channel)` of the sent notifications.
fn sent(items: &[Value]) -> Vec<(String, String, String)> {
    let mut sent: Vec<(String, String, String)> = items
        .iter()
        .filter(|n| n["status"] == "sent")
        .map(|n| {
            (
                n["recipient_role"].as_str().unwrap_or_default().to_owned(),
                n["kind"].as_str().unwrap_or_default().to_owned(),
                n["channel"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    sent.sort();
    sent
}

fn triple(recipient: &str, kind: &str, channel: &str) -> (String, String, String) {
    (recipient.to_owned(), kind.to_owned(), channel.to_owned())
}

/// Runs a domain command straight on the store (payments have no endpoint yet).
async fn confirm_payment(app: &TestApp, id: &str) {
    let store = Store::connect(&StoreOptions::new(app.db.url.clone()))
        .await
        .expect("store");
    let metadata = Metadata {
        actor_id: "payments".into(),
        actor_role: "system".into(),
        correlation_id: id.into(),
        causation_id: id.into(),
        request_id: String::new(),
    };
    store
        .execute::<Consultation, ConsultationError, _>(id, &metadata, None, |c| {
            c.decide(ConsultationCommand::ConfirmPayment {
                payment_id: format!("pi_{id}"),
                amount_minor: 4500,
                currency: "EUR".into(),
                at: Utc::now(),
            })
        })
        .await
        .expect("payment recorded");
    store.close().await;
}

fn booking_at(provider: &str, start: DateTime<Utc>) -> Value {
    json!({
        "provider_id": provider,
        "starts_at": start.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "duration_minutes": 30,
        "mode": "video",
        "timezone": "Europe/Paris",
        "contact": {"phone": "+33612345678", "email": "patient@example.org", "whatsapp": false},
        "reason": "persistent migraine",
    })
}

async fn book_at(app: &TestApp, patient: &str, start: DateTime<Utc>) -> String {
    book_with(app, patient, "prov-1", start).await
}

async fn book_with(app: &TestApp, patient: &str, provider: &str, start: DateTime<Utc>) -> String {
    let response = app
        .post(
            "/v1/consultations",
            &app.token(Role::Patient, patient),
            &booking_at(provider, start),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.expect("json");
    body["id"].as_str().expect("id").to_owned()
}

/// Booked → accepted → paid → cancelled: each step tells the right party on each of their
/// channels, once; no text message or subject carries the reason for the visit; a replay of
/// the reactor and a projection rebuild send nothing new.
async fn every_step_tells_the_right_party_once(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        return;
    };
    let outbox_file = app.db.data_dir.join("outbox.jsonl");
    app.register_provider("prov-1").await;
    let id = book_at(&app, "pat-1", Utc::now() + chrono::Duration::days(3)).await;
    let mut expected = vec![
        triple("provider", "new_request", "email"),
        triple("provider", "new_request", "sms"),
    ];
    let check = |expected: Vec<(String, String, String)>| {
        let app = &app;
        let id = id.clone();
        async move {
            let mut expected = expected;
            expected.sort();
            eventually(Duration::from_secs(10), || async {
                sent(&app.notifications(&id).await) == expected
            })
            .await
        }
    };
    assert!(
        check(expected.clone()).await,
        "the provider hears of the request"
    );

    act(&app, Role::Provider, "prov-1", &id, "accept", json!({})).await;
    expected.push(triple("patient", "accepted", "email"));
    expected.push(triple("patient", "accepted", "sms"));
    assert!(
        check(expected.clone()).await,
        "the patient hears of the acceptance"
    );

    confirm_payment(&app, &id).await;
    expected.push(triple("patient", "payment_receipt", "email"));
    expected.push(triple("patient", "payment_receipt", "sms"));
    assert!(check(expected.clone()).await, "the patient gets a receipt");

    act(
        &app,
        Role::Patient,
        "pat-1",
        &id,
        "cancel",
        json!({"reason": "cannot make it"}),
    )
    .await;
    for recipient in ["patient", "provider"] {
        for channel in ["email", "sms"] {
            expected.push(triple(recipient, "cancelled", channel));
        }
    }
    assert!(
        check(expected.clone()).await,
        "both hear of the cancellation"
    );

    let items = app.notifications(&id).await;
    for item in &items {
        let recipient = item["recipient"].as_str().expect("recipient");
        assert!(
            recipient.contains('*') && !recipient.contains("12345678"),
            "masked: {recipient}"
        );
        assert_eq!(item["attempts"], 1);
        assert!(item["sent_at"].is_string());
    }
    let lines = outbox(&outbox_file);
    assert_eq!(lines.len(), expected.len(), "one message per notification");
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for line in &lines {
        *per_id
            .entry(line["notification_id"].as_str().expect("id").to_owned())
            .or_default() += 1;
        let text = line["text"].as_str().expect("text");
        let subject = line["subject"].as_str().unwrap_or_default();
        assert!(
            !text.to_lowercase().contains("migraine") || line["channel"] == "email",
            "no medical detail in a text message: {text}"
        );
        assert!(!subject.to_lowercase().contains("migraine"), "{subject}");
        if line["channel"] == "email" {
            assert!(line["html"].as_str().is_some_and(|h| h.contains("<")));
        }
    }
    assert!(per_id.values().all(|n| *n == 1));

    // The reactor replays the whole log from the start, and the read model is rebuilt: every
    // job exists already, so nothing is sent again.
    let store = Store::connect(&StoreOptions::new(app.db.url.clone()))
        .await
        .expect("store");
    consult_store::with_pool!(store.db(), pool => {
        sqlx::query("UPDATE subscriptions SET position = 0, transaction_id = '0', applied = 0 WHERE name = 'notifications'")
            .execute(pool)
            .await
            .map(|_| ())
    })
    .expect("rewind the reactor");
    store.close().await;
    let admin = app.token(Role::Admin, "admin-1");
    let response = app
        .post(
            "/v1/admin/projections/consultations/rebuild",
            &admin,
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let response = app.get("/v1/admin/subscriptions", &admin).await;
            let body: Value = response.json().await.expect("json");
            body["subscriptions"]
                .as_array()
                .expect("subscriptions")
                .iter()
                .all(|s| s["state"] == "live" && s["applied_since_reset"].as_i64() > Some(0))
        })
        .await,
        "the replays finish"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        outbox(&outbox_file).len(),
        expected.len(),
        "nothing sent again"
    );
    assert_eq!(app.notifications(&id).await.len(), expected.len());

    // Job outcomes are on /metrics.
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let done = format!(
        "consult_jobs{{kind=\"notify\",status=\"done\"}} {}",
        expected.len()
    );
    assert!(text.lines().any(|line| line == done), "{done} in:\n{text}");
}

/// Reminders a few seconds apart: a confirmed consultation gets each reminder once on each
/// channel; a rescheduled one gets none for the old time and all for the new one; a cancelled
/// one gets none. A reminder whose time has passed when the reactor sees the confirmation is
/// skipped, and one that runs after the start sends nothing, so the times leave room for a busy
/// machine: 10 s from the booking to the first reminder, 5 s from the last one to the start.
async fn reminders_follow_reschedules_and_cancellations(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |config| {
        config.notifications.reminders =
            consult_reactors::parse_reminders("10s:email,5s:sms").expect("reminders");
    })
    .await
    else {
        return;
    };
    let outbox_file = app.db.data_dir.join("outbox.jsonl");
    // One provider each: their times overlap.
    for provider in ["prov-1", "prov-2", "prov-3"] {
        app.register_provider(provider).await;
    }
    let start = Utc::now() + chrono::Duration::seconds(20);
    let kept = book_with(&app, "pat-1", "prov-1", start).await;
    let moved = book_with(&app, "pat-2", "prov-2", start + chrono::Duration::hours(2)).await;
    let cancelled = book_with(&app, "pat-3", "prov-3", start + chrono::Duration::hours(4)).await;
    for (id, provider) in [
        (&kept, "prov-1"),
        (&moved, "prov-2"),
        (&cancelled, "prov-3"),
    ] {
        act(&app, Role::Provider, provider, id, "accept", json!({})).await;
        confirm_payment(&app, id).await;
    }
    // The moved one: its first reminder time is now far off; it moves to 20 s from now.
    let new_start = Utc::now() + chrono::Duration::seconds(20);
    act(
        &app,
        Role::Patient,
        "pat-2",
        &moved,
        "reschedule",
        json!({"starts_at": new_start.format("%Y-%m-%dT%H:%M:%SZ").to_string()}),
    )
    .await;
    act(
        &app,
        Role::Patient,
        "pat-3",
        &cancelled,
        "cancel",
        json!({"reason": "no longer needed"}),
    )
    .await;

    let reminders = |items: Vec<Value>| -> Vec<(String, String)> {
        let mut r: Vec<(String, String)> = items
            .iter()
            .filter(|n| n["kind"] == "reminder" && n["status"] == "sent")
            .map(|n| {
                (
                    n["recipient_role"].as_str().unwrap_or_default().to_owned(),
                    n["channel"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        r.sort();
        r
    };
    let both = vec![
        ("patient".to_owned(), "email".to_owned()),
        ("patient".to_owned(), "sms".to_owned()),
        ("provider".to_owned(), "email".to_owned()),
        ("provider".to_owned(), "sms".to_owned()),
    ];
    assert!(
        eventually(Duration::from_secs(40), || async {
            reminders(app.notifications(&kept).await) == both
                && reminders(app.notifications(&moved).await) == both
        })
        .await,
        "each reminder arrives on each channel: kept {:?}, moved {:?}; timers {:#?}",
        reminders(app.notifications(&kept).await),
        reminders(app.notifications(&moved).await),
        timers(&app).await
    );
    // The old starts are hours away: their reminder timers must be cancelled, not pending.
    assert!(reminders(app.notifications(&cancelled).await).is_empty());
    let timers = |id: &str, status: &str| {
        format!("SELECT count(*) FROM jobs WHERE consultation_id = '{id}' AND kind = 'reminder' AND status = '{status}'")
    };
    assert_eq!(app.db.scalar(&timers(&moved, "cancelled")).await, 2);
    assert_eq!(app.db.scalar(&timers(&moved, "done")).await, 2);
    assert_eq!(app.db.scalar(&timers(&moved, "pending")).await, 0);
    assert_eq!(app.db.scalar(&timers(&cancelled, "cancelled")).await, 2);
    assert_eq!(app.db.scalar(&timers(&cancelled, "pending")).await, 0);
    let moved_items = app.notifications(&moved).await;
    assert_eq!(
        moved_items
            .iter()
            .filter(|n| n["kind"] == "reminder")
            .count(),
        4,
        "only the new time's reminders were queued"
    );
    let lines = outbox(&outbox_file);
    let final_ones: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["channel"] == "sms" && l["text"].as_str().is_some_and(|t| t.contains("/join"))
        })
        .collect();
    assert!(
        final_ones.len() >= 4,
        "the final reminder carries the meeting link"
    );
    let reminder_emails: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["channel"] == "email"
                && l["subject"]
                    .as_str()
                    .is_some_and(|s| s.to_lowercase().contains("reminder"))
        })
        .collect();
    assert!(!reminder_emails.is_empty(), "reminder emails went out");
    for email in reminder_emails {
        for part in ["text", "html"] {
            assert!(
                email[part].as_str().is_some_and(|t| t.contains("/join")),
                "the email reminder's {part} part carries the meeting link: {email}"
            );
        }
    }
    // Nothing more arrives later.
    let count = lines.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(outbox(&outbox_file).len(), count);
}

/// The flood guard: a recipient gets at most the configured number of messages about one other
/// party in its window (here one patient booking again and again); the rest are dead-lettered
/// unsent, visibly, with a reason an admin can act on. One patient's flood does not silence the
/// provider for another patient.
async fn a_flood_of_messages_to_one_recipient_is_stopped(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |config| {
        config.notifications.flood = consult_reactors::FloodGuard {
            limit: 2,
            window: Duration::from_secs(3600),
        };
    })
    .await
    else {
        return;
    };
    let outbox_file = app.db.data_dir.join("outbox.jsonl");
    app.register_provider("prov-1").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let start = Utc::now() + chrono::Duration::days(3 + n);
        ids.push(book_at(&app, "pat-1", start).await);
        // One at a time, so that the order of the sends is known.
        let id = ids.last().expect("id").clone();
        assert!(
            eventually(Duration::from_secs(10), || async {
                let items = app.notifications(&id).await;
                items.len() == 2 && items.iter().all(|n| n["status"] != "pending")
            })
            .await
        );
    }
    let last = app.notifications(&ids[2]).await;
    for item in &last {
        assert_eq!(item["status"], "dead", "{item}");
        let reason = item["last_error"].as_str().unwrap_or_default();
        assert!(
            reason.contains("flood guard") && reason.contains("dead letters"),
            "a reason an admin can act on: {reason}"
        );
    }
    for id in &ids[..2] {
        assert!(app
            .notifications(id)
            .await
            .iter()
            .all(|n| n["status"] == "sent"));
    }
    assert_eq!(
        outbox(&outbox_file).len(),
        4,
        "two messages per channel, no more"
    );
    assert_eq!(app.dead_letters().await.len(), 2);

    // Another patient's booking reaches the provider all the same.
    let other = book_at(&app, "pat-2", Utc::now() + chrono::Duration::days(7)).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let items = app.notifications(&other).await;
            !items.is_empty() && items.iter().all(|n| n["status"] != "pending")
        })
        .await
    );
    let heard = app.notifications(&other).await;
    assert!(
        heard
            .iter()
            .all(|n| n["recipient_role"] == "provider" && n["status"] == "sent"),
        "the provider hears of another patient's booking: {heard:?}"
    );
}

/// Deadlines: a request not accepted within `ACCEPT_DEADLINE` expires, and an accepted but
/// unpaid consultation expires at its start; each time the patient is told.
async fn deadlines_expire_unaccepted_and_unpaid_consultations(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |config| {
        config.notifications.accept_deadline = Duration::from_secs(2);
    })
    .await
    else {
        return;
    };
    app.register_provider("prov-1").await;
    app.register_provider("prov-2").await;
    let unaccepted = book_at(&app, "pat-1", Utc::now() + chrono::Duration::days(2)).await;
    let unpaid = book_with(
        &app,
        "pat-2",
        "prov-2",
        Utc::now() + chrono::Duration::seconds(4),
    )
    .await;
    act(&app, Role::Provider, "prov-2", &unpaid, "accept", json!({})).await;
    let admin = app.token(Role::Admin, "admin-1");
    let status = |id: String| {
        let app = &app;
        let admin = admin.clone();
        async move {
            let body: Value = app
                .get(&format!("/v1/consultations/{id}"), &admin)
                .await
                .json()
                .await
                .expect("json");
            body["status"].as_str().unwrap_or_default().to_owned()
        }
    };
    assert!(
        eventually(Duration::from_secs(15), || async {
            status(unaccepted.clone()).await == "expired"
                && status(unpaid.clone()).await == "expired"
        })
        .await,
        "both expire: {} and {}",
        status(unaccepted.clone()).await,
        status(unpaid.clone()).await
    );
    for id in [&unaccepted, &unpaid] {
        assert!(
            eventually(Duration::from_secs(10), || async {
                sent(&app.notifications(id).await)
                    .into_iter()
                    .filter(|(_, kind, _)| kind == "expired")
                    .collect::<Vec<_>>()
                    == vec![
                        triple("patient", "expired", "email"),
                        triple("patient", "expired", "sms"),
                    ]
            })
            .await,
            "the patient is told"
        );
    }
}

/// Whether both reactors are live and have handled every event committed so far.
async fn reactors_caught_up(app: &TestApp, admin: &str) -> bool {
    let body: Value = app
        .get("/v1/admin/subscriptions", admin)
        .await
        .json()
        .await
        .expect("json");
    let reactors: Vec<&Value> = body["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .filter(|s| s["name"] == "notifications" || s["name"] == "rooms")
        .collect();
    reactors.len() == 2
        && reactors
            .iter()
            .all(|s| s["state"] == "live" && s["lag_events"] == 0)
}

/// Every timer (reminders, deadlines, room jobs) as `key status`, by key.
async fn timers(app: &TestApp) -> Vec<String> {
    let store = Store::connect(&StoreOptions::new(app.db.url.clone()))
        .await
        .expect("store");
    let rows = consult_store::with_pool!(store.db(), pool => {
        sqlx::query_scalar::<_, String>(
            "SELECT key || ' ' || status FROM jobs \
              WHERE kind IN ('reminder', 'deadline', 'room') ORDER BY key",
        )
        .fetch_all(pool)
        .await
    })
    .expect("read the timers");
    store.close().await;
    rows
}

/// A replay of the reactors (their checkpoints back to 0) leaves every timer as it was: the
/// moved consultation keeps its new reminders, deadlines and room timers, and nothing that was
/// cancelled comes back.
async fn a_replay_of_the_reactors_keeps_the_timers(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        return;
    };
    app.register_provider("prov-1").await;
    app.register_provider("prov-2").await;
    let start = Utc::now() + chrono::Duration::days(3);
    let moved = book_with(&app, "pat-1", "prov-1", start).await;
    act(&app, Role::Provider, "prov-1", &moved, "accept", json!({})).await;
    confirm_payment(&app, &moved).await;
    let new_start = start + chrono::Duration::days(1);
    act(
        &app,
        Role::Patient,
        "pat-1",
        &moved,
        "reschedule",
        json!({"starts_at": new_start.format("%Y-%m-%dT%H:%M:%SZ").to_string()}),
    )
    .await;
    // Accepted but unpaid: a payment deadline is pending.
    let unpaid = book_with(&app, "pat-2", "prov-2", start).await;
    act(&app, Role::Provider, "prov-2", &unpaid, "accept", json!({})).await;

    let count = |status: &'static str, kind: &'static str| {
        let db = &app.db;
        async move {
            db.scalar(&format!(
                "SELECT count(*) FROM jobs WHERE status = '{status}' AND kind = '{kind}'"
            ))
            .await
        }
    };
    let admin = app.token(Role::Admin, "admin-1");
    // Reminders: 3 for the new start (the old 3 cancelled); a deadline for the unpaid one;
    // the room's close timer for the new slot (the console provider's rooms are made at once,
    // and its `RoomProvisioned` is written before the creation job is done). The counts alone
    // do not show that the first pass is over: the unpaid one's acceptance swaps its accept
    // deadline for a payment deadline, one pending deadline before and after. So the reactors
    // must also have handled every event, checked after the counts. And no timer may be due
    // or running: the new room's creation job runs at once, and a snapshot taken while it is
    // `running` would differ from one taken after it is `done` for reasons other than the
    // replay (its `RoomProvisioned` is written before the job is marked done, so the reactors'
    // check after this one covers that event too).
    let settled = eventually(Duration::from_secs(60), || async {
        count("pending", "reminder").await == 3
            && count("pending", "deadline").await == 1
            && count("pending", "room").await == 1
            && app
                .db
                .scalar(&format!(
                    "SELECT count(*) FROM jobs WHERE kind IN ('reminder', 'deadline', 'room') \
                       AND (status = 'running' OR (status = 'pending' AND due_at_ms <= {}))",
                    Utc::now().timestamp_millis()
                ))
                .await
                == 0
            && reactors_caught_up(&app, &admin).await
    })
    .await;
    assert!(settled, "the timers are queued");
    let timers_before = timers(&app).await;
    assert!(
        timers_before
            .iter()
            .any(|t| t.starts_with(&format!("deadline:{unpaid}:"))
                && t.contains(":payment:")
                && t.ends_with(" pending")),
        "the unpaid one's payment deadline is pending: {timers_before:#?}"
    );
    let before: Vec<i64> = vec![
        count("cancelled", "reminder").await,
        count("cancelled", "deadline").await,
        count("cancelled", "room").await,
    ];
    // The old start's reminders; both of the moved one's deadlines and the unpaid one's
    // accept deadline. (How many room jobs the move cancelled depends on whether the old
    // room was made before it.)
    assert_eq!(
        before[..2],
        [3, 3],
        "cancelled before the replay: {timers_before:#?}"
    );

    let store = Store::connect(&StoreOptions::new(app.db.url.clone()))
        .await
        .expect("store");
    consult_store::with_pool!(store.db(), pool => {
        sqlx::query("UPDATE subscriptions SET position = 0, transaction_id = '0', applied = 0 \
                     WHERE name IN ('notifications', 'rooms')")
            .execute(pool)
            .await
            .map(|_| ())
    })
    .expect("rewind the reactors");
    store.close().await;
    let replayed = eventually(Duration::from_secs(60), || async {
        let body: Value = app
            .get("/v1/admin/subscriptions", &admin)
            .await
            .json()
            .await
            .expect("json");
        let reset = body["subscriptions"]
            .as_array()
            .expect("subscriptions")
            .iter()
            .filter(|s| s["name"] == "notifications" || s["name"] == "rooms")
            .all(|s| s["applied_since_reset"].as_i64() > Some(0));
        reset && reactors_caught_up(&app, &admin).await
    })
    .await;
    assert!(replayed, "both reactors replayed the log");
    assert_eq!(count("pending", "reminder").await, 3, "reminders kept");
    assert_eq!(count("pending", "deadline").await, 1, "deadline kept");
    assert_eq!(count("pending", "room").await, 1, "room timer kept");
    let after: Vec<i64> = vec![
        count("cancelled", "reminder").await,
        count("cancelled", "deadline").await,
        count("cancelled", "room").await,
    ];
    assert_eq!(before, after, "nothing more cancelled");
    assert_eq!(
        timers_before,
        timers(&app).await,
        "the replay queued, replaced and cancelled nothing"
    );
}

on_both_backends!(
    a_replay_of_the_reactors_keeps_the_timers,
    a_flood_of_messages_to_one_recipient_is_stopped,
    deadlines_expire_unaccepted_and_unpaid_consultations,
    every_step_tells_the_right_party_once,
    reminders_follow_reschedules_and_cancellations,
);
