//! Notifications leaving the engine for real providers on loopback: a Twilio fake that checks
//! every request as Twilio would, and a real SMTP server. Delivery callbacks must be signed;
//! failures are retried with backoff, dead-lettered, and can be re-queued by an admin.

use std::time::Duration;

use consult_api::Role;
use consult_reactors::channels::smtp::{SmtpConfig, SmtpTls};
use consult_reactors::twilio_signature;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{eventually, spawn_app_with, Backend, TestApp};

use consult_testkit as fakes;

use fakes::smtp::SmtpFake;
use fakes::twilio::{TwilioBehavior, TwilioFake, AUTH_TOKEN, FROM_SMS, FROM_WHATSAPP};

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
            find(
                &app.notifications(&id).await,
                "patient",
                "accepted",
                "whatsapp",
            )
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
    assert_eq!(status(app.notifications(&id).await), Some(json!("sent")));
    assert_eq!(
        callback(&app, &delivered, Some(sign(&delivered))).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(app.notifications(&id).await),
        Some(json!("delivered"))
    );
    // A late, out-of-order "sent" does not undo "delivered".
    let late = [("MessageSid", sid.as_str()), ("MessageStatus", "sent")];
    assert_eq!(
        callback(&app, &late, Some(sign(&late))).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(app.notifications(&id).await),
        Some(json!("delivered"))
    );

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
    let dead_letters = || app.dead_letters();
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
    let log = app.notifications(&id).await;
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
            let log = app.notifications(&id).await;
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

