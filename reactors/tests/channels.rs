//! The notification channels against real loopback servers: a strict Twilio fake (axum), an
//! SMTP server (mailin-embedded) and a file for the console sink.

use consult_testkit as fakes;

use std::time::Duration;

use consult_reactors::channels::console::ConsoleSink;
use consult_reactors::channels::smtp::{SmtpConfig, SmtpEmail, SmtpTls};
use consult_reactors::channels::twilio::TwilioMessages;
use consult_reactors::channels::{Channel, ChannelKind, Message};
use fakes::smtp::{SmtpBehavior, SmtpFake};
use fakes::twilio::{self as twilio_fake, TwilioBehavior, TwilioFake};
use secrecy::SecretString;

const PATIENT_PHONE: &str = "+447911123489";
const PATIENT_EMAIL: &str = "jane.doe@example.org";

fn text_message(channel: ChannelKind) -> Message {
    Message {
        channel,
        to: PATIENT_PHONE.to_owned(),
        subject: None,
        text: "Your consultation starts at 10:30 & lasts 20 min. Reply STOP to opt out.".to_owned(),
        html: None,
        notification_id: format!("notif-{}", uuid::Uuid::new_v4()),
    }
}

fn email_message() -> Message {
    Message {
        channel: ChannelKind::Email,
        to: PATIENT_EMAIL.to_owned(),
        subject: Some("Your consultation is confirmed".to_owned()),
        text: "Hello Jane, your consultation is on Monday at 10:30.".to_owned(),
        html: Some("<p>Hello Jane, your consultation is on <b>Monday at 10:30</b>.</p>".to_owned()),
        notification_id: format!("notif-{}", uuid::Uuid::new_v4()),
    }
}

fn twilio_channel(fake: &TwilioFake) -> TwilioMessages {
    TwilioMessages::new(fake.config(), Duration::from_secs(5)).expect("build Twilio channel")
}

// ---------------------------------------------------------------------------------------------
// Twilio

#[tokio::test]
async fn twilio_sends_sms_as_twilio_expects() {
    let fake = TwilioFake::start().await;
    let channel = twilio_channel(&fake);
    let message = text_message(ChannelKind::Sms);

    let sent = channel.send(&message).await.expect("SMS accepted");

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.status, 201);
    assert_eq!(request.path, fake.messages_path());
    assert!(request.auth_ok);
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.field("To"), Some(PATIENT_PHONE));
    assert_eq!(request.field("From"), Some(twilio_fake::FROM_SMS));
    assert_eq!(request.field("Body"), Some(message.text.as_str()));
    assert_eq!(
        request.field("StatusCallback"),
        Some(twilio_fake::STATUS_CALLBACK)
    );
    let sid = sent.provider_message_id.expect("a message SID");
    assert!(sid.starts_with("SM"), "{sid}");
    assert_eq!(request.sid.as_deref(), Some(sid.as_str()));
}

#[tokio::test]
async fn twilio_prefixes_whatsapp_addresses_and_omits_an_unset_callback() {
    let fake = TwilioFake::start().await;
    let mut config = fake.config();
    config.status_callback = None;
    let channel = TwilioMessages::new(config, Duration::from_secs(5)).expect("channel");

    let sent = channel
        .send(&text_message(ChannelKind::Whatsapp))
        .await
        .expect("WhatsApp accepted");

    assert!(sent.provider_message_id.is_some());
    let request = &fake.accepted()[0];
    assert_eq!(request.field("To"), Some("whatsapp:+447911123489"));
    assert_eq!(
        request.field("From").map(str::to_owned),
        Some(format!("whatsapp:{}", twilio_fake::FROM_WHATSAPP))
    );
    assert_eq!(request.field("StatusCallback"), None);
}

#[tokio::test]
async fn twilio_server_errors_and_throttling_are_retryable() {
    let fake = TwilioFake::start().await;
    let channel = twilio_channel(&fake);

    for status in [500, 503, 429] {
        fake.set_behavior(TwilioBehavior::Fail(status));
        let error = channel
            .send(&text_message(ChannelKind::Sms))
            .await
            .expect_err("provider failure");
        assert!(error.retryable, "{status}: {error:?}");
        assert!(error.message.contains(&status.to_string()), "{error:?}");
    }
    assert_eq!(fake.requests().len(), 3);
    assert!(fake.accepted().is_empty());
}

