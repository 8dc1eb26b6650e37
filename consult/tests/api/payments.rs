//! Payments through the whole engine: the signed webhook, each provider event processed once
//! (also ten copies at the same moment), payment before and after acceptance, the price check,
//! refunds through the payment provider's fake, and the cancellation policy.

use std::time::Duration;

use consult_api::Role;
use consult_reactors::payments::signature;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{act, assert_problem, eventually, spawn_app_with, Backend, TestApp};
use crate::on_both_backends;

use consult_testkit as fakes;

use fakes::payments::{
    charge_refunded, event, payment_intent, signature_header, PaymentsFake, WEBHOOK_SECRET,
};

async fn spawn(backend: Backend, fake: Option<&PaymentsFake>) -> Option<TestApp> {
    spawn_app_with(backend, |config| {
        config.payments.webhook_secret = Some(secrecy::SecretString::from(WEBHOOK_SECRET));
        config.payments.stripe = fake.map(PaymentsFake::config);
    })
    .await
}

async fn deliver(app: &TestApp, body: &str, signature: Option<String>) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}/v1/webhooks/payments", app.address))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    request.send().await.expect("webhook delivered")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A signed `payment_intent.succeeded` for the consultation, paying its price (4500 EUR).
fn paid_event(event_id: &str, consultation: &str, amount: i64, currency: &str) -> String {
    event(
        event_id,
        "payment_intent.succeeded",
        payment_intent(&format!("pi_{event_id}"), amount, currency, consultation),
    )
}

fn count(stream: &[(i64, String)], kind: &str) -> usize {
    stream.iter().filter(|(_, t)| t == kind).count()
}

/// The consultation as an admin reads it, with `?after` the log's head: it reads the test's own
/// writes.
async fn consultation(app: &TestApp, id: &str) -> Value {
    let admin = app.token(Role::Admin, "admin-1");
    app.read(&format!("/v1/consultations/{id}"), &admin)
        .await
        .json()
        .await
        .expect("json")
}

async fn payment_events(app: &TestApp, query: &str) -> Vec<Value> {
    let admin = app.token(Role::Admin, "admin-1");
    let body: Value = app
        .get(&format!("/v1/admin/payment-events{query}"), &admin)
        .await
        .json()
        .await
        .expect("json");
    body["items"].as_array().cloned().unwrap_or_default()
}

/// Only a delivery signed with the endpoint's secret, recently, over these exact bytes is
/// taken; every other is a 400 and writes nothing.
async fn only_signed_deliveries_are_taken(backend: Backend) {
    let Some(app) = spawn(backend, None).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 48).await;
    let events_before = app.db.event_count().await;
    let body = paid_event("evt_sig", &id, 4500, "eur");
    let tampered = body.replace("4500", "4501");
    let stale = now() - 301;
    for (name, body, header) in [
        (
            "tampered body",
            tampered.as_str(),
            Some(signature_header(&body, now())),
        ),
        (
            "wrong secret",
            body.as_str(),
            Some(signature::sign(
                "whsec_another_secret",
                now(),
                body.as_bytes(),
            )),
        ),
        (
            "secret without its prefix",
            body.as_str(),
            Some(signature::sign(
                WEBHOOK_SECRET.trim_start_matches("whsec_"),
                now(),
                body.as_bytes(),
            )),
        ),
        (
            "stale timestamp",
            body.as_str(),
            Some(signature_header(&body, stale)),
        ),
        ("missing header", body.as_str(), None),
        ("garbage header", body.as_str(), Some("t=abc,v1=zz".into())),
    ] {
        let response = deliver(&app, body, header).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST, "bad_signature").await;
        assert!(problem["detail"].as_str().is_some(), "{name}");
    }
    assert_eq!(
        app.db.event_count().await,
        events_before,
        "no event written"
    );
    assert!(
        payment_events(&app, "").await.is_empty(),
        "nothing recorded"
    );

    // The same payload, properly signed (and with a second, unknown v1 beside it, as during a
    // secret rotation), is taken.
    let header = format!("{},v1={}", signature_header(&body, now()), "0".repeat(64));
    let response = deliver(&app, &body, Some(header)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["outcome"], "applied");
    assert_eq!(count(&app.db.stream(&id).await, "PaymentConfirmed"), 1);
}

