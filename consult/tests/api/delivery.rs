//! Notifications leaving the engine for real providers on loopback: a Twilio fake that checks
//! every request as Twilio would, and a real SMTP server. Delivery callbacks must be signed;
//! failures are retried with backoff, dead-lettered, and can be re-queued by an admin.

use std::time::Duration;

use consult_api::Role;
use consult_reactors::channels::smtp::{SmtpConfig, SmtpTls};
use consult_reactors::twilio_signature;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, Backend, TestApp};

#[path = "../../../reactors/tests/fakes/mod.rs"]
mod fakes;

use fakes::smtp::SmtpFake;
use fakes::twilio::{TwilioBehavior, TwilioFake, AUTH_TOKEN, FROM_SMS, FROM_WHATSAPP};

async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check().await
}

async fn items(app: &TestApp, id: &str) -> Vec<Value> {
    let admin = app.token(Role::Admin, "admin-1");
    let body: Value = app
        .get(&format!("/v1/consultations/{id}/notifications"), &admin)
        .await
        .json()
        .await
        .expect("json");
    body["items"].as_array().cloned().unwrap_or_default()
}

fn find<'a>(items: &'a [Value], recipient: &str, kind: &str, channel: &str) -> Option<&'a Value> {
    items
        .iter()
        .find(|n| n["recipient_role"] == recipient && n["kind"] == kind && n["channel"] == channel)
}

