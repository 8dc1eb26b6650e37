//! The payment providers against a strict loopback fake of Stripe's Refunds API, and the
//! console stand-in against a file. The webhook signature's known-answer tests live with the
//! signature code (`src/payments/signature.rs`).

use consult_testkit as fakes;
use consult_testkit::closed_base_url;

use std::time::Duration;

use consult_reactors::channels::console::ConsoleSink;
use consult_reactors::payments::console::ConsolePayments;
use consult_reactors::payments::signature::{self, SignatureError, DEFAULT_TOLERANCE};
use consult_reactors::payments::stripe::{StripePayments, API_VERSION};
use consult_reactors::payments::{PaymentProvider, RefundCreated, RefundRequest, ALREADY_REFUNDED};
use fakes::payments::{self as stripe_fake, PaymentsBehavior, PaymentsFake};
use secrecy::SecretString;

const CONSULTATION_ID: &str = "c-7f3e9a";

fn stripe(fake: &PaymentsFake) -> StripePayments {
    StripePayments::new(fake.config(), Duration::from_secs(5)).expect("build Stripe provider")
}

fn refund_request(amount_minor: Option<i64>) -> RefundRequest {
    RefundRequest {
        payment_id: format!("pi_3Qk{}", &uuid::Uuid::new_v4().simple().to_string()[..21]),
        amount_minor,
        idempotency_key: format!("refund-{}", uuid::Uuid::new_v4()),
        consultation_id: CONSULTATION_ID.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Stripe

#[tokio::test]
async fn stripe_sends_the_refund_as_stripe_expects() {
    let fake = PaymentsFake::start().await;
    let provider = stripe(&fake);
    let request = refund_request(Some(2_000));

    let created = provider.refund(&request).await.expect("refund created");

    assert_eq!(provider.name(), "stripe");
    assert!(created.refund_id.starts_with("re_"), "{created:?}");
    assert_eq!(created.status, "succeeded");
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let received = &requests[0];
    assert_eq!(received.method, "POST");
    assert_eq!(received.path, "/v1/refunds");
    assert!(received.auth_ok, "Bearer secret key");
    assert_eq!(
        received.idempotency_key.as_deref(),
        Some(request.idempotency_key.as_str())
    );
    assert_eq!(received.stripe_version.as_deref(), Some(API_VERSION));
    assert!(fakes::twilio::is_form(received.content_type.as_deref()));
    assert_eq!(
        received.field("payment_intent"),
        Some(request.payment_id.as_str())
    );
    assert_eq!(received.field("amount"), Some("2000"));
    assert_eq!(
        received.field("metadata[consultation_id]"),
        Some(CONSULTATION_ID)
    );
    assert_eq!(received.form.len(), 3, "{:?}", received.form);
    assert_eq!(received.status, 200);

    let refunds = fake.refunds();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].id, created.refund_id);
    assert_eq!(refunds[0].payment_intent, request.payment_id);
    assert_eq!(refunds[0].amount, 2_000);
    assert_eq!(
        refunds[0].metadata("consultation_id"),
        Some(CONSULTATION_ID)
    );
}

#[tokio::test]
async fn stripe_full_refund_sends_no_amount_and_refunds_what_is_left() {
    let fake = PaymentsFake::start().await;
    let provider = stripe(&fake);
    let request = refund_request(None);
    fake.set_payment_intent(&request.payment_id, 6_000);

    provider.refund(&request).await.expect("refund created");

    assert_eq!(fake.requests()[0].field("amount"), None);
    assert_eq!(fake.refunds()[0].amount, 6_000);
    assert_eq!(fake.refunded(&request.payment_id), 6_000);
}