/// A provider event is processed once: delivered twice in a row, or ten copies at once.
async fn each_provider_event_is_processed_once(backend: Backend) {
    let Some(app) = spawn(backend, None).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let first = app.book("pat-1", "prov-1", 48).await;
    let body = paid_event("evt_twice", &first, 4500, "eur");
    for attempt in 0..2 {
        let response = deliver(&app, &body, Some(signature_header(&body, now()))).await;
        assert_eq!(response.status(), StatusCode::OK, "delivery {attempt}");
        let answer: Value = response.json().await.expect("json");
        assert_eq!(answer["duplicate"], attempt == 1, "{answer}");
    }
    assert_eq!(count(&app.db.stream(&first).await, "PaymentConfirmed"), 1);

    let second = app.book("pat-2", "prov-1", 50).await;
    let body = paid_event("evt_ten", &second, 4500, "eur");
    let copies = (0..10).map(|_| {
        let app = &app;
        let body = body.clone();
        async move {
            deliver(app, &body, Some(signature_header(&body, now())))
                .await
                .status()
        }
    });
    let statuses = futures_util::future::join_all(copies).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "every copy is acknowledged: {statuses:?}"
    );
    assert_eq!(
        count(&app.db.stream(&second).await, "PaymentConfirmed"),
        1,
        "one confirmation from ten copies"
    );
    let recorded = payment_events(&app, &format!("?consultation_id={second}")).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0]["outcome"], "applied");
}

/// Paid before the provider accepts, or after: both end confirmed and paid.
async fn payment_before_or_after_acceptance_confirms(backend: Backend) {
    let Some(app) = spawn(backend, None).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let before = app.book("pat-1", "prov-1", 48).await;
    let after = app.book("pat-2", "prov-1", 50).await;

    let body = paid_event("evt_before", &before, 4500, "EUR");
    assert_eq!(
        deliver(&app, &body, Some(signature_header(&body, now())))
            .await
            .status(),
        StatusCode::OK
    );
    act(&app, Role::Provider, "prov-1", &before, "accept", json!({})).await;

    act(&app, Role::Provider, "prov-1", &after, "accept", json!({})).await;
    let body = paid_event("evt_after", &after, 4500, "eur");
    assert_eq!(
        deliver(&app, &body, Some(signature_header(&body, now())))
            .await
            .status(),
        StatusCode::OK
    );
    for id in [&before, &after] {
        let ok = eventually(Duration::from_secs(5), || async {
            let c = consultation(&app, id).await;
            c["status"] == "confirmed" && c["payment_status"] == "paid"
        })
        .await;
        assert!(ok, "{id} confirmed and paid");
    }
}

