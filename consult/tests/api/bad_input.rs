use consult_api::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, booking, spawn_app, Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    invalid_bookings_are_refused_with_the_field_named_and_nothing_stored,
    malformed_and_oversized_bodies_are_refused,
    missing_expired_and_tampered_tokens_are_refused,
    callers_cannot_touch_consultations_that_are_not_theirs,
    unknown_consultations_and_routes_are_404,
    bad_query_strings_of_audit_and_payment_reads_are_problems,
    undecodable_path_parameters_are_404_problems,
    oversized_webhook_bodies_are_413_problems,
    nul_characters_in_paths_and_queries_are_client_errors,
    slots_the_database_cannot_store_are_refused_and_leap_seconds_normalised,
    addresses_the_mailer_would_refuse_are_refused_at_the_door,
    unknown_currencies_and_dotted_provider_ids_are_refused,
    nul_characters_in_cursors_and_signed_webhooks_are_client_errors,
);

/// Changes a valid booking into an invalid one.
type Edit = Box<dyn Fn(&mut Value)>;

/// Posts a booking and checks the refusal and that nothing was stored.
async fn refused_booking(app: &TestApp, body: Value, status: StatusCode, code: &str) -> Value {
    let before = app.db.event_count().await;
    let response = app
        .post(
            "/v1/consultations",
            &app.token(Role::Patient, "pat-1"),
            &body,
        )
        .await;
    let problem = assert_problem(response, status, code).await;
    assert_eq!(
        app.db.event_count().await,
        before,
        "nothing stored for {body}"
    );
    problem
}

async fn invalid_bookings_are_refused_with_the_field_named_and_nothing_stored(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;

    let cases: Vec<(&str, Edit)> = vec![
        (
            "provider_id",
            Box::new(|b| b["provider_id"] = json!("nobody")),
        ),
        (
            "timezone",
            Box::new(|b| b["timezone"] = json!("Mars/Olympus_Mons")),
        ),
        (
            "contact.phone",
            Box::new(|b| b["contact"]["phone"] = json!("0612345678")),
        ),
        (
            "contact.email",
            Box::new(|b| b["contact"]["email"] = json!("not-an-email")),
        ),
        (
            "starts_at",
            Box::new(|b| b["starts_at"] = json!("2001-01-01T10:00:00Z")),
        ),
        (
            "starts_at",
            Box::new(|b| b["starts_at"] = json!("tomorrow at ten")),
        ),
        (
            "duration_minutes",
            Box::new(|b| b["duration_minutes"] = json!(4)),
        ),
        (
            "duration_minutes",
            Box::new(|b| b["duration_minutes"] = json!(241)),
        ),
        ("mode", Box::new(|b| b["mode"] = json!("carrier-pigeon"))),
        (
            "contact",
            Box::new(|b| b["contact"] = json!({"whatsapp": false})),
        ),
    ];
    for (field, mutate) in cases {
        let mut body = booking("prov-1", 24);
        mutate(&mut body);
        let problem = refused_booking(&app, body, unprocessable, "validation_failed").await;
        assert_eq!(problem["field"], field, "{problem}");
    }
}

