//! The Twilio Video and Voice adapters against strict loopback fakes of Twilio's Rooms and
//! Calls APIs. The access token's known-answer tests live with the token code
//! (`src/video/token.rs`).

use consult_testkit as fakes;
use consult_testkit::closed_base_url;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{TimeZone as _, Utc};
use consult_reactors::video::twilio::TwilioVideo;
use consult_reactors::video::{AccessGrant, RoomRequest, VideoProvider};
use consult_reactors::voice::twilio::TwilioVoice;
use consult_reactors::voice::{CallRequest, VoiceProvider};
use fakes::twilio::{self as twilio_fake, TwilioBehavior, TwilioFake};
use fakes::video::{self as video_fake, VideoFake};
use secrecy::SecretString;

const PATIENT_PHONE: &str = "+447911123489";
const ROOM_CALLBACK: &str = "https://consult.example/v1/webhooks/twilio/video";
const TWIML_URL: &str = "https://consult.example/v1/webhooks/twilio/voice/twiml?call=c-1";
const CALL_CALLBACK: &str = "https://consult.example/v1/webhooks/twilio/voice/status";

fn video(fake: &VideoFake) -> TwilioVideo {
    TwilioVideo::new(fake.config(), Duration::from_secs(5)).expect("build Twilio Video")
}

fn voice(fake: &TwilioFake) -> TwilioVoice {
    TwilioVoice::new(fake.voice_config(), Duration::from_secs(5)).expect("build Twilio Voice")
}

fn room_request() -> RoomRequest {
    RoomRequest {
        name: format!("consult-{}", uuid::Uuid::new_v4().simple()),
        status_callback: Some(ROOM_CALLBACK.to_owned()),
    }
}