/// A payment whose amount or currency is not the price is recorded and flagged, and does not
/// confirm; unknown consultations and unhandled types are acknowledged and recorded as ignored.
async fn wrong_amounts_are_flagged_and_strangers_ignored(backend: Backend) {
    let Some(app) = spawn(backend, None).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 48).await;
    act(&app, Role::Provider, "prov-1", &id, "accept", json!({})).await;
    for (event_id, amount, currency) in [("evt_low", 100, "eur"), ("evt_usd", 4500, "usd")] {
        let body = paid_event(event_id, &id, amount, currency);
        let response = deliver(&app, &body, Some(signature_header(&body, now()))).await;
        assert_eq!(response.status(), StatusCode::OK);
        let answer: Value = response.json().await.expect("json");
        assert_eq!(answer["outcome"], "flagged", "{event_id}");
    }
    let stream = app.db.stream(&id).await;
    assert_eq!(count(&stream, "PaymentFlagged"), 2);
    assert_eq!(count(&stream, "PaymentConfirmed"), 0);
    let flagged = payment_events(&app, "?outcome=flagged").await;
    assert_eq!(flagged.len(), 2, "{flagged:?}");
    let ok = eventually(Duration::from_secs(5), || async {
        let c = consultation(&app, &id).await;
        c["payment_flagged"] == true && c["status"] == "accepted"
    })
    .await;
    assert!(ok, "flagged, still accepted and unpaid");

    let unknown = paid_event(
        "evt_stranger",
        &uuid::Uuid::new_v4().to_string(),
        4500,
        "eur",
    );
    let response = deliver(&app, &unknown, Some(signature_header(&unknown, now()))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["outcome"], "ignored");
    let other_type = event("evt_other", "customer.created", json!({"id": "cus_1"}));
    let response = deliver(
        &app,
        &other_type,
        Some(signature_header(&other_type, now())),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(payment_events(&app, "?outcome=ignored").await.len(), 2);
    assert_problem(
        app.get(
            "/v1/admin/payment-events?outcome=nonsense",
            &app.token(Role::Admin, "admin-1"),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    assert_problem(
        app.get(
            "/v1/admin/payment-events",
            &app.token(Role::Patient, "pat-1"),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

/// Declining a paid request refunds it once through the provider, with an idempotency key;
/// the provider's `charge.refunded` closes it.
async fn a_declined_payment_is_refunded_once(backend: Backend) {
    let fake = PaymentsFake::start().await;
    let Some(app) = spawn(backend, Some(&fake)).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let id = app.book("pat-1", "prov-1", 48).await;
    let body = paid_event("evt_pay", &id, 4500, "eur");
    assert_eq!(
        deliver(&app, &body, Some(signature_header(&body, now())))
            .await
            .status(),
        StatusCode::OK
    );
    act(
        &app,
        Role::Provider,
        "prov-1",
        &id,
        "decline",
        json!({"reason": "fully booked"}),
    )
    .await;
    let requested = eventually(Duration::from_secs(10), || async {
        count(&app.db.stream(&id).await, "RefundRequested") == 1
    })
    .await;
    assert!(requested, "the refund was requested");
    let refunds = fake.refunds();
    assert_eq!(refunds.len(), 1, "one refund at the provider");
    assert_eq!(refunds[0].payment_intent, "pi_evt_pay");
    assert_eq!(refunds[0].amount, 4500, "in full");
    assert_eq!(refunds[0].metadata("consultation_id"), Some(id.as_str()));
    assert!(refunds[0].idempotency_key.contains(&id));
    let calls = fake.requests();
    assert!(calls
        .iter()
        .all(|r| r.auth_ok && r.idempotency_key.is_some()));

    // A replay of the refunds reactor asks for nothing more.
    consult_store_rewind(&app, "refunds").await;
    let replayed = caught_up(&app, "refunds", |s| {
        s["applied_since_reset"].as_i64() > Some(0)
    })
    .await;
    assert!(replayed, "the refunds reactor replayed the log to its head");
    assert_eq!(fake.refunds().len(), 1, "still one refund");
    assert_eq!(count(&app.db.stream(&id).await, "RefundRequested"), 1);
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM jobs WHERE kind = 'refund'")
            .await,
        1,
        "the replay queued no second refund job"
    );

    let refunded = event(
        "evt_refunded",
        "charge.refunded",
        charge_refunded("ch_1", "pi_evt_pay", 4500, "eur", &id),
    );
    assert_eq!(
        deliver(&app, &refunded, Some(signature_header(&refunded, now())))
            .await
            .status(),
        StatusCode::OK
    );
    let ok = eventually(Duration::from_secs(5), || async {
        consultation(&app, &id).await["payment_status"] == "refunded"
    })
    .await;
    assert!(ok, "refunded");
}

/// A patient cancelling within the notice period gets no refund: recorded as a late
/// cancellation, and nothing reaches the provider. Cancelling earlier refunds in full.
async fn late_patient_cancellations_are_not_refunded(backend: Backend) {
    let fake = PaymentsFake::start().await;
    let Some(app) = spawn(backend, Some(&fake)).await else {
        return;
    };
    app.register_provider("prov-1").await;
    let late = app.book("pat-1", "prov-1", 3).await;
    let early = app.book("pat-2", "prov-1", 72).await;
    for (id, event_id) in [(&late, "evt_late"), (&early, "evt_early")] {
        act(&app, Role::Provider, "prov-1", id, "accept", json!({})).await;
        let body = paid_event(event_id, id, 4500, "eur");
        assert_eq!(
            deliver(&app, &body, Some(signature_header(&body, now())))
                .await
                .status(),
            StatusCode::OK
        );
    }
    act(
        &app,
        Role::Patient,
        "pat-1",
        &late,
        "cancel",
        json!({"reason": "changed my mind"}),
    )
    .await;
    act(
        &app,
        Role::Patient,
        "pat-2",
        &early,
        "cancel",
        json!({"reason": "changed my mind"}),
    )
    .await;
    let refunded_early = eventually(Duration::from_secs(10), || async {
        count(&app.db.stream(&early).await, "RefundRequested") == 1
    })
    .await;
    assert!(refunded_early, "the early cancellation is refunded");
    // Once the refunds reactor has passed the late cancellation too, it has asked for nothing.
    let passed = caught_up(&app, "refunds", |_| true).await;
    assert!(passed, "the refunds reactor reached the head of the log");
    let refunds = fake.refunds();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0].payment_intent, "pi_evt_early");
    assert_eq!(count(&app.db.stream(&late).await, "RefundRequested"), 0);
    assert_eq!(
        app.db
            .scalar(&format!(
                "SELECT count(*) FROM jobs WHERE kind = 'refund' AND consultation_id = '{late}'"
            ))
            .await,
        0,
        "no refund job for the late cancellation"
    );
    let payload: String = app
        .db
        .text(&format!(
            "SELECT payload{} FROM events WHERE aggregate_id = '{late}' \
             AND event_type = 'Cancelled'",
            if app.db.backend == Backend::Postgres {
                "::text"
            } else {
                ""
            }
        ))
        .await;
    assert!(payload.contains("none_late"), "{payload}");
    let late_view = consultation(&app, &late).await;
    assert_eq!(late_view["payment_status"], "paid", "kept");
}

/// Without a secret, the webhook is not configured: 503, nothing changes.
async fn the_webhook_needs_its_secret(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |config| {
        config.payments.webhook_secret = None;
    })
    .await
    else {
        return;
    };
    let body = paid_event("evt_x", &uuid::Uuid::new_v4().to_string(), 4500, "eur");
    let response = deliver(&app, &body, Some(signature_header(&body, now()))).await;
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "not_configured").await;
}

