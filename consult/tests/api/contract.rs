//! Delivery against a mock built from Twilio's own published OpenAPI document
//! (`contracts/twilio`, served by Stoplight Prism through `scripts/twilio-contract`), not only
//! against the fakes we wrote. Prism refuses a request that breaks Twilio's contract (422,
//! which the engine takes as permanent: the message would be dead) and answers every valid one
//! with the document's example, the same sid for every message.
//!
//! Skipped unless `TWILIO_MOCK_API_BASE` names the mock; `TWILIO_CONTRACT_REQUIRED=true` (set
//! by the script, which `.ci/run` runs) makes a missing mock a failure.

use std::time::Duration;

use consult_reactors::channels::twilio::TwilioConfig;
use secrecy::SecretString;

use crate::helpers::{eventually, spawn_app_with, Backend};
use crate::on_both_backends;

/// The mock's base URL, or `None` (the test is skipped) when it is not running.
fn mock_base() -> Option<String> {
    match std::env::var("TWILIO_MOCK_API_BASE") {
        Ok(base) if !base.is_empty() => Some(base),
        _ => {
            assert!(
                std::env::var("TWILIO_CONTRACT_REQUIRED").as_deref() != Ok("true"),
                "TWILIO_MOCK_API_BASE is required"
            );
            eprintln!("SKIPPED: TWILIO_MOCK_API_BASE is not set (scripts/twilio-contract sets it)");
            None
        }
    }
}

const BOOKINGS: i64 = 10;
const LEASE: Duration = Duration::from_secs(1);

async fn sms_to_the_published_contract_are_sent_once_each(backend: Backend) {
    let Some(base) = mock_base() else {
        return;
    };
    let twilio = TwilioConfig {
        api_base: base,
        account_sid: "AC00000000000000000000000000000001".to_owned(),
        auth_token: SecretString::from("contract-auth-token-0123456789abcdef"),
        from_sms: Some("+15005550006".to_owned()),
        from_whatsapp: Some("+15005550006".to_owned()),
        status_callback: Some("https://consult.example/v1/webhooks/twilio/messages".to_owned()),
    };
    let setup = |config: &mut consult::Config| {
        config.notifications.twilio = Some(twilio.clone());
        config.notifications.job_lease = LEASE;
        config.notifications.retry_base = Duration::from_millis(100);
    };
    // Booked while no worker runs, so that the provider's SMS are claimed in one batch.
    let Some(app) = spawn_app_with(backend, |config| {
        setup(config);
        config.roles.workers = false;
    })
    .await
    else {
        return;
    };
    app.register_provider("prov-1").await;
    for n in 0..BOOKINGS {
        app.book(&format!("pat-{n}"), "prov-1", 30 + n).await;
    }
    let app = app.restart_with(setup).await;
    let sms_sent = || async {
        app.db
            .scalar(
                "SELECT count(*) FROM notification_log WHERE channel = 'sms' AND status = 'sent' \
                   AND provider_message_id LIKE 'SM%'",
            )
            .await
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            sms_sent().await == BOOKINGS
        })
        .await,
        "every SMS is accepted by the contract and recorded: {} of {BOOKINGS}; {}",
        sms_sent().await,
        app.db
            .text(
                "SELECT COALESCE(max(last_error), 'no error') FROM notification_log \
                  WHERE channel = 'sms'"
            )
            .await
    );
    let sids = app
        .db
        .scalar(
            "SELECT count(DISTINCT provider_message_id) FROM notification_log \
              WHERE channel = 'sms'",
        )
        .await;
    assert_eq!(sids, 1, "the mock answers one sid for every message");
    // Three leases more: nothing is claimed or sent again.
    tokio::time::sleep(LEASE * 3 + Duration::from_millis(500)).await;
    let attempts = app
        .db
        .scalar(
            "SELECT CAST(COALESCE(max(attempts), 0) AS BIGINT) FROM jobs WHERE kind = 'notify' \
               AND consultation_id IN (SELECT consultation_id FROM notification_log \
                                        WHERE channel = 'sms')",
        )
        .await;
    assert_eq!(attempts, 1, "each message was sent once");
    let unfinished = app
        .db
        .scalar("SELECT count(*) FROM jobs WHERE kind = 'notify' AND status <> 'done'")
        .await;
    assert_eq!(unfinished, 0, "every notify job is done");
}

on_both_backends!(sms_to_the_published_contract_are_sent_once_each);