#[tokio::test]
async fn stripe_same_idempotency_key_twice_makes_one_refund() {
    let fake = PaymentsFake::start().await;
    let provider = stripe(&fake);
    let request = refund_request(Some(1_500));

    let first = provider.refund(&request).await.expect("first attempt");
    let second = provider.refund(&request).await.expect("second attempt");

    assert_eq!(first, second);
    assert_eq!(fake.refunds().len(), 1);
    assert_eq!(fake.refunded(&request.payment_id), 1_500);
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert!(!requests[0].replayed);
    assert!(requests[1].replayed);
    assert_eq!(
        requests[1].refund_id.as_deref(),
        Some(first.refund_id.as_str())
    );
}

#[tokio::test]
async fn stripe_same_key_with_other_parameters_is_refused_for_good() {
    let fake = PaymentsFake::start().await;
    let provider = stripe(&fake);
    let request = refund_request(Some(1_000));
    provider.refund(&request).await.expect("first refund");

    let changed = RefundRequest {
        amount_minor: Some(1_200),
        ..request.clone()
    };
    let error = provider.refund(&changed).await.expect_err("key reused");

    assert!(!error.retryable, "{error:?}");
    assert!(
        error.message.contains("idempotency_error"),
        "{}",
        error.message
    );
    assert_eq!(fake.refunds().len(), 1);
}

#[tokio::test]
async fn stripe_retry_after_a_timeout_returns_the_refund_made_meanwhile() {
    let fake = PaymentsFake::start().await;
    let provider =
        StripePayments::new(fake.config(), Duration::from_millis(300)).expect("provider");
    let request = refund_request(None);
    fake.set_behavior(PaymentsBehavior::Hang(Duration::from_secs(3)));

    let error = provider.refund(&request).await.expect_err("timed out");
    assert!(error.retryable, "{error:?}");
    assert_eq!(error.message, "Stripe request timed out");
    // Stripe went ahead while the answer was lost.
    assert_eq!(fake.refunds().len(), 1);

    fake.set_behavior(PaymentsBehavior::Accept);
    let retried = provider.refund(&request).await.expect("retry succeeds");

    assert_eq!(retried.refund_id, fake.refunds()[0].id);
    assert_eq!(
        fake.refunds().len(),
        1,
        "the retry created no second refund"
    );
}

#[tokio::test]
async fn stripe_server_errors_rate_limits_and_conflicts_are_retryable() {
    let fake = PaymentsFake::start().await;
    let provider = stripe(&fake);
    let request = refund_request(None);

    for status in [500, 502, 503, 429, 409] {
        fake.set_behavior(PaymentsBehavior::Fail(status));
        let error = provider.refund(&request).await.expect_err("refused");
        assert!(error.retryable, "{status}: {error:?}");
        assert!(
            error
                .message
                .starts_with(&format!("Stripe answered {status}")),
            "{}",
            error.message
        );
    }
    assert!(fake.refunds().is_empty());

    // Nothing was stored for the key, so the retry executes the refund.
    fake.set_behavior(PaymentsBehavior::Accept);
    let created = provider
        .refund(&request)
        .await
        .expect("refund after retries");
    assert_eq!(fake.refunds()[0].id, created.refund_id);
}

#[tokio::test]
async fn stripe_bad_secret_key_is_permanent_and_not_repeated() {
    let fake = PaymentsFake::start().await;
    let mut config = fake.config();
    config.secret_key = SecretString::from("sk_test_wrong_key_4242qwerty".to_owned());
    let provider = StripePayments::new(config, Duration::from_secs(5)).expect("provider");

    let error = provider
        .refund(&refund_request(None))
        .await
        .expect_err("unauthorized");

    assert!(!error.retryable, "{error:?}");
    assert!(
        error.message.starts_with("Stripe answered 401"),
        "{}",
        error.message
    );
    assert!(!error.message.contains("sk_test"), "{}", error.message);
    assert!(!error.message.contains("qwerty"), "{}", error.message);
    assert!(!fake.requests()[0].auth_ok);
    assert!(fake.refunds().is_empty());
}