/// Waits (up to 30 s) until the subscription `name` is live, has handled every event in the log
/// (`lag_events` 0 on `GET /v1/admin/subscriptions`) and its row satisfies `also`; returns
/// whether it did.
async fn caught_up(app: &TestApp, name: &str, also: impl Fn(&Value) -> bool) -> bool {
    let admin = app.token(Role::Admin, "admin-1");
    eventually(Duration::from_secs(30), || async {
        let response = app.get("/v1/admin/subscriptions", &admin).await;
        if response.status() != StatusCode::OK {
            return false;
        }
        let body: Value = response.json().await.expect("json");
        body["subscriptions"]
            .as_array()
            .and_then(|rows| rows.iter().find(|s| s["name"] == name))
            .is_some_and(|s| s["state"] == "live" && s["lag_events"] == 0 && also(s))
    })
    .await
}

/// Moves a subscription's checkpoint back to the start, so it replays the whole log.
async fn consult_store_rewind(app: &TestApp, name: &str) {
    let store =
        consult_store::Store::connect(&consult_store::StoreOptions::new(app.db.url.clone()))
            .await
            .expect("store");
    let sql = format!(
        "UPDATE subscriptions SET position = 0, transaction_id = '0', applied = 0 \
         WHERE name = '{name}'"
    );
    consult_store::with_pool!(store.db(), pool => {
        sqlx::query(&sql).execute(pool).await.map(|_| ())
    })
    .expect("rewind");
    store.close().await;
}

on_both_backends!(
    only_signed_deliveries_are_taken,
    each_provider_event_is_processed_once,
    payment_before_or_after_acceptance_confirms,
    wrong_amounts_are_flagged_and_strangers_ignored,
    a_declined_payment_is_refunded_once,
    late_patient_cancellations_are_not_refunded,
    the_webhook_needs_its_secret,
);
