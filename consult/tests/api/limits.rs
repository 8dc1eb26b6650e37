//! A patient's bookings are rate-limited (`BOOKING_LIMIT`: 429 with `Retry-After`). The flood
//! guard, which counts a recipient's messages per other party so that one patient's flood
//! cannot silence a provider for everyone else, is tested with the notifications.

use std::time::Duration;

use consult_api::Role;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{assert_problem, booking, spawn_app_with, Backend};
use crate::on_both_backends;

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

on_both_backends!(bookings_past_the_limit_are_refused_with_retry_after);