#[tokio::test]
async fn stripe_other_client_errors_are_permanent_with_stripes_details() {
    let fake = PaymentsFake::start().await;
    let provider = stripe(&fake);
    let request = refund_request(Some(9_000));
    fake.set_payment_intent(&request.payment_id, 5_000);

    let error = provider.refund(&request).await.expect_err("too much");

    assert!(!error.retryable, "{error:?}");
    assert!(
        error.message.contains("amount_too_large"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("greater than unrefunded amount"),
        "{}",
        error.message
    );
    fake.set_behavior(PaymentsBehavior::Fail(402));
    let error = provider
        .refund(&refund_request(None))
        .await
        .expect_err("402");
    assert!(!error.retryable, "{error:?}");
}

#[tokio::test]
async fn stripe_already_refunded_payment_counts_as_refunded() {
    let fake = PaymentsFake::start().await;
    let provider = stripe(&fake);
    let first = refund_request(None);
    provider.refund(&first).await.expect("full refund");

    // A new job (new key) for the same payment, say after the Dashboard refunded it.
    let again = RefundRequest {
        idempotency_key: format!("refund-{}", uuid::Uuid::new_v4()),
        ..first.clone()
    };
    let created = provider
        .refund(&again)
        .await
        .expect("already refunded is ok");

    assert_eq!(
        created,
        RefundCreated {
            refund_id: ALREADY_REFUNDED.to_owned(),
            status: "succeeded".to_owned(),
        }
    );
    let requests = fake.requests();
    assert_eq!(requests[1].status, 400);
    assert_eq!(fake.refunds().len(), 1);

    // The same partial refund is also done already.
    let partial = RefundRequest {
        amount_minor: Some(100),
        idempotency_key: format!("refund-{}", uuid::Uuid::new_v4()),
        ..first
    };
    let created = provider.refund(&partial).await.expect("still ok");
    assert_eq!(created.refund_id, ALREADY_REFUNDED);
}

#[tokio::test]
async fn stripe_unreachable_is_retryable() {
    let mut config = PaymentsFake::start().await.config();
    config.api_base = closed_base_url().await;
    let provider = StripePayments::new(config, Duration::from_secs(2)).expect("provider");

    let error = provider
        .refund(&refund_request(None))
        .await
        .expect_err("nothing listens");

    assert!(error.retryable, "{error:?}");
}

#[tokio::test]
async fn stripe_refuses_bad_requests_before_sending_them() {
    let fake = PaymentsFake::start().await;
    let provider = stripe(&fake);

    for request in [
        RefundRequest {
            payment_id: "ch_3QkNotAPaymentIntent".to_owned(),
            ..refund_request(None)
        },
        refund_request(Some(0)),
        RefundRequest {
            idempotency_key: String::new(),
            ..refund_request(None)
        },
    ] {
        let error = provider.refund(&request).await.expect_err("refused");
        assert!(!error.retryable, "{error:?}");
    }
    assert!(fake.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The fake itself: strict where our client could go wrong

#[tokio::test]
async fn fake_refuses_what_stripe_refuses() {
    let fake = PaymentsFake::start().await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/refunds", fake.base_url);
    let post = |form: &'static str, key: Option<&'static str>, content_type: &'static str| {
        let mut builder = client
            .post(&url)
            .bearer_auth(stripe_fake::SECRET_KEY)
            .header("Content-Type", content_type)
            .body(form);
        if let Some(key) = key {
            builder = builder.header("Idempotency-Key", key);
        }
        builder.send()
    };
    let form = "application/x-www-form-urlencoded";

    let cases = [
        (post("payment_intent=pi_123", None, form).await, 400, None),
        (
            post(
                "{\"payment_intent\":\"pi_123\"}",
                Some("k1"),
                "application/json",
            )
            .await,
            400,
            None,
        ),
        (
            post("amount=100", Some("k2"), form).await,
            400,
            Some("parameter_missing"),
        ),
        (
            post("payment_intent=ch_123", Some("k3"), form).await,
            400,
            Some("resource_missing"),
        ),
        (
            post("payment_intent=pi_123&amount=-5", Some("k4"), form).await,
            400,
            Some("parameter_invalid_integer"),
        ),
        (
            post("payment_intent=pi_123&amount=1.5", Some("k5"), form).await,
            400,
            Some("parameter_invalid_integer"),
        ),
        (
            post("payment_intent=pi_123&charge=ch_1", Some("k6"), form).await,
            400,
            Some("parameter_unknown"),
        ),
    ];
    for (index, (response, status, code)) in cases.into_iter().enumerate() {
        let response = response.expect("answered");
        assert_eq!(response.status().as_u16(), status, "case {index}");
        let body: serde_json::Value = response.json().await.expect("Stripe error JSON");
        assert!(body["error"]["message"].is_string(), "case {index}: {body}");
        assert_eq!(body["error"]["code"].as_str(), code, "case {index}: {body}");
    }

    let unauthorized = client
        .post(&url)
        .header("Idempotency-Key", "k7")
        .form(&[("payment_intent", "pi_123")])
        .send()
        .await
        .expect("answered");
    assert_eq!(unauthorized.status().as_u16(), 401);
    let body: serde_json::Value = unauthorized.json().await.expect("JSON");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    assert_eq!(fake.requests().len(), 8, "every request is recorded");
    assert!(fake.refunds().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Webhook payloads

#[test]
fn fake_webhook_payloads_verify_with_the_signature_check() {
    let intent = stripe_fake::payment_intent("pi_3QkPaid", 4_500, "eur", CONSULTATION_ID);
    assert_eq!(intent["metadata"]["consultation_id"], CONSULTATION_ID);
    let charge =
        stripe_fake::charge_refunded("ch_3QkPaid", "pi_3QkPaid", 4_500, "eur", CONSULTATION_ID);
    let body = stripe_fake::event("evt_1QkRefunded", "charge.refunded", charge);
    let parsed: serde_json::Value = serde_json::from_str(&body).expect("event JSON");
    assert_eq!(parsed["object"], "event");
    assert_eq!(parsed["type"], "charge.refunded");
    assert_eq!(parsed["data"]["object"]["payment_intent"], "pi_3QkPaid");
    assert_eq!(parsed["data"]["object"]["refunded"], true);

    let now = 1_795_213_535;
    let header = stripe_fake::signature_header(&body, now);
    assert_eq!(
        signature::verify(
            &header,
            body.as_bytes(),
            stripe_fake::WEBHOOK_SECRET,
            now,
            DEFAULT_TOLERANCE
        ),
        Ok(now)
    );
    assert_eq!(
        signature::verify(
            &header,
            body.replace("4500", "450").as_bytes(),
            stripe_fake::WEBHOOK_SECRET,
            now,
            DEFAULT_TOLERANCE
        ),
        Err(SignatureError::Mismatch)
    );
}

// ---------------------------------------------------------------------------------------------
// Console

#[tokio::test]
async fn console_payments_write_the_refund_to_the_outbox() {
    let path =
        std::env::temp_dir().join(format!("consult-payments-{}.jsonl", uuid::Uuid::new_v4()));
    let provider = ConsolePayments::new(ConsoleSink::new(&path).expect("open sink"));
    let request = refund_request(Some(2_000));

    let created = provider.refund(&request).await.expect("written");

    assert_eq!(provider.name(), "console");
    assert_eq!(
        created,
        RefundCreated {
            refund_id: format!("console-{}", request.idempotency_key),
            status: "succeeded".to_owned(),
        }
    );
    let contents = std::fs::read_to_string(&path).expect("read outbox");
    let lines: Vec<serde_json::Value> = contents
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{contents}");
    assert_eq!(lines[0]["payments"], "refund");
    assert_eq!(lines[0]["payment_id"], request.payment_id.as_str());
    assert_eq!(lines[0]["consultation_id"], CONSULTATION_ID);
    assert!(lines[0]["at"].is_string());
    let _ = std::fs::remove_file(&path);
}