fn call_request() -> CallRequest {
    CallRequest {
        to: PATIENT_PHONE.to_owned(),
        instructions_url: TWIML_URL.to_owned(),
        status_callback: CALL_CALLBACK.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Video rooms

#[tokio::test]
async fn a_room_is_created_with_every_field_twilio_needs() {
    let fake = VideoFake::start().await;
    let provider = video(&fake);
    let request = room_request();

    let room = provider.create_room(&request).await.expect("room created");

    let requests = fake.create_requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.status, 201);
    assert!(sent.auth_ok);
    assert_eq!(
        sent.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(sent.field("UniqueName"), Some(request.name.as_str()));
    assert_eq!(sent.field("Type"), Some("group"));
    assert_eq!(sent.field("MaxParticipants"), Some("2"));
    assert_eq!(sent.field("StatusCallback"), Some(ROOM_CALLBACK));
    assert_eq!(sent.field("StatusCallbackMethod"), Some("POST"));
    assert_eq!(sent.field("EmptyRoomTimeout"), Some("5"));
    assert_eq!(sent.field("UnusedRoomTimeout"), Some("60"));

    assert_eq!(room.name, request.name);
    let held = fake.room(&request.name).expect("the fake holds the room");
    assert_eq!(room.sid.as_deref(), Some(held.sid.as_str()));
    assert!(
        held.sid.starts_with("RM") && held.sid.len() == 34,
        "{held:?}"
    );
    assert!(held.in_progress());
    assert_eq!(held.max_participants, 2);
    assert_eq!(held.unused_room_timeout, 60);
}

#[tokio::test]
async fn a_room_without_a_callback_sends_neither_callback_field() {
    let fake = VideoFake::start().await;
    let mut request = room_request();
    request.status_callback = None;

    video(&fake)
        .create_room(&request)
        .await
        .expect("room created");

    let sent = &fake.create_requests()[0];
    assert_eq!(sent.field("StatusCallback"), None);
    assert_eq!(sent.field("StatusCallbackMethod"), None);
}

#[tokio::test]
async fn creating_the_same_room_twice_gives_the_same_room_and_creates_one() {
    let fake = VideoFake::start().await;
    let provider = video(&fake);
    let request = room_request();

    let first = provider.create_room(&request).await.expect("first create");
    let second = provider.create_room(&request).await.expect("second create");

    assert_eq!(first, second);
    assert!(first.sid.is_some());
    assert_eq!(fake.created(), 1);
    let answers: Vec<(String, u16)> = fake
        .requests()
        .iter()
        .map(|request| (request.method.clone(), request.status))
        .collect();
    assert_eq!(
        answers,
        [
            ("POST".to_owned(), 201),
            ("POST".to_owned(), 400),
            ("GET".to_owned(), 200)
        ]
    );
}

#[tokio::test]
async fn a_name_whose_room_ended_gets_a_new_room() {
    let fake = VideoFake::start().await;
    let provider = video(&fake);
    let request = room_request();
    let first = provider.create_room(&request).await.expect("first create");
    assert!(
        fake.complete(&request.name),
        "Twilio closes the unused room"
    );

    let second = provider.create_room(&request).await.expect("second create");

    assert_ne!(first.sid, second.sid);
    assert_eq!(fake.created(), 2);
}

#[tokio::test]
async fn ending_a_room_completes_it_and_ending_it_again_is_fine() {
    let fake = VideoFake::start().await;
    let provider = video(&fake);
    let request = room_request();
    let room = provider.create_room(&request).await.expect("room created");
    let sid = room.sid.as_deref().expect("a room sid");

    provider
        .end_room(&request.name, Some(sid))
        .await
        .expect("room ended");
    let held = fake.room(sid).expect("room by sid");
    assert_eq!(held.status, "completed");
    let update = fake.requests().pop().expect("the update request");
    assert_eq!(update.path, format!("/v1/Rooms/{sid}"));
    assert_eq!(update.field("Status"), Some("completed"));
    assert_eq!(update.status, 202);

    // By sid: Twilio says the room is not in progress (400, 53112).
    provider
        .end_room(&request.name, Some(sid))
        .await
        .expect("ending again by sid is fine");
    assert_eq!(fake.requests().pop().map(|r| r.status), Some(400));
    // By name: the name no longer resolves (404).
    provider
        .end_room(&request.name, None)
        .await
        .expect("ending again by name is fine");
    assert_eq!(fake.requests().pop().map(|r| r.status), Some(404));
}

#[tokio::test]
async fn a_room_can_be_ended_by_name_alone() {
    let fake = VideoFake::start().await;
    let provider = video(&fake);
    let request = room_request();
    let room = provider.create_room(&request).await.expect("room created");

    provider
        .end_room(&request.name, None)
        .await
        .expect("room ended");

    let sid = room.sid.expect("a room sid");
    assert_eq!(fake.room(&sid).expect("room").status, "completed");
    assert_eq!(
        fake.requests().pop().map(|r| r.path),
        Some(format!("/v1/Rooms/{}", request.name))
    );
}

#[tokio::test]
async fn wrong_video_credentials_are_refused_permanently() {
    let fake = VideoFake::start().await;
    let mut config = fake.config();
    config.auth_token = SecretString::from("not-the-auth-token");
    let provider = TwilioVideo::new(config, Duration::from_secs(5)).expect("provider");

    let error = provider
        .create_room(&room_request())
        .await
        .expect_err("refused");
    assert!(!error.retryable, "{error:?}");
    assert!(error.message.contains("401"), "{error:?}");
    assert!(!error.message.contains("not-the-auth-token"), "{error:?}");

    let error = provider
        .end_room("consult-x", Some("RM00000000000000000000000000000000"))
        .await
        .expect_err("refused");
    assert!(!error.retryable, "{error:?}");
    assert_eq!(fake.created(), 0);
}

#[tokio::test]
async fn video_outages_and_throttling_are_retryable() {
    let fake = VideoFake::start().await;
    let provider = video(&fake);

    for status in [503, 500, 429] {
        fake.set_behavior(TwilioBehavior::Fail(status));
        let error = provider
            .create_room(&room_request())
            .await
            .expect_err("outage");
        assert!(error.retryable, "{status}: {error:?}");
        assert!(error.message.contains(&status.to_string()), "{error:?}");

        let error = provider
            .end_room("consult-x", None)
            .await
            .expect_err("outage");
        assert!(error.retryable, "{status}: {error:?}");
    }
    assert_eq!(fake.created(), 0);
}

#[tokio::test]
async fn video_timeouts_and_refused_connections_are_retryable() {
    let fake = VideoFake::start().await;
    fake.set_behavior(TwilioBehavior::Hang(Duration::from_secs(3)));
    let provider = TwilioVideo::new(fake.config(), Duration::from_millis(500)).expect("provider");
    let error = provider
        .create_room(&room_request())
        .await
        .expect_err("timed out");
    assert!(error.retryable, "{error:?}");

    let mut config = fake.config();
    config.video_base = closed_base_url().await;
    let provider = TwilioVideo::new(config, Duration::from_secs(2)).expect("provider");
    let error = provider
        .create_room(&room_request())
        .await
        .expect_err("no connection");
    assert!(error.retryable, "{error:?}");
}

#[tokio::test]
async fn a_room_name_twilio_cannot_address_is_refused_before_sending() {
    let fake = VideoFake::start().await;
    let provider = video(&fake);
    for name in ["", "consult/123", "consult 123", &"a".repeat(129)] {
        let request = RoomRequest {
            name: name.to_owned(),
            status_callback: None,
        };
        let error = provider.create_room(&request).await.expect_err("refused");
        assert!(!error.retryable, "{error:?}");
    }
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn room_timeouts_outside_twilios_range_are_refused_before_sending() {
    let fake = VideoFake::start().await;
    let mut config = fake.config();
    config.unused_room_timeout_minutes = 61;
    let provider = TwilioVideo::new(config, Duration::from_secs(5)).expect("provider");

    let error = provider
        .create_room(&room_request())
        .await
        .expect_err("refused");

    assert!(!error.retryable, "{error:?}");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn the_provider_says_who_it_is_and_when_to_create_rooms() {
    let fake = VideoFake::start().await;
    let provider = video(&fake);
    assert_eq!(provider.name(), "twilio");
    assert_eq!(
        provider.provision_lead(),
        Some(Duration::from_secs(20 * 60))
    );
    let shown = format!("{provider:?}");
    assert!(!shown.contains(twilio_fake::AUTH_TOKEN), "{shown}");
    assert!(!shown.contains(video_fake::API_KEY_SECRET), "{shown}");
}

#[tokio::test]
async fn tokens_are_minted_with_the_api_key_and_only_with_it() {
    let fake = VideoFake::start().await;
    let grant = AccessGrant {
        identity: "patient-42".to_owned(),
        room: "consult-123".to_owned(),
        issued_at: Utc.timestamp_opt(1_795_213_535, 0).single().expect("time"),
        expires_at: Utc.timestamp_opt(1_795_217_135, 0).single().expect("time"),
    };

    let token = video(&fake).access_token(&grant).expect("a token");
    let payload = token.split('.').nth(1).expect("a payload");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
            .expect("JSON claims");
    assert_eq!(claims["iss"], video_fake::API_KEY_SID);
    assert_eq!(claims["sub"], twilio_fake::ACCOUNT_SID);
    assert_eq!(claims["grants"]["identity"], "patient-42");
    assert_eq!(claims["grants"]["video"]["room"], "consult-123");

    let mut config = fake.config();
    config.api_key_secret = None;
    let provider = TwilioVideo::new(config, Duration::from_secs(5)).expect("provider");
    let refusal = provider.access_token(&grant).expect_err("no API key");
    assert_eq!(
        refusal.0,
        "TWILIO_API_KEY and TWILIO_API_SECRET are not set"
    );
    assert!(fake.requests().is_empty(), "minting is offline");
}

/// The fake must refuse what Twilio refuses, or the tests above would prove nothing.
#[tokio::test]
async fn video_fake_rejects_malformed_requests() {
    let fake = VideoFake::start().await;
    let client = reqwest::Client::new();
    let rooms = format!("{}/v1/Rooms", fake.base_url);
    let authed = |request: reqwest::RequestBuilder| {
        request.basic_auth(twilio_fake::ACCOUNT_SID, Some(twilio_fake::AUTH_TOKEN))
    };
    let status_of = |request: reqwest::RequestBuilder| async move {
        request
            .send()
            .await
            .expect("fake answers")
            .status()
            .as_u16()
    };
    let good = [
        ("UniqueName", "consult-ok"),
        ("Type", "group"),
        ("MaxParticipants", "2"),
        ("StatusCallback", ROOM_CALLBACK),
        ("StatusCallbackMethod", "POST"),
        ("EmptyRoomTimeout", "5"),
        ("UnusedRoomTimeout", "60"),
    ];

    assert_eq!(status_of(client.post(&rooms).form(&good)).await, 401);
    let json_body = authed(client.post(&rooms)).json(&serde_json::json!({"Type": "group"}));
    assert_eq!(status_of(json_body).await, 415);

    let long_name = "a".repeat(129);
    let bad: [(&str, &str); 10] = [
        ("Type", "huge"),
        ("MaxParticipants", "51"),
        ("MaxParticipants", "0"),
        ("MaxParticipants", "two"),
        ("EmptyRoomTimeout", "0"),
        ("UnusedRoomTimeout", "61"),
        ("StatusCallback", "/relative"),
        ("StatusCallbackMethod", "PUT"),
        ("UniqueName", &long_name),
        ("UniqueName", ""),
    ];
    for (name, value) in bad {
        let form: Vec<(&str, &str)> = good
            .iter()
            .map(|&(key, good_value)| (key, if key == name { value } else { good_value }))
            .collect();
        assert_eq!(
            status_of(authed(client.post(&rooms)).form(&form)).await,
            400,
            "{name}={value}"
        );
    }
    assert_eq!(fake.created(), 0);

    assert_eq!(
        status_of(authed(client.post(&rooms)).form(&good)).await,
        201
    );
    assert_eq!(
        status_of(authed(client.post(&rooms)).form(&good)).await,
        400
    );
    let room = format!("{rooms}/consult-ok");
    assert_eq!(status_of(authed(client.get(&room))).await, 200);
    assert_eq!(
        status_of(authed(client.get(format!("{rooms}/consult-unknown")))).await,
        404
    );
    let no_status: [(&str, &str); 0] = [];
    assert_eq!(
        status_of(authed(client.post(&room)).form(&no_status)).await,
        400
    );
    assert_eq!(
        status_of(authed(client.post(&room)).form(&[("Status", "in-progress")])).await,
        400
    );
    assert_eq!(
        status_of(authed(client.post(&room)).form(&[("Status", "completed")])).await,
        202
    );
    assert_eq!(status_of(authed(client.get(&room))).await, 404);
    assert_eq!(fake.created(), 1);
}

// ---------------------------------------------------------------------------------------------
// Voice calls

#[tokio::test]
async fn a_call_is_placed_with_every_field_twilio_needs() {
    let fake = TwilioFake::start().await;
    let provider = voice(&fake);
    assert_eq!(provider.caller_id(), twilio_fake::FROM_VOICE);

    let placed = provider
        .place_call(&call_request())
        .await
        .expect("call placed");

    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    let sent = &calls[0];
    assert_eq!(sent.status, 201);
    assert_eq!(sent.path, fake.calls_path());
    assert!(sent.auth_ok);
    assert_eq!(
        sent.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(sent.field("To"), Some(PATIENT_PHONE));
    assert_eq!(sent.field("From"), Some(twilio_fake::FROM_VOICE));
    assert_eq!(sent.field("Url"), Some(TWIML_URL));
    assert_eq!(sent.field("Method"), Some("POST"));
    assert_eq!(sent.field("StatusCallback"), Some(CALL_CALLBACK));
    assert_eq!(sent.field("StatusCallbackMethod"), Some("POST"));
    assert_eq!(
        sent.fields("StatusCallbackEvent"),
        ["initiated", "ringing", "answered", "completed"]
    );
    assert_eq!(sent.field("Twiml"), None);
    assert_eq!(sent.field("ApplicationSid"), None);

    assert!(
        placed.sid.starts_with("CA") && placed.sid.len() == 34,
        "{placed:?}"
    );
    assert_eq!(sent.sid.as_deref(), Some(placed.sid.as_str()));
    assert_eq!(placed.status, "queued");
    assert!(fake.requests().is_empty(), "no message was sent");
}

#[tokio::test]
async fn a_number_that_is_not_e164_is_refused_before_sending() {
    let fake = TwilioFake::start().await;
    let provider = voice(&fake);

    for number in ["447911123489", "+44 7911 123489", "+0447911123489", ""] {
        let mut request = call_request();
        request.to = number.to_owned();
        let error = provider.place_call(&request).await.expect_err("refused");
        assert!(!error.retryable, "{error:?}");
        if number.len() > 7 {
            assert!(!error.message.contains(number), "{error:?}");
        }
    }

    let mut config = fake.voice_config();
    config.from = "15005550006".to_owned();
    let provider = TwilioVoice::new(config, Duration::from_secs(5)).expect("provider");
    let error = provider
        .place_call(&call_request())
        .await
        .expect_err("refused");
    assert!(!error.retryable, "{error:?}");

    assert!(fake.call_arrivals().is_empty(), "nothing reached Twilio");
}

#[tokio::test]
async fn a_call_that_times_out_is_not_retried() {
    let fake = TwilioFake::start().await;
    fake.set_behavior(TwilioBehavior::Hang(Duration::from_secs(3)));
    let provider =
        TwilioVoice::new(fake.voice_config(), Duration::from_millis(500)).expect("provider");

    let error = provider
        .place_call(&call_request())
        .await
        .expect_err("timed out");

    assert!(!error.retryable, "a retry could ring twice: {error:?}");
    assert!(error.message.contains("may or may not"), "{error:?}");
    assert_eq!(fake.call_arrivals().len(), 1, "the request reached Twilio");
}

#[tokio::test]
async fn calls_are_retried_only_when_twilio_surely_took_nothing() {
    let fake = TwilioFake::start().await;
    let provider = voice(&fake);

    for status in [503, 500, 429] {
        fake.set_behavior(TwilioBehavior::Fail(status));
        let error = provider
            .place_call(&call_request())
            .await
            .expect_err("outage");
        assert!(error.retryable, "{status}: {error:?}");
        assert!(error.message.contains(&status.to_string()), "{error:?}");
    }
    fake.set_behavior(TwilioBehavior::Fail(504));
    let error = provider
        .place_call(&call_request())
        .await
        .expect_err("gateway timeout");
    assert!(!error.retryable, "{error:?}");
    assert!(error.message.contains("may or may not"), "{error:?}");
    assert!(fake.accepted_calls().is_empty());

    let mut config = fake.voice_config();
    config.api_base = closed_base_url().await;
    let provider = TwilioVoice::new(config, Duration::from_secs(2)).expect("provider");
    let error = provider
        .place_call(&call_request())
        .await
        .expect_err("no connection");
    assert!(error.retryable, "nothing was sent: {error:?}");
}

#[tokio::test]
async fn call_refusals_are_permanent_and_keep_the_number_out() {
    let fake = TwilioFake::start().await;
    let provider = voice(&fake);
    fake.set_behavior(TwilioBehavior::Reject {
        status: 400,
        code: 21211,
        message: format!("The 'To' number {PATIENT_PHONE} is not a valid phone number."),
    });

    let error = provider
        .place_call(&call_request())
        .await
        .expect_err("refused");

    assert!(!error.retryable, "{error:?}");
    assert!(error.message.contains("21211"), "{error:?}");
    assert!(!error.message.contains(PATIENT_PHONE), "{error:?}");
}

#[tokio::test]
async fn wrong_voice_credentials_are_refused_permanently() {
    let fake = TwilioFake::start().await;
    let mut config = fake.voice_config();
    config.auth_token = SecretString::from("not-the-auth-token");
    let provider = TwilioVoice::new(config, Duration::from_secs(5)).expect("provider");

    let error = provider
        .place_call(&call_request())
        .await
        .expect_err("refused");

    assert!(!error.retryable, "{error:?}");
    assert!(error.message.contains("401"), "{error:?}");
    assert_eq!(fake.calls()[0].status, 401);
}

/// The fake must refuse what Twilio refuses, or the tests above would prove nothing.
#[tokio::test]
async fn twilio_fake_rejects_malformed_calls() {
    let fake = TwilioFake::start().await;
    let client = reqwest::Client::new();
    let url = format!("{}{}", fake.base_url, fake.calls_path());
    let post = |form: &[(&str, &str)]| {
        client
            .post(&url)
            .basic_auth(twilio_fake::ACCOUNT_SID, Some(twilio_fake::AUTH_TOKEN))
            .form(form)
    };
    let status_of = |request: reqwest::RequestBuilder| async move {
        request
            .send()
            .await
            .expect("fake answers")
            .status()
            .as_u16()
    };
    let good: Vec<(&str, &str)> = vec![
        ("To", PATIENT_PHONE),
        ("From", twilio_fake::FROM_VOICE),
        ("Url", TWIML_URL),
        ("StatusCallback", CALL_CALLBACK),
        ("StatusCallbackEvent", "initiated"),
        ("StatusCallbackEvent", "completed"),
    ];
    assert_eq!(status_of(post(&good)).await, 201);
    assert_eq!(
        status_of(client.post(&url).form(&good)).await,
        401,
        "no credentials"
    );
    let json_body = client
        .post(&url)
        .basic_auth(twilio_fake::ACCOUNT_SID, Some(twilio_fake::AUTH_TOKEN))
        .json(&serde_json::json!({"To": PATIENT_PHONE}));
    assert_eq!(status_of(json_body).await, 415);

    let with = |name: &'static str, value: &'static str| {
        let mut form: Vec<(&str, &str)> = good
            .iter()
            .copied()
            .filter(|(key, _)| *key != name)
            .collect();
        form.push((name, value));
        form
    };
    let without = |name: &str| -> Vec<(&str, &str)> {
        good.iter()
            .copied()
            .filter(|(key, _)| *key != name)
            .collect()
    };
    let mut both_sources = good.clone();
    both_sources.push(("Twiml", "<Response><Say>hi</Say></Response>"));
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no To", without("To")),
        ("no From", without("From")),
        ("no instructions", without("Url")),
        ("Url and Twiml", both_sources),
        ("To not E.164", with("To", "07911123489")),
        ("From not E.164", with("From", "15005550006")),
        ("relative Url", with("Url", "/twiml")),
        ("relative StatusCallback", with("StatusCallback", "/status")),
        ("unknown event", with("StatusCallbackEvent", "busy")),
        ("bad Method", with("Method", "PUT")),
        (
            "bad StatusCallbackMethod",
            with("StatusCallbackMethod", "PATCH"),
        ),
    ];
    for (case, form) in cases {
        assert_eq!(status_of(post(&form)).await, 400, "{case}");
    }
    assert_eq!(fake.accepted_calls().len(), 1);
    assert!(
        fake.requests().is_empty(),
        "calls are kept apart from messages"
    );
}
