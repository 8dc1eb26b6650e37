//! Limits that keep one party from drowning the others: a patient's bookings are rate-limited
//! (429 with `Retry-After`), and the flood guard counts a recipient's messages per other party,
//! so one patient's flood cannot silence a provider for everyone else.

use std::time::Duration;

use consult_api::Role;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{assert_problem, booking, eventually, spawn_app_with, Backend, TestApp};
use crate::on_both_backends;

/// Whether every notification of `id` is finished, one way or the other.
async fn settled(app: &TestApp, id: &str) -> bool {
    let items = app.notifications(id).await;
    !items.is_empty() && items.iter().all(|n| n["status"] != "pending")
}

async fn bookings_past_the_limit_are_refused_with_retry_after(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |config| {
        config.notifications.booking_limit = consult_api::RateLimit {
            limit: 3,
            window: Duration::from_secs(3600),
        };
    })
    .await
    else {
        return;
    };
    app.register_provider("prov-1").await;
    let patient = app.token(Role::Patient, "pat-1");
    for n in 0..3 {
        let response = app
            .post("/v1/consultations", &patient, &booking("prov-1", 30 + n))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "booking {n}");
    }
    let refused = app
        .post("/v1/consultations", &patient, &booking("prov-1", 40))
        .await;
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(
        (3500..=3600).contains(&retry_after),
        "the window's remaining time: {retry_after}"
    );
    assert_problem(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // Another patient is not held back, and their mistakes are not counted.
    let other = app.token(Role::Patient, "pat-2");
    for _ in 0..3 {
        let mut wrong = booking("prov-1", 50);
        wrong["duration_minutes"] = Value::from(-5);
        let response = app.post("/v1/consultations", &other, &wrong).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let response = app
        .post("/v1/consultations", &other, &booking("prov-1", 50))
        .await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "another patient books"
    );
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM events WHERE event_type = 'Booked'")
            .await,
        4,
        "the refused booking wrote nothing"
    );
}

/// One patient booking again and again uses up only their own allowance of the provider's
/// messages: the provider still hears of another patient's booking, and the dropped notices
/// are in the log with a reason an admin can act on.
async fn one_patient_cannot_silence_a_provider(backend: Backend) {
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
    app.register_provider("prov-1").await;
    let mut flood = Vec::new();
    for n in 0..3 {
        let id = app.book("pat-flood", "prov-1", 30 + n).await;
        // One at a time, so that the order of the sends is known.
        assert!(eventually(Duration::from_secs(10), || settled(&app, &id)).await);
        flood.push(id);
    }
    let provider_items = |items: Vec<Value>| -> Vec<Value> {
        items
            .into_iter()
            .filter(|n| n["recipient_role"] == "provider")
            .collect()
    };
    let dropped = provider_items(app.notifications(&flood[2]).await);
    assert!(!dropped.is_empty());
    for item in &dropped {
        assert_eq!(item["status"], "dead", "{item}");
        let reason = item["last_error"].as_str().unwrap_or_default();
        assert!(
            reason.contains("flood guard") && reason.contains("dead letters"),
            "a reason an admin can act on: {reason}"
        );
    }

    let other = app.book("pat-other", "prov-1", 40).await;
    assert!(eventually(Duration::from_secs(10), || settled(&app, &other)).await);
    let heard = provider_items(app.notifications(&other).await);
    assert!(!heard.is_empty());
    assert!(
        heard.iter().all(|n| n["status"] == "sent"),
        "the provider hears of another patient's booking: {heard:?}"
    );
}

on_both_backends!(
    bookings_past_the_limit_are_refused_with_retry_after,
    one_patient_cannot_silence_a_provider,
);
