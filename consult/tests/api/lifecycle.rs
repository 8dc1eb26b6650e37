use consult_api::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, booking, spawn_app, Backend};
use crate::on_both_backends;

on_both_backends!(
    book_accept_reschedule_cancel_walks_the_whole_path,
    a_declined_request_cannot_be_accepted,
    restarting_the_process_loses_nothing,
    the_same_idempotency_key_replays_the_first_response,
    a_retried_booking_whose_answer_was_lost_is_not_booked_twice,
    a_stale_if_match_is_refused_with_412,
    health_and_readiness_answer,
    providers_are_registered_once_and_read_back,
);

async fn book_accept_reschedule_cancel_walks_the_whole_path(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let patient = app.token(Role::Patient, "pat-1");
    let provider = app.token(Role::Provider, "prov-1");

    let response = app
        .post("/v1/consultations", &patient, &booking("prov-1", 48))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("a Location header")
        .to_owned();
    let booked: Value = response.json().await.expect("json");
    let id = booked["id"].as_str().expect("id").to_owned();
    assert_eq!(location, format!("/v1/consultations/{id}"));
    assert_eq!(booked["status"], "requested");
    assert_eq!(booked["version"], 1);
    assert!(booked["position"].as_i64().is_some_and(|p| p > 0));

    let accepted: Value = app
        .post(
            &format!("/v1/consultations/{id}/accept"),
            &provider,
            &json!({}),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(accepted["status"], "accepted", "{accepted}");
    assert_eq!(accepted["version"], 2);
    assert!(accepted["position"].as_i64() > booked["position"].as_i64());

    let new_start = (chrono::Utc::now() + chrono::Duration::hours(72))
        .format("%Y-%m-%dT%H:00:00Z")
        .to_string();
    let rescheduled: Value = app
        .post(
            &format!("/v1/consultations/{id}/reschedule"),
            &patient,
            &json!({"starts_at": new_start, "duration_minutes": 45}),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(rescheduled["status"], "accepted", "{rescheduled}");
    assert_eq!(rescheduled["version"], 3);

    let read: Value = app
        .read(&format!("/v1/consultations/{id}"), &provider)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(read["status"], "accepted");
    assert_eq!(read["payment_status"], "unpaid");
    assert_eq!(read["patient_id"], "pat-1");
    assert_eq!(read["provider_id"], "prov-1");
    assert_eq!(read["mode"], "video");
    assert_eq!(read["timezone"], "Europe/Paris");
    assert_eq!(read["duration_minutes"], 45);
    assert_eq!(read["version"], 3);
    let starts_at =
        chrono::DateTime::parse_from_rfc3339(read["starts_at"].as_str().expect("start"))
            .expect("rfc3339");
    let ends_at = chrono::DateTime::parse_from_rfc3339(read["ends_at"].as_str().expect("end"))
        .expect("rfc3339");
    let expected_start = chrono::DateTime::parse_from_rfc3339(&new_start).expect("rfc3339");
    assert_eq!(starts_at, expected_start);
    assert_eq!((ends_at - starts_at).num_minutes(), 45);

    let cancelled = app
        .post(
            &format!("/v1/consultations/{id}/cancel"),
            &patient,
            &json!({"reason": "feeling better"}),
        )
        .await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    let cancelled: Value = cancelled.json().await.expect("json");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["version"], 4);

    let types: Vec<String> = app
        .db
        .stream(&id)
        .await
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(types, ["Booked", "Accepted", "Rescheduled", "Cancelled"]);
}

async fn a_declined_request_cannot_be_accepted(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 24).await;
    let provider = app.token(Role::Provider, "prov-1");
    let declined: Value = app
        .post(
            &format!("/v1/consultations/{id}/decline"),
            &provider,
            &json!({"reason": "fully booked"}),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(declined["status"], "declined");
    let body = assert_problem(
        app.post(
            &format!("/v1/consultations/{id}/accept"),
            &provider,
            &json!({}),
        )
        .await,
        StatusCode::CONFLICT,
        "invalid_transition",
    )
    .await;
    assert_eq!(
        body["detail"],
        "cannot accept a consultation that is declined"
    );
    // Completing before the start is refused too, naming the rule.
    let body = assert_problem(
        app.post(
            &format!("/v1/consultations/{id}/complete"),
            &provider,
            &json!({}),
        )
        .await,
        StatusCode::CONFLICT,
        "invalid_transition",
    )
    .await;
    assert_eq!(
        body["detail"],
        "cannot complete a consultation that is declined"
    );
    assert_eq!(app.db.stream(&id).await.len(), 2);
}

async fn restarting_the_process_loses_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let provider = app.token(Role::Provider, "prov-1");
    let mut ids = Vec::new();
    for hours in [24, 26, 28] {
        let id = app.book("pat-1", "prov-1", hours).await;
        let accepted = app
            .post(
                &format!("/v1/consultations/{id}/accept"),
                &provider,
                &json!({}),
            )
            .await;
        assert_eq!(accepted.status(), StatusCode::OK);
        ids.push(id);
    }
    let mut before = Vec::new();
    for id in &ids {
        let body: Value = app
            .read(&format!("/v1/consultations/{id}"), &provider)
            .await
            .json()
            .await
            .expect("json");
        before.push(body);
    }

    let app = app.restart().await;
    let provider = app.token(Role::Provider, "prov-1");
    for (id, expected) in ids.iter().zip(&before) {
        let after: Value = app
            .read(&format!("/v1/consultations/{id}"), &provider)
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(&after, expected);
        assert_eq!(after["status"], "accepted");
    }
    // The slot rule survives the restart as well: the provider's 24 h slot is still taken.
    let overlapping = app.book("pat-2", "prov-1", 24).await;
    assert_problem(
        app.post(
            &format!("/v1/consultations/{overlapping}/accept"),
            &provider,
            &json!({}),
        )
        .await,
        StatusCode::CONFLICT,
        "slot_conflict",
    )
    .await;
}