async fn malformed_and_oversized_bodies_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let patient = app.token(Role::Patient, "pat-1");
    let before = app.db.event_count().await;
    let send = |body: Vec<u8>| {
        app.client
            .post(format!("{}/v1/consultations", app.address))
            .bearer_auth(&patient)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let malformed = send(b"{\"provider_id\": \"prov-1\",".to_vec())
        .await
        .expect("sent");
    assert_problem(malformed, StatusCode::BAD_REQUEST, "validation_failed").await;
    let wrong_type = send(br#"{"provider_id": 5}"#.to_vec()).await.expect("sent");
    assert_problem(wrong_type, StatusCode::BAD_REQUEST, "validation_failed").await;
    let empty = send(Vec::new()).await.expect("sent");
    assert_problem(empty, StatusCode::BAD_REQUEST, "validation_failed").await;

    let mut big = booking("prov-1", 24);
    big["reason"] = json!("x".repeat(70 * 1024));
    let oversized = send(serde_json::to_vec(&big).expect("json"))
        .await
        .expect("sent");
    assert_problem(
        oversized,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert_eq!(app.db.event_count().await, before);
}

async fn missing_expired_and_tampered_tokens_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let before = app.db.event_count().await;
    let url = format!("{}/v1/consultations", app.address);
    let body = booking("prov-1", 24);

    let missing = app
        .client
        .post(&url)
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert!(missing.headers().contains_key("www-authenticate"));
    assert_problem(missing, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let expired = app.expired_token(Role::Patient, "pat-1");
    let expired = app.post("/v1/consultations", &expired, &body).await;
    assert_problem(expired, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let foreign = app.token_signed_with(
        "another-secret-of-sufficient-length-000",
        Role::Patient,
        "pat-1",
        chrono::Utc::now().timestamp() + 600,
    );
    let response = app.post("/v1/consultations", &foreign, &body).await;
    assert_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // A valid token whose claims were edited to claim the admin role.
    let token = app.token(Role::Patient, "pat-1");
    let parts: Vec<&str> = token.split('.').collect();
    use base64::Engine;
    let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        json!({"sub": "pat-1", "role": "admin", "exp": chrono::Utc::now().timestamp() + 600})
            .to_string(),
    );
    let tampered = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    let response = app.post("/v1/consultations", &tampered, &body).await;
    assert_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let garbage = app
        .client
        .post(&url)
        .header("authorization", "Basic dXNlcjpwYXNz")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_problem(garbage, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(app.db.event_count().await, before);
}

async fn callers_cannot_touch_consultations_that_are_not_theirs(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    app.register_provider("prov-2").await;
    let id = app.book("pat-1", "prov-1", 24).await;
    let before = app.db.event_count().await;
    let path = |action: &str| format!("/v1/consultations/{id}/{action}");

    let other_patient = app.token(Role::Patient, "pat-2");
    let other_provider = app.token(Role::Provider, "prov-2");
    let auditor = app.token(Role::Auditor, "aud-1");
    let reason = json!({"reason": "not mine"});

    for (token, action, body) in [
        (&other_patient, "cancel", &reason),
        (&other_provider, "accept", &json!({})),
        (&other_provider, "decline", &reason),
        (&other_provider, "cancel", &reason),
        // The right consultation, the wrong role: a patient cannot accept its own booking.
        (&app.token(Role::Patient, "pat-1"), "accept", &json!({})),
        (&auditor, "cancel", &reason),
    ] {
        let response = app.post(&path(action), token, body).await;
        assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let read = app
        .read(&format!("/v1/consultations/{id}"), &other_patient)
        .await;
    assert_problem(read, StatusCode::FORBIDDEN, "forbidden").await;
    let read = app
        .read(&format!("/v1/consultations/{id}"), &other_provider)
        .await;
    assert_problem(read, StatusCode::FORBIDDEN, "forbidden").await;
    // Auditors and admins may read it.
    let read = app.read(&format!("/v1/consultations/{id}"), &auditor).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(app.db.event_count().await, before);
}

async fn unknown_consultations_and_routes_are_404(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let provider = app.token(Role::Provider, "prov-1");
    let unknown = uuid::Uuid::new_v4();
    for path in [
        format!("/v1/consultations/{unknown}/accept"),
        "/v1/consultations/not-a-uuid/accept".to_owned(),
    ] {
        let response = app.post(&path, &provider, &json!({})).await;
        assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    let response = app
        .read(&format!("/v1/consultations/{unknown}"), &provider)
        .await;
    assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = app.get("/v1/nowhere", &provider).await;
    assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = app
        .client
        .delete(format!("{}/v1/consultations", app.address))
        .send()
        .await
        .expect("sent");
    assert_problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    assert_eq!(app.db.event_count().await, 0);
}

/// Found by `scripts/fuzz-api`: these reads took their query string with axum's `Query`, whose
/// refusals of an unknown or repeated parameter were `text/plain` 400s, not problems.
async fn bad_query_strings_of_audit_and_payment_reads_are_problems(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 24).await;
    let auditor = app.token(Role::Auditor, "aud-1");
    for (path, field) in [
        ("/v1/admin/access-log?consultation_id=&nope=42", "nope"),
        ("/v1/admin/payment-events?outcome=applied&nope=42", "nope"),
        ("/v1/admin/access-log?actor_id=a&actor_id=b", "actor_id"),
        (
            &format!("/v1/consultations/{id}/history?as_of=x&as_of=y") as &str,
            "as_of",
        ),
        (&format!("/v1/consultations/{id}/history?nope=1"), "nope"),
    ] {
        let response = app.get(path, &auditor).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{path}: {problem}");
    }
    // The parameters they do take still work.
    let response = app
        .get(
            &format!("/v1/admin/access-log?consultation_id={id}"),
            &auditor,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .get(
            &format!("/v1/consultations/{id}/history?as_of=2030-01-31T14:00:00Z"),
            &auditor,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .get("/v1/admin/payment-events?outcome=refused", &auditor)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// Found by `scripts/fuzz-api`: a path parameter that is not valid percent-encoded UTF-8 was
/// refused by axum's `Path` with a `text/plain` 400; like any id that names nothing, it is a
/// 404 problem.
async fn undecodable_path_parameters_are_404_problems(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.token(Role::Admin, "admin-1");
    for (method, path) in [
        ("GET", "/v1/consultations/%FF"),
        ("GET", "/v1/consultations/%C3%28/history"),
        ("GET", "/v1/consultations/%FF/fhir"),
        ("GET", "/v1/consultations/%FF/notifications"),
        ("GET", "/v1/providers/%FF"),
        ("GET", "/v1/providers/%FF/schedule"),
        ("POST", "/v1/consultations/%FF/cancel"),
        ("POST", "/v1/admin/projections/%FF/rebuild"),
        ("POST", "/v1/admin/dead-letters/%FF/retry"),
    ] {
        let request = match method {
            "GET" => app.client.get(format!("{}{path}", app.address)),
            _ => app
                .client
                .post(format!("{}{path}", app.address))
                .json(&json!({"reason": "x"})),
        };
        let response = request.bearer_auth(&admin).send().await.expect("sent");
        assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert_eq!(app.db.event_count().await, 0);
}

/// Found by `scripts/fuzz-api`: the webhooks read their body with axum's `Bytes`, whose refusal
/// of a body over the limit was a `text/plain` 413, not a problem.
async fn oversized_webhook_bodies_are_413_problems(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let big = "a".repeat(70 * 1024);
    for (path, content_type) in [
        ("/v1/webhooks/payments", "application/json"),
        (
            "/v1/webhooks/twilio/messages",
            "application/x-www-form-urlencoded",
        ),
        (
            "/v1/webhooks/twilio/calls",
            "application/x-www-form-urlencoded",
        ),
        (
            "/v1/webhooks/twilio/rooms",
            "application/x-www-form-urlencoded",
        ),
        (
            "/v1/webhooks/twilio/voice/x?caller=patient",
            "application/x-www-form-urlencoded",
        ),
    ] {
        let response = app
            .client
            .post(format!("{}{path}", app.address))
            .header("content-type", content_type)
            .body(big.clone())
            .send()
            .await
            .expect("sent");
        assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    }
    assert_eq!(app.db.event_count().await, 0);
}

/// Found by `scripts/fuzz-api` on PostgreSQL, whose text cannot hold a NUL: a `%00` in a query
/// filter or a path id reached the database and came back as a 500, and in a consultation
/// read's path it made the access log's insert fail, so the read was refused with a 503.
async fn nul_characters_in_paths_and_queries_are_client_errors(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.token(Role::Admin, "admin-1");
    for (method, path) in [
        ("GET", "/v1/consultations/%00"),
        ("GET", "/v1/consultations/%00/history"),
        ("GET", "/v1/consultations/%00/fhir"),
        ("GET", "/v1/consultations/a%00b/notifications"),
        ("POST", "/v1/admin/dead-letters/%00/retry"),
        ("GET", "/v1/providers/%00"),
    ] {
        let request = match method {
            "GET" => app.client.get(format!("{}{path}", app.address)),
            _ => app.client.post(format!("{}{path}", app.address)),
        };
        let response = request.bearer_auth(&admin).send().await.expect("sent");
        assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    for (path, field) in [
        ("/v1/admin/access-log?actor_id=%00", "actor_id"),
        (
            "/v1/admin/access-log?consultation_id=x%00",
            "consultation_id",
        ),
        (
            "/v1/admin/payment-events?consultation_id=%00",
            "consultation_id",
        ),
        ("/v1/consultations?provider_id=%00", "provider_id"),
        ("/v1/consultations?patient_id=%00", "patient_id"),
        ("/v1/consultations?a%00=1", "query"),
    ] {
        let response = app.get(path, &admin).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{path}: {problem}");
    }
    // The reads of unknown consultations were logged, the NUL replaced.
    let logged = app
        .get("/v1/admin/access-log", &admin)
        .await
        .json::<Value>()
        .await
        .expect("json");
    let items = logged["items"].as_array().expect("items");
    assert!(
        items
            .iter()
            .any(|i| i["consultation_id"] == "\u{FFFD}" && i["outcome"] == 404),
        "{logged}"
    );
}

/// Asserts that a problem document does not quote `value` anywhere (it may be personal data).
fn assert_not_quoted(problem: &Value, value: &str) {
    assert!(
        !problem.to_string().contains(value),
        "the problem repeats the refused value: {problem}"
    );
}

/// Found by a hostile probe: a slot the database cannot store (an end after year 9999 on
/// both backends, which the slot triggers cannot read; a leap second, which SQLite's
/// `julianday` cannot read) was accepted with 201/200, and every later accept or reschedule
/// answered 500. Such an end is refused at the door; a leap second is read as the second after
/// it, as PostgreSQL does.
async fn slots_the_database_cannot_store_are_refused_and_leap_seconds_normalised(backend: Backend) {
    use chrono::Datelike as _;
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let patient = app.token(Role::Patient, "pat-1");
    let provider = app.token(Role::Provider, "prov-1");

    for late in [
        "9999-12-31T23:00:00Z",
        "9999-12-31T22:30:00Z",
        "9000-01-01T00:00:00Z",
    ] {
        let mut body = booking("prov-1", 24);
        body["starts_at"] = json!(late);
        let problem = refused_booking(&app, body, unprocessable, "validation_failed").await;
        assert_eq!(problem["field"], "starts_at", "{problem}");
        if late.starts_with("9999") {
            // (The last one is the bound, which the message names.)
            assert_not_quoted(&problem, late);
        }
    }

    // A reschedule to such a slot, of a requested and of an accepted consultation.
    let requested = app.book("pat-1", "prov-1", 24).await;
    let accepted = app.book("pat-1", "prov-1", 48).await;
    let response = app
        .post(
            &format!("/v1/consultations/{accepted}/accept"),
            &provider,
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK, "accept");
    let before = app.db.event_count().await;
    for id in [&requested, &accepted] {
        for body in [
            json!({"starts_at": "9999-12-31T23:00:00Z"}),
            json!({"starts_at": "9999-12-31T20:30:00Z", "duration_minutes": 240}),
        ] {
            let response = app
                .post(
                    &format!("/v1/consultations/{id}/reschedule"),
                    &patient,
                    &body,
                )
                .await;
            let problem = assert_problem(response, unprocessable, "validation_failed").await;
            assert_eq!(problem["field"], "starts_at", "{problem}");
        }
    }
    assert_eq!(app.db.event_count().await, before, "nothing stored");
    // The requested one can still be accepted.
    let response = app
        .post(
            &format!("/v1/consultations/{requested}/accept"),
            &provider,
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK, "accept after refusals");

    // Leap seconds: booked, accepted and rescheduled as the next second.
    let year = chrono::Utc::now().year() + 1;
    let mut body = booking("prov-1", 24);
    body["starts_at"] = json!(format!("{year}-06-30T23:59:60Z"));
    let response = app.post("/v1/consultations", &patient, &body).await;
    assert_eq!(response.status(), StatusCode::CREATED, "book a leap second");
    let leap: Value = response.json().await.expect("json");
    let leap = leap["id"].as_str().expect("id").to_owned();
    let response = app
        .post(
            &format!("/v1/consultations/{leap}/accept"),
            &provider,
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK, "accept a leap second");
    let read = app
        .read(&format!("/v1/consultations/{leap}"), &patient)
        .await
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(
        read["starts_at"],
        format!("{year}-07-01T00:00:00Z"),
        "{read}"
    );
    let response = app
        .post(
            &format!("/v1/consultations/{accepted}/reschedule"),
            &patient,
            &json!({"starts_at": format!("{year}-12-31T23:59:60.5Z")}),
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "reschedule to a leap second"
    );
    let read = app
        .read(&format!("/v1/consultations/{accepted}"), &patient)
        .await
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(
        read["starts_at"],
        format!("{}-01-01T00:00:00Z", year + 1),
        "{read}"
    );
    // The slot is really held: an overlapping accept is refused as a conflict, not a 500.
    let mut body = booking("prov-1", 24);
    body["starts_at"] = json!(format!("{}-01-01T00:15:00Z", year + 1));
    let response = app.post("/v1/consultations", &patient, &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let overlapping: Value = response.json().await.expect("json");
    let response = app
        .post(
            &format!(
                "/v1/consultations/{}/accept",
                overlapping["id"].as_str().expect("id")
            ),
            &provider,
            &json!({}),
        )
        .await;
    assert_problem(response, StatusCode::CONFLICT, "slot_conflict").await;
}

/// Found by a hostile probe: addresses that `lettre` refuses when the email is sent were
/// accepted at booking and at registration, and their messages dead-lettered later.
async fn addresses_the_mailer_would_refuse_are_refused_at_the_door(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let admin = app.token(Role::Admin, "admin-1");
    let before = app.db.event_count().await;
    for address in [
        "a,b@x.org",
        "a;b@x.org",
        "Bcc:a@x.org",
        "a\"b@x.org",
        "(a)b@x.org",
        "a..b@x.org",
        ".a@x.org",
        "a@-x.org",
        "Pat <pat@x.org>",
    ] {
        let mut body = booking("prov-1", 24);
        body["contact"]["email"] = json!(address);
        let problem = refused_booking(
            &app,
            body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["field"], "contact.email", "{address}: {problem}");
        assert_not_quoted(&problem, address);

        let mut body = crate::helpers::provider_body("prov-x");
        body["email"] = json!(address);
        let response = app.post("/v1/providers", &admin, &body).await;
        let problem = assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["field"], "email", "{address}: {problem}");
    }
    assert_eq!(app.db.event_count().await, before, "nothing stored");
    // Ordinary addresses still pass.
    let mut body = booking("prov-1", 24);
    body["contact"]["email"] = json!("o'brien+tag@mail.example.org");
    let response = app
        .post(
            "/v1/consultations",
            &app.token(Role::Patient, "pat-1"),
            &body,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// Found by a hostile probe: a fee in a currency that does not exist and provider ids made of
/// dots (which no URL can name: `/v1/providers/..` is normalised away) were registered.
async fn unknown_currencies_and_dotted_provider_ids_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.token(Role::Admin, "admin-1");
    let cases: Vec<(&str, &str, Value)> = vec![
        ("fee.currency", "currency", json!("ZZZ")),
        ("fee.currency", "currency", json!("XTS")),
        ("fee.currency", "currency", json!("E R")),
        ("id", "id", json!("..")),
        ("id", "id", json!(".")),
        ("id", "id", json!("-dr")),
        ("id", "id", json!(".hidden")),
        ("id", "id", json!("dr/ada")),
        ("id", "id", json!("d".repeat(65))),
    ];
    for (field, key, value) in cases {
        let mut body = crate::helpers::provider_body("dr-ada");
        if key == "currency" {
            body["fee"]["currency"] = value.clone();
        } else {
            body["id"] = value.clone();
        }
        let response = app.post("/v1/providers", &admin, &body).await;
        let problem = assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["field"], field, "{value}: {problem}");
        if let Some(value) = value.as_str().filter(|v| v.len() > 2) {
            assert_not_quoted(&problem, value);
        }
    }
    assert_eq!(app.db.event_count().await, 0, "nothing stored");
    for (id, currency) in [
        ("dr-ada", "eur"),
        ("dr.grace_hopper-2", "JPY"),
        ("7", "CHF"),
    ] {
        let mut body = crate::helpers::provider_body(id);
        body["fee"]["currency"] = json!(currency);
        let response = app.post("/v1/providers", &admin, &body).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{id} {currency}");
    }
}

/// Found by a hostile probe on PostgreSQL, whose text and jsonb cannot hold a NUL: a NUL in a
/// decoded cursor, or in a field of a correctly signed payment or Twilio webhook, reached the
/// database and came back as a 500.
async fn nul_characters_in_cursors_and_signed_webhooks_are_client_errors(backend: Backend) {
    use consult_reactors::payments::signature;
    const AUTH_TOKEN: &str = "twilio-auth-token-for-the-nul-test";
    let Some(app) = crate::helpers::spawn_app_with(backend, |config| {
        // Only the webhooks' signature check is wanted: no sender, so nothing is sent.
        config.notifications.twilio = Some(consult_reactors::channels::twilio::TwilioConfig::new(
            "AC00000000000000000000000000000000",
            secrecy::SecretString::from(AUTH_TOKEN),
        ));
    })
    .await
    else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 24).await;
    let admin = app.token(Role::Admin, "admin-1");

    // "1.a\0b" and "1.\0": well-formed cursors but for the NUL.
    for cursor in ["MS5hAGI", "MS4A"] {
        for path in [
            format!("/v1/consultations?cursor={cursor}"),
            format!("/v1/providers/prov-1/schedule?cursor={cursor}"),
        ] {
            let response = app.get(&path, &admin).await;
            let problem =
                assert_problem(response, StatusCode::BAD_REQUEST, "validation_failed").await;
            assert_eq!(problem["field"], "cursor", "{path}: {problem}");
        }
    }

    let before = app.db.event_count().await;
    let payment = |event_id: &str, kind: &str, object: Value| {
        json!({"id": event_id, "type": kind, "data": {"object": object}}).to_string()
    };
    let intent = |pi: &str, currency: &str, consultation: &str| {
        json!({
            "id": pi,
            "object": "payment_intent",
            "amount": 4500,
            "amount_received": 4500,
            "currency": currency,
            "metadata": {"consultation_id": consultation},
        })
    };
    for body in [
        payment(
            "evt_\u{0}1",
            "payment_intent.succeeded",
            intent("pi_1", "eur", &id),
        ),
        payment(
            "evt_2",
            "payment_intent.succeeded\u{0}",
            intent("pi_2", "eur", &id),
        ),
        payment(
            "evt_3",
            "payment_intent.succeeded",
            intent("pi_\u{0}3", "eur", &id),
        ),
        payment(
            "evt_4",
            "payment_intent.succeeded",
            intent("pi_4", "eu\u{0}", &id),
        ),
        payment(
            "evt_5",
            "payment_intent.payment_failed",
            intent("pi_5", "eur", &format!("{id}\u{0}")),
        ),
        payment(
            "evt_6",
            "charge.refunded",
            json!({"id": "ch_6", "payment_intent": "pi_\u{0}6", "amount_refunded": 4500,
                   "metadata": {"consultation_id": id}}),
        ),
    ] {
        let response = app
            .client
            .post(format!("{}/v1/webhooks/payments", app.address))
            .header("content-type", "application/json")
            .header(
                "stripe-signature",
                signature::sign(
                    crate::helpers::PAYMENT_SECRET,
                    chrono::Utc::now().timestamp(),
                    body.as_bytes(),
                ),
            )
            .body(body.clone())
            .send()
            .await
            .expect("sent");
        assert_problem(response, StatusCode::BAD_REQUEST, "validation_failed").await;
    }
    assert_eq!(app.db.event_count().await, before, "nothing stored");
    // A NUL in a field this engine does not read is no reason to refuse the event.
    let mut object = intent("pi_7", "eur", &id);
    object["description"] = json!("a\u{0}b");
    let body = payment("evt_7", "payment_intent.payment_failed", object);
    let response = app
        .client
        .post(format!("{}/v1/webhooks/payments", app.address))
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            signature::sign(
                crate::helpers::PAYMENT_SECRET,
                chrono::Utc::now().timestamp(),
                body.as_bytes(),
            ),
        )
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    let before = app.db.event_count().await;

    let twilio = |path: String, form: Vec<(String, String)>| {
        let signature = consult_reactors::twilio_signature::signature(
            AUTH_TOKEN,
            &format!("http://127.0.0.1{path}"),
            &form,
        );
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&form)
            .finish();
        app.client
            .post(format!("{}{path}", app.address))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(body)
            .send()
    };
    let form = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    for (path, fields) in [
        (
            "/v1/webhooks/twilio/messages".to_owned(),
            form(&[("MessageSid", "SM\u{0}1"), ("MessageStatus", "delivered")]),
        ),
        (
            "/v1/webhooks/twilio/messages".to_owned(),
            form(&[
                ("MessageSid", "SM2"),
                ("MessageStatus", "failed"),
                ("ErrorCode", "300\u{0}05"),
            ]),
        ),
        (
            format!("/v1/webhooks/twilio/rooms?consultation_id={id}%00"),
            form(&[
                ("StatusCallbackEvent", "room-ended"),
                ("RoomName", "consult-x"),
            ]),
        ),
        (
            format!("/v1/webhooks/twilio/calls?consultation_id={id}&call_id=%00"),
            form(&[("CallStatus", "completed"), ("CallSid", "CA1")]),
        ),
    ] {
        let response = twilio(path.clone(), fields).await.expect("sent");
        let problem = assert_problem(response, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert!(problem["detail"].as_str().is_some(), "{path}: {problem}");
    }
    assert_eq!(app.db.event_count().await, before, "nothing stored");
}