async fn callback(app: &TestApp, form: &[(&str, &str)], signature: Option<String>) -> StatusCode {
    let path = "/v1/webhooks/twilio/messages";
    let mut request = app
        .client
        .post(format!("{}{path}", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            form.iter()
                .map(|(k, v)| format!("{k}={}", v.replace('+', "%2B")))
                .collect::<Vec<_>>()
                .join("&"),
        );
    if let Some(signature) = signature {
        request = request.header("x-twilio-signature", signature);
    }
    request.send().await.expect("callback sent").status()
}

fn sign(form: &[(&str, &str)]) -> String {
    let params: Vec<(String, String)> = form
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    // The engine's PUBLIC_BASE_URL in tests is http://127.0.0.1.
    twilio_signature::signature(
        AUTH_TOKEN,
        "http://127.0.0.1/v1/webhooks/twilio/messages",
        &params,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_twilio_and_smtp_and_failures_are_retried_then_dead_lettered() {
    let twilio = TwilioFake::start().await;
    let smtp = SmtpFake::start();
    let Some(app) = spawn_app_with(Backend::Postgres, |config| {
        let n = &mut config.notifications;
        let mut t = twilio.config();
        t.status_callback = None;
        n.twilio = Some(t);
        let mut s = SmtpConfig::new("127.0.0.1", "Clinic <no-reply@clinic.example>");
        s.port = smtp.port;
        s.tls = SmtpTls::None;
        n.smtp = Some(s);
        n.retry_base = Duration::from_millis(100);
        n.max_attempts = 3;
    })
    .await
    else {
        return;
    };
    app.register_provider("prov-1").await;
    let start = chrono::Utc::now() + chrono::Duration::days(2);
    let response = app
        .post(
            "/v1/consultations",
            &app.token(Role::Patient, "pat-1"),
            &json!({
                "provider_id": "prov-1",
                "starts_at": start.format("%Y-%m-%dT%H:00:00Z").to_string(),
                "duration_minutes": 30,
                "mode": "video",
                "timezone": "Europe/Paris",
                "contact": {"phone": "+33612345678", "email": "patient@example.org", "whatsapp": true},
                "reason": "persistent migraine",
            }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = response.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // The provider: an SMS through Twilio and an email through SMTP.
    assert!(
        eventually(Duration::from_secs(10), || async {
            twilio.accepted().len() == 1 && smtp.received().len() == 1
        })
        .await,
        "the provider's SMS and email go out"
    );
    let sms = &twilio.accepted()[0];
    assert_eq!(sms.path, twilio.messages_path());
    assert!(sms.auth_ok);
    assert_eq!(sms.field("To"), Some("+14155550100"));
    assert_eq!(sms.field("From"), Some(FROM_SMS));
    assert_eq!(
        sms.field("StatusCallback"),
        Some("http://127.0.0.1/v1/webhooks/twilio/messages")
    );
    let body = sms.field("Body").expect("a body");
    assert!(!body.to_lowercase().contains("migraine"), "{body}");
    let email = &smtp.received()[0];
    assert_eq!(email.to, vec!["grace@example.org".to_owned()]);
    let subject = email.header("Subject").expect("subject");
    assert!(!subject.to_lowercase().contains("migraine"), "{subject}");
    assert!(email.data.contains("text/plain") && email.data.contains("text/html"));

    // The patient opted in to WhatsApp.
    let provider = app.token(Role::Provider, "prov-1");
    let accepted = app
        .post(
            &format!("/v1/consultations/{id}/accept"),
            &provider,
            &json!({}),
        )
        .await;
    assert_eq!(accepted.status(), StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(10), || async {
            twilio.accepted().len() == 2 && smtp.received().len() == 2
        })
        .await
    );
    let whatsapp = &twilio.accepted()[1];
    assert_eq!(whatsapp.field("To"), Some("whatsapp:+33612345678"));
    assert_eq!(
        whatsapp.field("From").map(str::to_owned),
        Some(format!("whatsapp:{FROM_WHATSAPP}"))
    );
    let sid = whatsapp.sid.clone().expect("a message sid");
    assert!(
        eventually(Duration::from_secs(5), || async {
            find(&items(&app, &id).await, "patient", "accepted", "whatsapp")
                .is_some_and(|n| n["status"] == "sent" && n["provider_message_id"] == sid.as_str())
        })
        .await
    );

    // Delivery callbacks: unsigned or badly signed ones change nothing; a signed one does.
    let delivered = [("MessageSid", sid.as_str()), ("MessageStatus", "delivered")];
    assert_eq!(
        callback(&app, &delivered, None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        callback(&app, &delivered, Some("bm90IHRoZSBzaWduYXR1cmU=".into())).await,
        StatusCode::FORBIDDEN
    );
    let status = |items: Vec<Value>| {
        find(&items, "patient", "accepted", "whatsapp").map(|n| n["status"].clone())
    };
    assert_eq!(status(items(&app, &id).await), Some(json!("sent")));
    assert_eq!(
        callback(&app, &delivered, Some(sign(&delivered))).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(status(items(&app, &id).await), Some(json!("delivered")));
    // A late, out-of-order "sent" does not undo "delivered".
    let late = [("MessageSid", sid.as_str()), ("MessageStatus", "sent")];
    assert_eq!(
        callback(&app, &late, Some(sign(&late))).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(status(items(&app, &id).await), Some(json!("delivered")));

    // Twilio fails: the texts of the cancellation are retried with backoff, then dead-lettered.
    twilio.set_behavior(TwilioBehavior::Fail(500));
    let before = twilio.requests().len();
    let cancelled = app
        .post(
            &format!("/v1/consultations/{id}/cancel"),
            &provider,
            &json!({"reason": "unwell"}),
        )
        .await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    let admin = app.token(Role::Admin, "admin-1");
    let dead_letters = || async {
        let body: Value = app
            .get("/v1/admin/dead-letters", &admin)
            .await
            .json()
            .await
            .expect("json");
        body["items"].as_array().cloned().unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(15), || async {
            dead_letters().await.len() == 2
        })
        .await,
        "both texts are dead-lettered after their attempts"
    );
    // Three attempts each, two messages: six failed requests.
    assert_eq!(twilio.requests().len() - before, 6);
    let dead = dead_letters().await;
    for letter in &dead {
        assert_eq!(letter["attempts"], 3);
        assert!(
            letter["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("500")),
            "{letter}"
        );
        assert_eq!(letter["consultation_id"], id.as_str());
    }
    let log = items(&app, &id).await;
    for recipient in ["patient", "provider"] {
        let channel = if recipient == "patient" {
            "whatsapp"
        } else {
            "sms"
        };
        let entry = find(&log, recipient, "cancelled", channel).expect("logged");
        assert_eq!(entry["status"], "dead");
        assert_eq!(entry["attempts"], 3);
        // The emails went out meanwhile.
        assert_eq!(
            find(&log, recipient, "cancelled", "email").expect("email")["status"],
            "sent"
        );
    }

    // Twilio is back; an admin re-queues the dead letters and they go out.
    twilio.set_behavior(TwilioBehavior::Accept);
    for letter in &dead {
        let id = letter["id"].as_str().expect("id");
        let response = app
            .post(
                &format!("/v1/admin/dead-letters/{id}/retry"),
                &admin,
                &json!({}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let missing = app
        .post(
            "/v1/admin/dead-letters/no-such-job/retry",
            &admin,
            &json!({}),
        )
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let log = items(&app, &id).await;
            find(&log, "patient", "cancelled", "whatsapp").is_some_and(|n| n["status"] == "sent")
                && find(&log, "provider", "cancelled", "sms").is_some_and(|n| n["status"] == "sent")
        })
        .await,
        "re-queued dead letters are sent"
    );
    assert!(dead_letters().await.is_empty());
    let patient = app.token(Role::Patient, "pat-1");
    let other = app.token(Role::Patient, "pat-2");
    let forbidden = app.get("/v1/admin/dead-letters", &patient).await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let own = app
        .get(&format!("/v1/consultations/{id}/notifications"), &patient)
        .await;
    assert_eq!(own.status(), StatusCode::OK);
    let theirs = app
        .get(&format!("/v1/consultations/{id}/notifications"), &other)
        .await;
    assert_eq!(theirs.status(), StatusCode::FORBIDDEN);
}