async fn the_same_idempotency_key_replays_the_first_response(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let patient = app.token(Role::Patient, "pat-1");
    let body = booking("prov-1", 30);
    let send = |body: Value| {
        let request = app
            .client
            .post(format!("{}/v1/consultations", app.address))
            .bearer_auth(&patient)
            .header("Idempotency-Key", "book-once-1")
            .json(&body);
        async move { request.send().await.expect("reaches the server") }
    };
    let first = send(body.clone()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.expect("json");
    let second = send(body.clone()).await;
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(
        second
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let second: Value = second.json().await.expect("json");
    assert_eq!(first, second);
    // One booking only, not two.
    assert_eq!(
        app.db.event_count().await,
        2,
        "provider registration + one booking"
    );

    let mut other = body;
    other["duration_minutes"] = json!(45);
    assert_problem(
        send(other).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_mismatch",
    )
    .await;
    assert_eq!(app.db.event_count().await, 2);
}

/// An outage can lose a booking's answer after its commit, and with it the answer stored under
/// its key (the key is released or taken over). The patient's retry with the same key then
/// runs again: it must find the booking it made, not make a second one.
async fn a_retried_booking_whose_answer_was_lost_is_not_booked_twice(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let patient = app.token(Role::Patient, "pat-1");
    let body = booking("prov-1", 30);
    let send = |key: &'static str, token: String| {
        let request = app
            .client
            .post(format!("{}/v1/consultations", app.address))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&body);
        async move { request.send().await.expect("reaches the server") }
    };
    let first = send("book-lost-1", patient.clone()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.expect("json");
    // What an outage leaves: the stored answer is gone.
    assert_eq!(
        app.db
            .scalar("DELETE FROM idempotency_keys WHERE key = 'book-lost-1' RETURNING CAST(1 AS BIGINT)")
            .await,
        1
    );
    let retry = send("book-lost-1", patient.clone()).await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    let retry: Value = retry.json().await.expect("json");
    assert_eq!(
        retry["id"], first["id"],
        "the retry answers with the same booking"
    );
    assert_eq!(retry["status"], "requested");
    assert_eq!(
        app.db.event_count().await,
        2,
        "provider registration + one booking, not two"
    );
    // Another patient with the same key books a consultation of their own.
    let other = send("book-lost-1", app.token(Role::Patient, "pat-2")).await;
    assert_eq!(other.status(), StatusCode::CREATED);
    let other: Value = other.json().await.expect("json");
    assert_ne!(other["id"], first["id"]);
    assert_eq!(app.db.event_count().await, 3);
}

async fn a_stale_if_match_is_refused_with_412(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 24).await;
    let provider = app.token(Role::Provider, "prov-1");
    let stale = app
        .client
        .post(format!("{}/v1/consultations/{id}/accept", app.address))
        .bearer_auth(&provider)
        .header("If-Match", "\"7\"")
        .send()
        .await
        .expect("reaches the server");
    assert_problem(
        stale,
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
    )
    .await;
    let current = app
        .client
        .post(format!("{}/v1/consultations/{id}/accept", app.address))
        .bearer_auth(&provider)
        .header("If-Match", "1")
        .send()
        .await
        .expect("reaches the server");
    assert_eq!(current.status(), StatusCode::OK);
}

async fn health_and_readiness_answer(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .expect("reaches the server");
    assert_eq!(health.status(), StatusCode::OK);
    let ready: Value = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .expect("reaches the server")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["status"], "ready");
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(ready["backend"], expected);
}

async fn providers_are_registered_once_and_read_back(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let admin = app.token(Role::Admin, "admin-1");
    let again = app
        .post(
            "/v1/providers",
            &admin,
            &json!({"id": "prov-1", "name": "X", "phone": "+14155550100",
                    "email": "x@example.org", "timezone": "UTC",
                    "fee": {"amount_minor": 4500, "currency": "EUR"}}),
        )
        .await;
    assert_problem(again, StatusCode::CONFLICT, "already_exists").await;

    let own: Value = app
        .get("/v1/providers/prov-1", &app.token(Role::Provider, "prov-1"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(own["phone"], "+14155550100");
    assert_eq!(own["timezone"], "America/New_York");
    // A patient sees the name and time zone, not the provider's contact details.
    let public: Value = app
        .get("/v1/providers/prov-1", &app.token(Role::Patient, "pat-1"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(public["name"], "Dr. Grace Hopper");
    assert_eq!(
        public["fee"],
        json!({"amount_minor": 4500, "currency": "EUR"}),
        "everyone sees the fee"
    );
    assert!(public.get("phone").is_none());
    assert_problem(
        app.get("/v1/providers/nobody", &admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // Only an admin registers providers.
    assert_problem(
        app.post(
            "/v1/providers",
            &app.token(Role::Provider, "prov-2"),
            &json!({"id": "prov-2", "name": "Y", "phone": "+14155550101",
                    "email": "y@example.org", "timezone": "UTC",
                    "fee": {"amount_minor": 4500, "currency": "EUR"}}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}