#[tokio::test]
async fn twilio_timeouts_are_retryable() {
    let fake = TwilioFake::start().await;
    fake.set_behavior(TwilioBehavior::Hang(Duration::from_secs(3)));
    let channel = TwilioMessages::new(fake.config(), Duration::from_millis(300)).expect("channel");

    let started = std::time::Instant::now();
    let error = channel
        .send(&text_message(ChannelKind::Sms))
        .await
        .expect_err("timed out");

    assert!(error.retryable, "{error:?}");
    assert!(error.message.contains("timed out"), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn twilio_connection_failures_are_retryable() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let fake = TwilioFake::start().await;
    let mut config = fake.config();
    config.api_base = format!("http://127.0.0.1:{port}");
    let channel = TwilioMessages::new(config, Duration::from_secs(2)).expect("channel");

    let error = channel
        .send(&text_message(ChannelKind::Sms))
        .await
        .expect_err("nothing listens");

    assert!(error.retryable, "{error:?}");
}

#[tokio::test]
async fn twilio_refusals_are_permanent_and_keep_the_number_out() {
    let fake = TwilioFake::start().await;
    fake.set_behavior(TwilioBehavior::Reject {
        status: 400,
        code: 21610,
        message: format!("Attempt to send to unsubscribed recipient {PATIENT_PHONE}"),
    });
    let channel = twilio_channel(&fake);
    let message = text_message(ChannelKind::Sms);

    let error = channel.send(&message).await.expect_err("refused");

    assert!(!error.retryable, "{error:?}");
    assert!(error.message.contains("400"), "{error:?}");
    assert!(error.message.contains("21610"), "{error:?}");
    assert!(
        error.message.contains("unsubscribed recipient"),
        "{error:?}"
    );
    assert!(!error.message.contains(PATIENT_PHONE), "{error:?}");
    assert!(!error.message.contains(&message.text), "{error:?}");
}

#[tokio::test]
async fn twilio_wrong_credentials_are_rejected_permanently() {
    let fake = TwilioFake::start().await;
    let mut config = fake.config();
    config.auth_token = SecretString::from("not-the-token");
    let channel = TwilioMessages::new(config, Duration::from_secs(5)).expect("channel");

    let error = channel
        .send(&text_message(ChannelKind::Sms))
        .await
        .expect_err("unauthorised");

    assert!(!error.retryable, "{error:?}");
    assert!(error.message.contains("401"), "{error:?}");
    assert!(error.message.contains("20003"), "{error:?}");
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert!(!requests[0].auth_ok);
}

#[tokio::test]
async fn twilio_refuses_locally_what_it_cannot_send() {
    let fake = TwilioFake::start().await;
    let mut config = fake.config();
    config.from_whatsapp = None;
    let channel = TwilioMessages::new(config, Duration::from_secs(5)).expect("channel");

    let no_sender = channel
        .send(&text_message(ChannelKind::Whatsapp))
        .await
        .expect_err("no WhatsApp sender");
    assert!(!no_sender.retryable);
    assert!(no_sender.message.contains("whatsapp"), "{no_sender:?}");

    let email = channel
        .send(&email_message())
        .await
        .expect_err("email is not Twilio's");
    assert!(!email.retryable);

    let bad_number = Message {
        to: "07911 123489".to_owned(),
        ..text_message(ChannelKind::Sms)
    };
    let error = channel.send(&bad_number).await.expect_err("not E.164");
    assert!(!error.retryable);
    assert!(!error.message.contains("07911 123489"), "{error:?}");

    let empty = Message {
        text: "  ".to_owned(),
        ..text_message(ChannelKind::Sms)
    };
    assert!(
        !channel
            .send(&empty)
            .await
            .expect_err("empty body")
            .retryable
    );

    assert!(fake.requests().is_empty(), "nothing should reach Twilio");
}

/// The fake must refuse what Twilio refuses, or the tests above would prove nothing.
#[tokio::test]
async fn twilio_fake_rejects_malformed_requests() {
    let fake = TwilioFake::start().await;
    let client = reqwest::Client::new();
    let url = format!("{}{}", fake.base_url, fake.messages_path());
    let good = [
        ("To", PATIENT_PHONE),
        ("From", twilio_fake::FROM_SMS),
        ("Body", "hi"),
    ];
    let status_of = |request: reqwest::RequestBuilder| async move {
        request
            .send()
            .await
            .expect("fake answers")
            .status()
            .as_u16()
    };

    // Sanity: a well-formed request passes.
    let ok = client
        .post(&url)
        .basic_auth(twilio_fake::ACCOUNT_SID, Some(twilio_fake::AUTH_TOKEN))
        .form(&good);
    assert_eq!(status_of(ok).await, 201);

    let no_auth = client.post(&url).form(&good);
    assert_eq!(status_of(no_auth).await, 401);

    let other_account = client
        .post(format!(
            "{}/2010-04-01/Accounts/AC99999999999999999999999999999999/Messages.json",
            fake.base_url
        ))
        .basic_auth(twilio_fake::ACCOUNT_SID, Some(twilio_fake::AUTH_TOKEN))
        .form(&good);
    assert_eq!(status_of(other_account).await, 404);

    let json_body = client
        .post(&url)
        .basic_auth(twilio_fake::ACCOUNT_SID, Some(twilio_fake::AUTH_TOKEN))
        .json(
            &serde_json::json!({"To": PATIENT_PHONE, "From": twilio_fake::FROM_SMS, "Body": "hi"}),
        );
    assert_eq!(status_of(json_body).await, 415);

    let cases: [&[(&str, &str)]; 5] = [
        &[("From", twilio_fake::FROM_SMS), ("Body", "hi")],
        &[
            ("To", "447911123489"),
            ("From", twilio_fake::FROM_SMS),
            ("Body", "hi"),
        ],
        &[("To", PATIENT_PHONE), ("From", twilio_fake::FROM_SMS)],
        &[
            ("To", "whatsapp:+447911123489"),
            ("From", twilio_fake::FROM_SMS),
            ("Body", "hi"),
        ],
        &[
            ("To", PATIENT_PHONE),
            ("From", twilio_fake::FROM_SMS),
            ("Body", "hi"),
            ("StatusCallback", "/relative/path"),
        ],
    ];
    for form in cases {
        let request = client
            .post(&url)
            .basic_auth(twilio_fake::ACCOUNT_SID, Some(twilio_fake::AUTH_TOKEN))
            .form(form);
        assert_eq!(status_of(request).await, 400, "{form:?}");
    }
    assert_eq!(fake.accepted().len(), 1);
    assert_eq!(fake.requests().len(), 9);
}

// ---------------------------------------------------------------------------------------------
// SMTP

fn smtp_channel(fake: &SmtpFake) -> SmtpEmail {
    SmtpEmail::new(SmtpConfig {
        host: "127.0.0.1".to_owned(),
        port: fake.port,
        username: None,
        password: None,
        tls: SmtpTls::None,
        from: "Clinic <no-reply@clinic.example>".to_owned(),
        timeout: Duration::from_secs(5),
    })
    .expect("build SMTP channel")
}

#[tokio::test]
async fn smtp_sends_a_multipart_email() {
    let fake = SmtpFake::start();
    let channel = smtp_channel(&fake);
    let message = email_message();

    let sent = channel.send(&message).await.expect("email accepted");

    let received = fake.received();
    assert_eq!(received.len(), 1);
    let email = &received[0];
    assert_eq!(email.from, "no-reply@clinic.example");
    assert_eq!(email.to, vec![PATIENT_EMAIL.to_owned()]);
    assert_eq!(
        email.header("Subject").as_deref(),
        Some("Your consultation is confirmed")
    );
    assert_eq!(email.header("To").as_deref(), Some(PATIENT_EMAIL));
    assert_eq!(
        email.header("From").as_deref(),
        Some("Clinic <no-reply@clinic.example>")
    );
    assert_eq!(
        email.header("X-Notification-Id").as_deref(),
        Some(message.notification_id.as_str())
    );
    let content_type = email.header("Content-Type").expect("Content-Type");
    assert!(
        content_type.starts_with("multipart/alternative"),
        "{content_type}"
    );
    assert!(
        email.data.contains("Content-Type: text/plain"),
        "{}",
        email.data
    );
    assert!(
        email.data.contains("Content-Type: text/html"),
        "{}",
        email.data
    );
    assert!(email.data.contains(&message.text), "{}", email.data);
    assert!(
        email.data.contains("<b>Monday at 10:30</b>"),
        "{}",
        email.data
    );
    let message_id = sent.provider_message_id.expect("a Message-ID");
    assert!(message_id.ends_with("@clinic.example>"), "{message_id}");
    assert_eq!(
        email.header("Message-ID").as_deref(),
        Some(message_id.as_str())
    );
}

#[tokio::test]
async fn smtp_rejected_recipients_are_permanent() {
    let fake = SmtpFake::start();
    fake.set_behavior(SmtpBehavior::RejectRecipients);
    let channel = smtp_channel(&fake);

    let error = channel
        .send(&email_message())
        .await
        .expect_err("recipient refused");

    assert!(!error.retryable, "{error:?}");
    assert!(error.message.contains("550"), "{error:?}");
    assert!(!error.message.contains(PATIENT_EMAIL), "{error:?}");
    assert!(fake.received().is_empty());
}

#[tokio::test]
async fn smtp_deferrals_and_connection_failures_are_retryable() {
    let fake = SmtpFake::start();
    fake.set_behavior(SmtpBehavior::DeferRecipients);
    let channel = smtp_channel(&fake);

    let deferred = channel
        .send(&email_message())
        .await
        .expect_err("recipient deferred");
    assert!(deferred.retryable, "{deferred:?}");
    assert!(deferred.message.contains("451"), "{deferred:?}");
    assert!(fake.received().is_empty());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let nowhere = SmtpEmail::new(SmtpConfig {
        host: "127.0.0.1".to_owned(),
        port,
        username: None,
        password: None,
        tls: SmtpTls::None,
        from: "no-reply@clinic.example".to_owned(),
        timeout: Duration::from_secs(2),
    })
    .expect("channel");
    let error = nowhere
        .send(&email_message())
        .await
        .expect_err("nothing listens");
    assert!(error.retryable, "{error:?}");
}

// ---------------------------------------------------------------------------------------------
// Console sink

#[tokio::test]
async fn console_sink_appends_one_json_line_per_message() {
    let dir = std::env::temp_dir().join(format!("consult-console-{}", uuid::Uuid::new_v4()));
    let path = dir.join("nested").join("notifications.jsonl");
    let sink = ConsoleSink::new(&path).expect("open sink");
    assert_eq!(sink.path(), path.as_path());

    let sms = text_message(ChannelKind::Sms);
    let email = email_message();
    let sent_sms = sink.send(&sms).await.expect("sms written");
    let sent_email = sink.send(&email).await.expect("email written");
    assert_eq!(
        sent_sms.provider_message_id,
        Some(format!("console-{}", sms.notification_id))
    );
    assert_eq!(
        sent_email.provider_message_id,
        Some(format!("console-{}", email.notification_id))
    );

    // A second sink on the same file appends rather than truncating.
    let again = ConsoleSink::new(&path).expect("reopen sink");
    let whatsapp = text_message(ChannelKind::Whatsapp);
    again.send(&whatsapp).await.expect("whatsapp written");

    let contents = std::fs::read_to_string(&path).expect("read sink file");
    let lines: Vec<serde_json::Value> = contents
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 3, "{contents}");
    assert!(contents.ends_with('\n'));

    assert_eq!(lines[0]["channel"], "sms");
    assert_eq!(lines[0]["to"], PATIENT_PHONE);
    assert_eq!(lines[0]["text"], sms.text.as_str());
    assert_eq!(lines[0]["subject"], serde_json::Value::Null);
    assert_eq!(lines[0]["notification_id"], sms.notification_id.as_str());

    assert_eq!(lines[1]["channel"], "email");
    assert_eq!(lines[1]["to"], PATIENT_EMAIL);
    assert_eq!(lines[1]["subject"], "Your consultation is confirmed");
    assert_eq!(lines[1]["html"], email.html.as_deref().unwrap_or_default());

    assert_eq!(lines[2]["channel"], "whatsapp");
    assert_eq!(
        lines[2]["notification_id"],
        whatsapp.notification_id.as_str()
    );

    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[tokio::test]
async fn console_sink_keeps_concurrent_lines_whole() {
    let path = std::env::temp_dir().join(format!("consult-console-{}.jsonl", uuid::Uuid::new_v4()));
    let sink = ConsoleSink::new(&path).expect("open sink");

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let sink = sink.clone();
            tokio::spawn(async move {
                let message = Message {
                    text: "x".repeat(10_000),
                    ..text_message(ChannelKind::Sms)
                };
                sink.send(&message).await.map(|_| message.notification_id)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.expect("task").expect("written"));
    }

    let contents = std::fs::read_to_string(&path).expect("read sink file");
    let mut written: Vec<String> = contents
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("whole JSON line");
            value["notification_id"].as_str().expect("id").to_owned()
        })
        .collect();
    written.sort();
    ids.sort();
    assert_eq!(written, ids);

    std::fs::remove_file(&path).expect("clean up");
}