/// A `consult serve` worker process on `db`, sending SMS through the Twilio fake, with 2 s
/// leases on subscriptions and jobs.
fn spawn_worker(db: &crate::helpers::TestDb, twilio: &TwilioFake, n: u32) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_consult"))
        .arg("serve")
        .env("ROLES", "workers")
        // Its probes on a port of its own: several workers run at once.
        .env("ADMIN_BIND", "127.0.0.1:0")
        .env("DATABASE_URL", &db.url)
        .env("DATA_DIR", db.data_dir.join(format!("worker-{n}")))
        .env("SUBSCRIPTION_LEASE", "2s")
        .env("JOB_LEASE", "2s")
        .env(
            "AUTH_JWT_SECRET",
            "worker-test-secret-that-is-long-enough-0",
        )
        .env("TWILIO_ACCOUNT_SID", fakes::twilio::ACCOUNT_SID)
        .env("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
        .env("TWILIO_FROM_SMS", FROM_SMS)
        .env("TWILIO_API_BASE", &twilio.base_url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start a worker process")
}

/// A migrated store on a fresh PostgreSQL database with one provider and `bookings`
/// consultations booked at distinct hours (so each provider SMS has its own body); announces
/// them to worker processes.
async fn seeded(
    bookings: usize,
) -> Option<(
    crate::helpers::TestDb,
    crate::helpers::DbGuard,
    consult_store::Store,
)> {
    use consult_domain::{
        Booking, BoundedText, Consultation, ConsultationCommand, ConsultationError, Contact,
        DurationMinutes, EmailAddress, Mode, PatientId, PhoneNumber, Provider, ProviderCommand,
        ProviderError, ProviderId, ProviderProfile, StartTime, TimeZone,
    };
    use consult_store::{Metadata, Store, StoreOptions};

    let db = crate::helpers::TestDb::fresh(Backend::Postgres).await?;
    let guard = crate::helpers::DbGuard(db.clone());
    let store = Store::connect(&StoreOptions::new(db.url.clone()))
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    let metadata = Metadata {
        actor_id: "test".into(),
        actor_role: "system".into(),
        correlation_id: "kill".into(),
        causation_id: "kill".into(),
        request_id: String::new(),
    };
    let profile = ProviderProfile {
        id: ProviderId::parse("prov-1").expect("id"),
        name: BoundedText::parse("Dr. Grace Hopper", 200).expect("name"),
        phone: PhoneNumber::parse("+14155550100").expect("phone"),
        email: EmailAddress::parse("grace@example.org").expect("email"),
        timezone: TimeZone::parse("America/New_York").expect("tz"),
        fee: None,
    };
    store
        .execute::<Provider, ProviderError, _>("prov-1", &metadata, None, |p| {
            p.decide(ProviderCommand::Register {
                profile: profile.clone(),
                at: chrono::Utc::now(),
            })
        })
        .await
        .expect("provider");
    for n in 0..bookings {
        let id = uuid::Uuid::new_v4();
        let now = chrono::Utc::now();
        let booking = Booking {
            consultation_id: id,
            patient_id: PatientId::parse(&format!("pat-{n}")).expect("patient"),
            provider_id: ProviderId::parse("prov-1").expect("provider"),
            starts_at: StartTime::parse(now + chrono::Duration::hours(30 + n as i64), now)
                .expect("start"),
            duration: DurationMinutes::parse(30).expect("duration"),
            mode: Mode::Video,
            timezone: TimeZone::parse("Europe/Paris").expect("tz"),
            contact: Contact::new(
                None,
                Some(EmailAddress::parse("patient@example.org").expect("email")),
                false,
            )
            .expect("contact"),
            reason: None,
            price: None,
        };
        store
            .execute::<Consultation, ConsultationError, _>(&id.to_string(), &metadata, None, |c| {
                c.decide(ConsultationCommand::Book {
                    booking: booking.clone(),
                    at: now,
                })
            })
            .await
            .expect("booked");
    }
    store.wake_subscribers();
    sqlx::query("SELECT pg_notify('consult_events', '')")
        .execute(match store.db() {
            consult_store::Db::Postgres(pool) => pool,
            consult_store::Db::Sqlite(_) => unreachable!("PostgreSQL"),
        })
        .await
        .expect("notify");

    Some((db, guard, store))
}

/// A worker killed with -9 while its sends hang at Twilio: once another worker runs and the
/// dead one's job locks have run out, every notification is sent. A message is sent twice only
/// if it was in flight at the kill (at least once, never lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_dispatch_loses_no_notification() {
    const BOOKINGS: usize = 8;
    let twilio = TwilioFake::start().await;
    twilio.set_behavior(TwilioBehavior::Hang(Duration::from_secs(3)));
    let Some((db, _guard, store)) = seeded(BOOKINGS).await else {
        return;
    };
    let mut first = spawn_worker(&db, &twilio, 1);

    // Sends hang at Twilio; kill the worker while they are in flight.
    assert!(
        eventually(Duration::from_secs(15), || async {
            !twilio.arrivals().is_empty()
        })
        .await,
        "the first worker starts sending"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.start_kill().expect("kill -9");
    let _ = first.wait().await;
    let in_flight = twilio.arrivals().len();
    assert!(
        twilio.accepted().is_empty(),
        "nothing was answered before the kill"
    );

    twilio.set_behavior(TwilioBehavior::Accept);
    let _second = spawn_worker(&db, &twilio, 2);
    let sent = || async {
        db.scalar("SELECT count(*) FROM notification_log WHERE status = 'sent'")
            .await
    };
    let total = || async { db.scalar("SELECT count(*) FROM notification_log").await };
    assert!(
        eventually(Duration::from_secs(30), || async {
            total().await == BOOKINGS as i64 * 2 && sent().await == BOOKINGS as i64 * 2
        })
        .await,
        "every notification is sent after the restart: {} of {}",
        sent().await,
        total().await
    );
    let arrivals = twilio.arrivals();
    let mut per_body: std::collections::HashMap<String, usize> = Default::default();
    for form in &arrivals {
        let body = form
            .iter()
            .find(|(k, _)| k == "Body")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        *per_body.entry(body).or_default() += 1;
    }
    assert_eq!(per_body.len(), BOOKINGS, "every booking's SMS arrived");
    let twice = per_body.values().filter(|n| **n == 2).count();
    assert!(per_body.values().all(|n| *n <= 2), "{per_body:?}");
    assert!(
        twice <= in_flight,
        "only messages in flight at the kill went twice ({twice} > {in_flight})"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM jobs WHERE status <> 'done' AND kind = 'notify'")
            .await,
        0
    );
    store.close().await;
}

/// Two workers dispatching the same queue at once: every notification goes out exactly once
/// (`SKIP LOCKED` claims), and both share the work of the subscriptions and jobs safely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_at_once_send_every_notification_exactly_once() {
    // Under the flood guard's default of 20 messages per recipient and hour.
    const BOOKINGS: usize = 16;
    let twilio = TwilioFake::start().await;
    let Some((db, _guard, store)) = seeded(BOOKINGS).await else {
        return;
    };
    let _workers = [spawn_worker(&db, &twilio, 1), spawn_worker(&db, &twilio, 2)];
    assert!(
        eventually(Duration::from_secs(30), || async {
            db.scalar("SELECT count(*) FROM notification_log WHERE status = 'sent'")
                .await
                == BOOKINGS as i64 * 2
        })
        .await,
        "every notification is sent"
    );
    // Nothing more arrives afterwards.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let arrivals = twilio.arrivals();
    assert_eq!(arrivals.len(), BOOKINGS, "one SMS per booking, no more");
    let mut bodies: Vec<String> = arrivals
        .iter()
        .filter_map(|form| {
            form.iter()
                .find(|(k, _)| k == "Body")
                .map(|(_, v)| v.clone())
        })
        .collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), BOOKINGS, "each booking's SMS once");
    assert_eq!(
        db.scalar("SELECT count(*) FROM jobs WHERE kind = 'notify' AND status = 'done'")
            .await,
        BOOKINGS as i64 * 2
    );
    store.close().await;
}
