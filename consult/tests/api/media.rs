//! Video rooms, access tokens, voice calls and the Twilio webhooks that report on them, through
//! the whole engine, with the strict Twilio fakes (`consult-testkit`) on loopback:
//!
//! - access tokens: only the two participants, only from 15 minutes before the start to 30
//!   minutes after the end, only for a live consultation; the token is Twilio's access-token
//!   JWT, checked claim by claim and signature by signature;
//! - rooms: created exactly once whatever is delivered twice (an answer lost on the way back,
//!   a replay of the `rooms` reactor, a job run again), ended at the provider and recorded
//!   when the consultation completes or is cancelled;
//! - voice: the worker rings the caller with the right request, the TwiML dials the other
//!   participant's real number, and call progress is recorded once however often and in
//!   whatever order Twilio reports it;
//! - webhooks: a missing, wrong or replayed-over-other-parameters signature is refused and
//!   records nothing.
//!
//! The engine's `PUBLIC_BASE_URL` in tests is `http://127.0.0.1`: webhooks are signed over that
//! base plus the path and query the engine handed to Twilio.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, SubsecRound as _, Utc};
use consult_api::Role;
use consult_domain::{
    CallChannel, Consultation, ConsultationCommand, ConsultationError, ConsultationEvent, Party,
    Room, RoomEndReason,
};
use consult_reactors::twilio_signature;
use consult_store::{with_pool, Db, Metadata, Store, StoreOptions};
use hmac::{Hmac, Mac as _};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::helpers::{
    act, assert_problem, eventually, spawn_app_with, voice_call, Backend, TestApp,
};
use crate::on_both_backends;

use consult_testkit as fakes;

use fakes::twilio::{TwilioBehavior, TwilioFake, ACCOUNT_SID, AUTH_TOKEN, FROM_VOICE};
use fakes::video::{VideoFake, API_KEY_SECRET, API_KEY_SID};

/// The engine's `PUBLIC_BASE_URL` in tests: what Twilio calls back, and what it signs.
const PUBLIC_BASE: &str = "http://127.0.0.1";
/// The phone `register_provider` gives every provider.
const PROVIDER_PHONE: &str = "+14155550100";
/// The phone on every booking made here.
const PATIENT_PHONE: &str = "+33612345678";
/// How long the workers get to do something.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A direct line to the test's database: payments (no endpoint yet), events, jobs, calls.
struct Backdoor {
    store: Store,
}

impl Backdoor {
    async fn open(app: &TestApp) -> Self {
        let store = Store::connect(&StoreOptions::new(app.db.url.clone()))
            .await
            .expect("open the store");
        Self { store }
    }

    fn postgres(&self) -> bool {
        matches!(self.store.db(), Db::Postgres(_))
    }

    /// Runs a domain command straight on the store, as the payment integration will.
    async fn confirm_payment(&self, id: &str) {
        let metadata = Metadata {
            actor_id: "payments".into(),
            actor_role: "system".into(),
            correlation_id: id.into(),
            causation_id: id.into(),
            request_id: String::new(),
        };
        self.store
            .execute::<Consultation, ConsultationError, _>(id, &metadata, None, |c| {
                c.decide(ConsultationCommand::ConfirmPayment {
                    payment_id: format!("pi_{id}"),
                    amount_minor: 4500,
                    currency: "EUR".into(),
                    at: Utc::now(),
                })
            })
            .await
            .expect("payment recorded");
    }

    /// The consultation's events, in order.
    async fn events(&self, id: &str) -> Vec<ConsultationEvent> {
        let sql = if self.postgres() {
            "SELECT payload::text FROM events WHERE aggregate_type = 'consultation' \
             AND aggregate_id = $1 ORDER BY sequence"
        } else {
            "SELECT payload FROM events WHERE aggregate_type = 'consultation' \
             AND aggregate_id = $1 ORDER BY sequence"
        };
        let payloads: Vec<String> = with_pool!(self.store.db(), pool => {
            sqlx::query_scalar(sql).bind(id).fetch_all(pool).await
        })
        .expect("read the stream");
        payloads
            .iter()
            .map(|p| serde_json::from_str(p).expect("a consultation event"))
            .collect()
    }

    /// How many of the consultation's events are called `name`.
    async fn count(&self, id: &str, name: &str) -> usize {
        self.events(id)
            .await
            .iter()
            .filter(|e| e.name() == name)
            .count()
    }

    /// One integer computed by `sql`, with `id` bound to `$1`.
    async fn scalar(&self, sql: &str, id: &str) -> i64 {
        with_pool!(self.store.db(), pool => {
            sqlx::query_scalar(sql).bind(id).fetch_one(pool).await
        })
        .expect("an integer")
    }

    /// Runs a statement with `id` bound to `$1`; returns the rows it changed.
    async fn execute(&self, sql: &str, id: &str) -> u64 {
        with_pool!(self.store.db(), pool => {
            sqlx::query(sql).bind(id).execute(pool).await.map(|r| r.rows_affected())
        })
        .expect("statement runs")
    }

    /// A call's row: status, provider call id, last sequence number, duration.
    async fn call(&self, call_id: &str) -> (String, Option<String>, Option<i64>, Option<i32>) {
        const SQL: &str = "SELECT status, provider_call_id, last_sequence, duration_seconds \
                             FROM calls WHERE id = $1";
        with_pool!(self.store.db(), pool => {
            sqlx::query_as(SQL).bind(call_id).fetch_one(pool).await
        })
        .expect("the call's row")
    }

    async fn close(self) {
        self.store.close().await;
    }
}

/// A booking body for `minutes` of `mode` from `start`.
fn booking_at(provider: &str, start: DateTime<Utc>, minutes: i64, mode: &str) -> Value {
    json!({
        "provider_id": provider,
        "starts_at": start.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "duration_minutes": minutes,
        "mode": mode,
        "timezone": "Europe/Paris",
        "contact": {"phone": PATIENT_PHONE, "email": "patient@example.org", "whatsapp": false},
        "reason": "follow-up",
    })
}

/// `minutes` from now, to the second (the engine keeps whole seconds).
fn in_minutes(minutes: i64) -> DateTime<Utc> {
    (Utc::now() + chrono::Duration::minutes(minutes)).trunc_subsecs(0)
}

/// Books, accepts and pays: a confirmed consultation; returns its id.
async fn confirmed(
    app: &TestApp,
    db: &Backdoor,
    patient: &str,
    provider: &str,
    start: DateTime<Utc>,
    minutes: i64,
    mode: &str,
) -> String {
    let response = app
        .post(
            "/v1/consultations",
            &app.token(Role::Patient, patient),
            &booking_at(provider, start, minutes, mode),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED, "book");
    let body: Value = response.json().await.expect("json");
    let id = body["id"].as_str().expect("id").to_owned();
    act(app, Role::Provider, provider, &id, "accept", json!({})).await;
    db.confirm_payment(&id).await;
    id
}

/// Waits for the consultation's room to be recorded; returns it.
async fn provisioned(db: &Backdoor, id: &str) -> Room {
    let room = || async {
        db.events(id).await.into_iter().find_map(|e| match e {
            ConsultationEvent::RoomProvisioned { room, .. } => Some(room),
            _ => None,
        })
    };
    assert!(
        eventually(WAIT, || async { room().await.is_some() }).await,
        "the room of {id} is provisioned"
    );
    room().await.expect("a room")
}

async fn video_token(app: &TestApp, role: Role, who: &str, id: &str) -> Response {
    app.post(
        &format!("/v1/consultations/{id}/video-token"),
        &app.token(role, who),
        &json!({}),
    )
    .await
}

fn pairs(form: &[(&str, &str)]) -> Vec<(String, String)> {
    form.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The `X-Twilio-Signature` Twilio sends for `form` posted to `path_and_query` on our base.
fn sign(path_and_query: &str, form: &[(String, String)]) -> String {
    twilio_signature::signature(AUTH_TOKEN, &format!("{PUBLIC_BASE}{path_and_query}"), form)
}

/// The path and query of a URL the engine handed to Twilio (on `PUBLIC_BASE`).
fn path_of(url: &str) -> &str {
    url.strip_prefix(PUBLIC_BASE)
        .unwrap_or_else(|| panic!("{url} is on {PUBLIC_BASE}"))
}

/// Posts a Twilio webhook: `form` form-encoded, with `signature` if any.
async fn webhook(
    app: &TestApp,
    path_and_query: &str,
    form: &[(String, String)],
    signature: Option<&str>,
) -> Response {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut request = app
        .client
        .post(format!("{}{path_and_query}", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("x-twilio-signature", signature);
    }
    request.send().await.expect("webhook reaches the server")
}

/// Posts a correctly signed webhook and expects `expected`.
async fn signed(app: &TestApp, path_and_query: &str, form: &[(String, String)], expected: u16) {
    let response = webhook(app, path_and_query, form, Some(&sign(path_and_query, form))).await;
    assert_eq!(response.status().as_u16(), expected, "{path_and_query}");
}

/// What Twilio Video posts to a room's status callback.
fn room_event(
    room: &Room,
    event: &str,
    sequence: u32,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let sid = room.sid.clone().unwrap_or_default();
    let sequence = sequence.to_string();
    let timestamp = Utc::now().to_rfc3339();
    let mut form = pairs(&[
        ("AccountSid", ACCOUNT_SID),
        ("RoomName", &room.name),
        ("RoomSid", &sid),
        (
            "RoomStatus",
            if event == "room-ended" {
                "completed"
            } else {
                "in-progress"
            },
        ),
        ("RoomType", "group"),
        ("StatusCallbackEvent", event),
        ("SequenceNumber", &sequence),
        ("Timestamp", &timestamp),
    ]);
    form.extend(pairs(extra));
    form
}

/// What Twilio Voice posts to a call's status callback.
fn call_event(
    sid: &str,
    status: &str,
    sequence: u32,
    duration: Option<u32>,
) -> Vec<(String, String)> {
    let sequence = sequence.to_string();
    let timestamp = Utc::now().to_rfc2822();
    let mut form = pairs(&[
        ("AccountSid", ACCOUNT_SID),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", sid),
        ("CallStatus", status),
        ("CallbackSource", "call-progress-events"),
        ("Direction", "outbound-api"),
        ("From", FROM_VOICE),
        ("SequenceNumber", &sequence),
        ("Timestamp", &timestamp),
        ("To", PATIENT_PHONE),
    ]);
    if let Some(duration) = duration {
        let duration = duration.to_string();
        form.extend(pairs(&[("CallDuration", &duration), ("Duration", "2")]));
    }
    form
}

/// A Twilio access token taken apart: header, claims, and whether the signature verifies
/// under `key`.
fn token_parts(token: &str, key: &str) -> (Value, Value, bool) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {token}");
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).expect("base64url, unpadded");
    let header: Value = serde_json::from_slice(&decode(parts[0])).expect("JSON header");
    let claims: Value = serde_json::from_slice(&decode(parts[1])).expect("JSON claims");
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC key");
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    let verifies = mac.verify_slice(&decode(parts[2])).is_ok();
    (header, claims, verifies)
}

/// Checks a video-token response: every claim of the JWT, the signature, and the lifetime
/// (at most an hour, never past `closes`). `issued` brackets the request.
async fn check_token(
    response: Response,
    identity: &str,
    room: &str,
    issued: (i64, i64),
    closes: DateTime<Utc>,
) -> i64 {
    assert_eq!(response.status(), StatusCode::OK, "a token for {identity}");
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["identity"], identity);
    assert_eq!(body["room"], room);
    assert_eq!(body["provider"], "twilio");
    let token = body["token"].as_str().expect("a token");

    let (header, claims, verifies) = token_parts(token, API_KEY_SECRET);
    assert_eq!(
        header,
        json!({"alg": "HS256", "cty": "twilio-fpa;v=1", "typ": "JWT"})
    );
    assert!(verifies, "HS256 under the API key secret");
    assert!(
        !token_parts(token, AUTH_TOKEN).2,
        "never signed with the Auth Token"
    );
    let nbf = claims["nbf"].as_i64().expect("nbf");
    let exp = claims["exp"].as_i64().expect("exp");
    assert!(
        (issued.0..=issued.1).contains(&nbf),
        "nbf {nbf} is the time of issue {issued:?}"
    );
    let ttl_end = nbf + 3600;
    assert_eq!(
        exp,
        ttl_end.min(closes.timestamp()),
        "an hour at most, and never past the end + grace"
    );
    assert_eq!(
        claims,
        json!({
            "jti": format!("{API_KEY_SID}-{nbf}"),
            "iss": API_KEY_SID,
            "sub": ACCOUNT_SID,
            "nbf": nbf,
            "exp": exp,
            "grants": {"identity": identity, "video": {"room": room}},
        }),
        "exactly Twilio's claims"
    );
    let expires_at = DateTime::parse_from_rfc3339(body["expires_at"].as_str().expect("expires_at"))
        .expect("RFC 3339");
    assert_eq!(expires_at.timestamp(), exp);
    exp
}

/// The `rooms` reactor as `GET /v1/admin/subscriptions` shows it.
async fn rooms_subscription(app: &TestApp) -> Value {
    let admin = app.token(Role::Admin, "admin-1");
    let body: Value = app
        .get("/v1/admin/subscriptions", &admin)
        .await
        .json()
        .await
        .expect("json");
    body["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .find(|s| s["name"] == "rooms")
        .cloned()
        .expect("the rooms reactor is a subscription")
}

/// Parses TwiML, checks it is a `<Response>` that dials `number` showing our number.
fn assert_dials(twiml: &str, number: &str) {
    let document = roxmltree::Document::parse(twiml).expect("TwiML is well-formed XML");
    let root = document.root_element();
    assert_eq!(root.tag_name().name(), "Response", "{twiml}");
    let dials: Vec<_> = root.children().filter(|n| n.has_tag_name("Dial")).collect();
    assert_eq!(dials.len(), 1, "one <Dial>: {twiml}");
    assert_eq!(dials[0].attribute("callerId"), Some(FROM_VOICE), "{twiml}");
    let numbers: Vec<_> = dials[0]
        .children()
        .filter(|n| n.has_tag_name("Number"))
        .map(|n| n.text().unwrap_or_default().trim().to_owned())
        .collect();
    assert_eq!(numbers, vec![number.to_owned()], "{twiml}");
    assert!(
        root.descendants().all(|n| !n.has_tag_name("Hangup")),
        "{twiml}"
    );
}

/// Fetches the TwiML Twilio would fetch for a call placed with `url`.
async fn twiml(app: &TestApp, url: &str, sid: &str, to: &str) -> String {
    let path = path_of(url);
    let form = pairs(&[
        ("AccountSid", ACCOUNT_SID),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", sid),
        ("CallStatus", "in-progress"),
        ("Direction", "outbound-api"),
        ("From", FROM_VOICE),
        ("To", to),
    ]);
    let response = webhook(app, path, &form, Some(&sign(path, &form))).await;
    assert_eq!(response.status(), StatusCode::OK, "TwiML for {path}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/xml"), "{content_type}");
    response.text().await.expect("a body")
}

// The tests below that take a backend run on SQLite and on PostgreSQL; the others on
// PostgreSQL only.
on_both_backends!(
    only_the_participants_get_a_token_and_only_in_the_joining_window,
    tokens_need_a_video_provider_that_can_mint_them,
    a_room_is_provisioned_exactly_once_and_ended_when_the_consultation_completes,
    voice_calls_ring_the_caller_and_dial_the_other_participant,
);

// ---------------------------------------------------------------------------------------------
// Access tokens
// ---------------------------------------------------------------------------------------------

/// Each participant of a confirmed video consultation gets Twilio's access-token JWT for its
/// room (identity = their id, an hour at most, never past the end + grace, signed with the API
/// key secret); nobody else does, nor before the window opens, nor once it is cancelled; a
/// cancellation ends the room at the provider.
async fn only_the_participants_get_a_token_and_only_in_the_joining_window(backend: Backend) {
    let video = VideoFake::start().await;
    let Some(app) = spawn_app_with(backend, |config| {
        config.media.video = Some(video.config());
    })
    .await
    else {
        return;
    };
    let db = Backdoor::open(&app).await;
    app.register_provider("prov-1").await;
    app.register_provider("prov-2").await;

    let start = in_minutes(10);
    let id = confirmed(&app, &db, "pat-1", "prov-1", start, 30, "video").await;
    let room = provisioned(&db, &id).await;
    assert!(
        room.name.starts_with("consult-") && room.name.len() >= 40,
        "{}",
        room.name
    );
    assert_eq!(room.provider, "twilio");
    let held = video.room(&room.name).expect("the fake holds the room");
    assert_eq!(Some(held.sid.clone()), room.sid);
    assert!(held.in_progress());
    assert_eq!(held.max_participants, 2);
    let read: Value = app
        .read(
            &format!("/v1/consultations/{id}"),
            &app.token(Role::Patient, "pat-1"),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        read["room"],
        json!({"name": room.name, "provider": "twilio", "ended": false})
    );

    // Both participants, each as themselves.
    let closes = start + chrono::Duration::minutes(30 + 30);
    for (role, who) in [(Role::Patient, "pat-1"), (Role::Provider, "prov-1")] {
        let before = Utc::now().timestamp();
        let response = video_token(&app, role, who, &id).await;
        let after = Utc::now().timestamp();
        let exp = check_token(response, who, &room.name, (before, after), closes).await;
        assert!(exp <= after + 3600);
    }

    // Nobody else: another patient, another provider, an admin, an auditor.
    for (role, who) in [
        (Role::Patient, "pat-2"),
        (Role::Provider, "prov-2"),
        (Role::Admin, "admin-1"),
        (Role::Auditor, "auditor-1"),
    ] {
        assert_problem(
            video_token(&app, role, who, &id).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }

    // A short consultation: its window closes before the hour is up, and so does the token.
    let short_start = in_minutes(10);
    let short = confirmed(&app, &db, "pat-3", "prov-2", short_start, 5, "video").await;
    let short_room = provisioned(&db, &short).await;
    let before = Utc::now().timestamp();
    let response = video_token(&app, Role::Patient, "pat-3", &short).await;
    let after = Utc::now().timestamp();
    let short_closes = short_start + chrono::Duration::minutes(5 + 30);
    let exp = check_token(
        response,
        "pat-3",
        &short_room.name,
        (before, after),
        short_closes,
    )
    .await;
    assert_eq!(exp, short_closes.timestamp(), "cut at the end + grace");

    // Three hours ahead: too early to join.
    let later = confirmed(&app, &db, "pat-1", "prov-1", in_minutes(180), 30, "video").await;
    let body = assert_problem(
        video_token(&app, Role::Patient, "pat-1", &later).await,
        StatusCode::CONFLICT,
        "outside_window",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("joined from")),
        "{body}"
    );

    // Cancelled: not joinable any more, and its room is ended at the provider and recorded.
    act(
        &app,
        Role::Patient,
        "pat-1",
        &id,
        "cancel",
        json!({"reason": "cannot make it"}),
    )
    .await;
    assert_problem(
        video_token(&app, Role::Patient, "pat-1", &id).await,
        StatusCode::CONFLICT,
        "not_joinable",
    )
    .await;
    let sid = room.sid.clone().expect("a sid");
    assert!(
        eventually(WAIT, || async {
            video.room(&sid).is_some_and(|r| !r.in_progress())
                && db.count(&id, "RoomEnded").await == 1
        })
        .await,
        "the cancelled consultation's room is ended and recorded"
    );
    let end = video
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path == format!("/v1/Rooms/{sid}"))
        .expect("the room is ended by its sid");
    assert_eq!(end.field("Status"), Some("completed"));
    assert!(end.auth_ok);
    let ended = db.events(&id).await.into_iter().find_map(|e| match e {
        ConsultationEvent::RoomEnded { name, reason, .. } => Some((name, reason)),
        _ => None,
    });
    assert_eq!(
        ended,
        Some((room.name.clone(), RoomEndReason::ConsultationEnded))
    );
    // The other consultations' rooms are untouched.
    assert!(video
        .room(&short_room.name)
        .is_some_and(|r| r.in_progress()));
    assert_eq!(
        video.created(),
        2,
        "no room yet for the one three hours ahead"
    );
    db.close().await;
}

/// Without Twilio Video the rooms are the console's, which cannot mint tokens: 503.
async fn tokens_need_a_video_provider_that_can_mint_them(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        return;
    };
    let db = Backdoor::open(&app).await;
    app.register_provider("prov-1").await;
    let id = confirmed(&app, &db, "pat-1", "prov-1", in_minutes(10), 30, "video").await;
    let room = provisioned(&db, &id).await;
    assert_eq!(room.provider, "console");
    assert_problem(
        video_token(&app, Role::Patient, "pat-1", &id).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_configured",
    )
    .await;
    db.close().await;
}

// ---------------------------------------------------------------------------------------------
// Rooms
// ---------------------------------------------------------------------------------------------

/// Twilio creates the room but its answer is lost: the retry asks for the same name, gets
/// 53113 "Room exists", and records that room. A replay of the `rooms` reactor and a second
/// run of the create job create nothing more and keep the close timer. A participant joining
/// starts the consultation; completing it ends the room at Twilio and records RoomEnded.
async fn a_room_is_provisioned_exactly_once_and_ended_when_the_consultation_completes(
    backend: Backend,
) {
    let video = VideoFake::start().await;
    let twilio = TwilioFake::start().await;
    let Some(app) = spawn_app_with(backend, |config| {
        config.media.video = Some(video.config());
        // Signs the webhooks.
        config.notifications.twilio = Some(twilio.config());
        // The first retry comes 1.5 to 3 s after a failure.
        config.notifications.retry_base = Duration::from_secs(3);
    })
    .await
    else {
        return;
    };
    let db = Backdoor::open(&app).await;
    app.register_provider("prov-1").await;

    // Twilio fails the first create...
    video.set_behavior(TwilioBehavior::Fail(503));
    let id = confirmed(&app, &db, "pat-1", "prov-1", in_minutes(10), 30, "video").await;
    assert!(
        eventually(WAIT, || async { !video.create_requests().is_empty() }).await,
        "the worker asks Twilio for the room"
    );
    let first = video.create_requests()[0].clone();
    assert_eq!(first.status, 503);
    let name = first.field("UniqueName").expect("a unique name").to_owned();
    assert_eq!(first.field("Type"), Some("group"));
    assert_eq!(first.field("MaxParticipants"), Some("2"));
    let callback = format!("{PUBLIC_BASE}/v1/webhooks/twilio/rooms?consultation_id={id}");
    assert_eq!(first.field("StatusCallback"), Some(callback.as_str()));
    assert_eq!(first.field("StatusCallbackMethod"), Some("POST"));

    // ...but (as far as the engine can tell) it did create it: the answer was lost.
    video.set_behavior(TwilioBehavior::Accept);
    let created = reqwest::Client::new()
        .post(format!("{}/v1/Rooms", video.base_url))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .form(&[
            ("UniqueName", name.as_str()),
            ("Type", "group"),
            ("MaxParticipants", "2"),
            ("StatusCallback", callback.as_str()),
        ])
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(created.status(), StatusCode::CREATED);
    let sid = video.room(&name).expect("the room").sid;

    let room = provisioned(&db, &id).await;
    assert_eq!(room.name, name);
    assert_eq!(
        room.sid.as_deref(),
        Some(sid.as_str()),
        "the existing room was taken"
    );
    assert_eq!(video.created(), 1);
    let answers: Vec<u16> = video.create_requests().iter().map(|r| r.status).collect();
    assert!(
        answers.ends_with(&[201, 400]),
        "the retry was told 53113 Room exists: {answers:?}"
    );
    assert!(video
        .requests()
        .iter()
        .any(|r| r.method == "GET" && r.path == format!("/v1/Rooms/{name}") && r.status == 200));
    assert_eq!(db.count(&id, "RoomProvisioned").await, 1);
    let pending_room_jobs = "SELECT count(*) FROM jobs WHERE consultation_id = $1 \
                             AND kind = 'room' AND status = 'pending'";
    assert_eq!(
        db.scalar(pending_room_jobs, &id).await,
        1,
        "the close timer"
    );

    // A consultation three hours ahead: its room is a timer (Twilio rooms are made shortly
    // before the start), as is its close.
    let later = confirmed(&app, &db, "pat-2", "prov-1", in_minutes(180), 30, "video").await;
    assert!(
        eventually(WAIT, || async {
            db.scalar(pending_room_jobs, &later).await == 2
        })
        .await,
        "create and close timers are queued"
    );

    // The rooms reactor replays the whole log.
    db.store
        .request_reset("rooms")
        .await
        .expect("reset requested");
    assert!(
        eventually(Duration::from_secs(20), || async {
            let s = rooms_subscription(&app).await;
            s["state"] == "live"
                && s["last_reset_at"].is_string()
                && s["applied_since_reset"].as_i64() > Some(0)
        })
        .await,
        "the rooms reactor replays: {}",
        rooms_subscription(&app).await
    );
    // The create job runs again.
    let rerun = "UPDATE jobs SET status = 'pending', due_at_ms = 0, attempts = 0, \
                 last_error = NULL WHERE consultation_id = $1 AND key LIKE 'room:create:%'";
    assert_eq!(db.execute(rerun, &id).await, 1, "one create job");
    assert!(
        eventually(WAIT, || async {
            db.scalar(
                "SELECT count(*) FROM jobs WHERE consultation_id = $1 \
                 AND key LIKE 'room:create:%' AND status = 'done' AND attempts = 1",
                &id,
            )
            .await
                == 1
        })
        .await,
        "the create job ran again"
    );
    assert_eq!(video.created(), 1, "still one room at Twilio");
    assert!(video.room(&sid).is_some_and(|r| r.in_progress()));
    assert_eq!(db.count(&id, "RoomProvisioned").await, 1);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM jobs WHERE consultation_id = $1 AND kind = 'room'",
            &id
        )
        .await,
        2,
        "no job was queued twice"
    );
    assert_eq!(
        db.scalar(pending_room_jobs, &id).await,
        1,
        "the replay kept the timer that closes the room at the end + grace"
    );
    assert_eq!(
        db.scalar(pending_room_jobs, &later).await,
        2,
        "the replay kept the timers that will create and close the later room"
    );

    // A participant joins: the consultation is in progress; the provider completes it.
    let path = path_of(&callback);
    signed(
        &app,
        path,
        &room_event(
            &room,
            "participant-connected",
            3,
            &[("ParticipantIdentity", "pat-1")],
        ),
        204,
    )
    .await;
    assert_eq!(db.count(&id, "CallStarted").await, 1);
    act(&app, Role::Provider, "prov-1", &id, "complete", json!({})).await;
    assert!(
        eventually(WAIT, || async {
            video.room(&sid).is_some_and(|r| r.status == "completed")
                && db.count(&id, "RoomEnded").await == 1
        })
        .await,
        "the room is ended at Twilio and recorded"
    );
    let ends: Vec<_> = video
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/v1/Rooms/"))
        .collect();
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0].path, format!("/v1/Rooms/{sid}"));
    assert_eq!(ends[0].field("Status"), Some("completed"));
    assert_eq!(ends[0].status, 202);
    assert!(db.events(&id).await.iter().any(|e| matches!(
        e,
        ConsultationEvent::RoomEnded { name: n, reason: RoomEndReason::ConsultationEnded, .. } if *n == name
    )));
    assert_eq!(video.created(), 1);
    db.close().await;
}

// ---------------------------------------------------------------------------------------------
// Voice
// ---------------------------------------------------------------------------------------------

/// A participant of a voice consultation asks for a call: 202, the worker rings their phone
/// from our number with our TwiML and status callbacks, and the TwiML dials the other
/// participant's real number. Progress callbacks record CallStarted and CallEnded once each,
/// however often and in whatever order they come; the call's row follows them.
async fn voice_calls_ring_the_caller_and_dial_the_other_participant(backend: Backend) {
    let twilio = TwilioFake::start().await;
    let Some(app) = spawn_app_with(backend, |config| {
        config.media.voice = Some(twilio.voice_config());
        config.notifications.twilio = Some(twilio.config());
    })
    .await
    else {
        return;
    };
    let db = Backdoor::open(&app).await;
    for provider in ["prov-1", "prov-2", "prov-3"] {
        app.register_provider(provider).await;
    }
    let id = confirmed(&app, &db, "pat-1", "prov-1", in_minutes(10), 30, "voice").await;

    // The patient asks.
    let response = voice_call(&app, Role::Patient, "pat-1", &id).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["consultation_id"], id.as_str());
    let call_id = body["call_id"].as_str().expect("call_id").to_owned();
    uuid::Uuid::parse_str(&call_id).expect("a uuid");
    assert!(db.events(&id).await.iter().any(|e| matches!(
        e,
        ConsultationEvent::CallRequested { call_id: c, by: Party::Patient, .. } if c.to_string() == call_id
    )));

    assert!(
        eventually(WAIT, || async { twilio.accepted_calls().len() == 1 }).await,
        "the worker places the call"
    );
    let call = twilio.accepted_calls()[0].clone();
    assert_eq!(call.path, twilio.calls_path());
    assert!(call.auth_ok);
    assert_eq!(call.field("To"), Some(PATIENT_PHONE), "rings the patient");
    assert_eq!(call.field("From"), Some(FROM_VOICE));
    let url =
        format!("{PUBLIC_BASE}/v1/webhooks/twilio/voice/{id}?caller=patient&call_id={call_id}");
    assert_eq!(call.field("Url"), Some(url.as_str()));
    assert_eq!(call.field("Method"), Some("POST"));
    let status_url =
        format!("{PUBLIC_BASE}/v1/webhooks/twilio/calls?consultation_id={id}&call_id={call_id}");
    assert_eq!(call.field("StatusCallback"), Some(status_url.as_str()));
    assert_eq!(call.field("StatusCallbackMethod"), Some("POST"));
    assert_eq!(
        call.fields("StatusCallbackEvent"),
        vec!["initiated", "ringing", "answered", "completed"]
    );
    let sid = call.sid.clone().expect("a call sid");
    assert!(
        eventually(WAIT, || async {
            db.call(&call_id).await == ("queued".to_owned(), Some(sid.clone()), None, None)
        })
        .await,
        "the call's row has Twilio's sid: {:?}",
        db.call(&call_id).await
    );

    // The patient answers; Twilio fetches the TwiML: dial the provider's registered phone.
    assert_dials(
        &twiml(&app, &url, &sid, PATIENT_PHONE).await,
        PROVIDER_PHONE,
    );

    // The provider asks too: their phone rings, and the TwiML dials the patient's booking phone.
    let response = voice_call(&app, Role::Provider, "prov-1", &id).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let provider_call = response.json::<Value>().await.expect("json")["call_id"]
        .as_str()
        .expect("call_id")
        .to_owned();
    assert!(eventually(WAIT, || async { twilio.accepted_calls().len() == 2 }).await);
    let second = twilio.accepted_calls()[1].clone();
    assert_eq!(
        second.field("To"),
        Some(PROVIDER_PHONE),
        "rings the provider"
    );
    let provider_url = format!(
        "{PUBLIC_BASE}/v1/webhooks/twilio/voice/{id}?caller=provider&call_id={provider_call}"
    );
    assert_eq!(second.field("Url"), Some(provider_url.as_str()));
    let second_sid = second.sid.clone().expect("sid");
    assert_dials(
        &twiml(&app, &provider_url, &second_sid, PROVIDER_PHONE).await,
        PATIENT_PHONE,
    );

    // Progress of the patient's call: answered twice (a redelivery), then completed twice.
    let path = path_of(&status_url);
    for (status, sequence) in [("initiated", 0), ("ringing", 1)] {
        signed(&app, path, &call_event(&sid, status, sequence, None), 204).await;
    }
    assert_eq!(db.count(&id, "CallStarted").await, 0, "nobody answered yet");
    assert_eq!(db.call(&call_id).await.0, "ringing");
    for _ in 0..2 {
        signed(&app, path, &call_event(&sid, "in-progress", 2, None), 204).await;
    }
    let started: Vec<_> = db
        .events(&id)
        .await
        .into_iter()
        .filter(|e| e.name() == "CallStarted")
        .collect();
    assert_eq!(started.len(), 1, "one CallStarted");
    assert!(matches!(
        started[0],
        ConsultationEvent::CallStarted {
            via: CallChannel::Voice,
            ..
        }
    ));
    signed(
        &app,
        path,
        &call_event(&sid, "completed", 3, Some(120)),
        204,
    )
    .await;
    let after_end = db.events(&id).await;
    let ended: Vec<u32> = after_end
        .iter()
        .filter_map(|e| match e {
            ConsultationEvent::CallEnded {
                duration_seconds, ..
            } => Some(*duration_seconds),
            _ => None,
        })
        .collect();
    assert_eq!(ended, vec![120], "one CallEnded of 120 s");
    signed(
        &app,
        path,
        &call_event(&sid, "completed", 3, Some(120)),
        204,
    )
    .await;
    assert_eq!(db.events(&id).await, after_end, "a repeat records nothing");
    assert_eq!(
        db.call(&call_id).await,
        (
            "completed".to_owned(),
            Some(sid.clone()),
            Some(3),
            Some(120)
        )
    );
    let read: Value = app
        .read(
            &format!("/v1/consultations/{id}"),
            &app.token(Role::Provider, "prov-1"),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(read["status"], "in_progress");

    // Out of order, on another consultation: "completed" arrives before "in-progress".
    let other = confirmed(&app, &db, "pat-2", "prov-2", in_minutes(10), 30, "voice").await;
    let response = voice_call(&app, Role::Patient, "pat-2", &other).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let other_call = response.json::<Value>().await.expect("json")["call_id"]
        .as_str()
        .expect("call_id")
        .to_owned();
    assert!(eventually(WAIT, || async { twilio.accepted_calls().len() == 3 }).await);
    let third = twilio.accepted_calls()[2].clone();
    let other_sid = third.sid.clone().expect("sid");
    let other_status = third.field("StatusCallback").expect("callback").to_owned();
    assert!(
        other_status.ends_with(&format!("call_id={other_call}")),
        "{other_status}"
    );
    let path = path_of(&other_status);
    signed(
        &app,
        path,
        &call_event(&other_sid, "completed", 3, Some(60)),
        204,
    )
    .await;
    signed(
        &app,
        path,
        &call_event(&other_sid, "in-progress", 2, None),
        204,
    )
    .await;
    let events = db.events(&other).await;
    let names: Vec<&str> = events
        .iter()
        .map(ConsultationEvent::name)
        .filter(|n| n.starts_with("Call"))
        .collect();
    assert_eq!(names, vec!["CallRequested", "CallStarted", "CallEnded"]);
    assert!(events.iter().any(|e| matches!(
        e,
        ConsultationEvent::CallEnded {
            duration_seconds: 60,
            ..
        }
    )));
    assert_eq!(
        db.call(&other_call).await,
        ("completed".to_owned(), Some(other_sid), Some(3), Some(60)),
        "the late in-progress does not move the row back"
    );

    // Not for a video consultation, nor for an admin.
    let video_id = confirmed(&app, &db, "pat-3", "prov-3", in_minutes(10), 30, "video").await;
    assert_problem(
        voice_call(&app, Role::Patient, "pat-3", &video_id).await,
        StatusCode::CONFLICT,
        "not_voice",
    )
    .await;
    assert_problem(
        voice_call(&app, Role::Admin, "admin-1", &id).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_problem(
        voice_call(&app, Role::Patient, "pat-2", &id).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(twilio.accepted_calls().len(), 3, "no other call was placed");
    db.close().await;
}

/// Without a voice provider a call cannot be asked for: 503, and nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_calls_need_a_voice_provider() {
    let Some(app) = spawn_app_with(Backend::Postgres, |_| {}).await else {
        return;
    };
    let db = Backdoor::open(&app).await;
    app.register_provider("prov-1").await;
    let id = confirmed(&app, &db, "pat-1", "prov-1", in_minutes(10), 30, "voice").await;
    let before = db.events(&id).await;
    assert_problem(
        voice_call(&app, Role::Patient, "pat-1", &id).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_configured",
    )
    .await;
    assert_eq!(db.events(&id).await, before);
    db.close().await;
}

// ---------------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------------

/// Every Twilio webhook refuses a request without a signature, with a wrong one, with a valid
/// signature over other parameters, or over another URL: 403, and the stream is unchanged. The
/// genuine request is then accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_without_a_valid_signature_are_refused_and_record_nothing() {
    let video = VideoFake::start().await;
    let twilio = TwilioFake::start().await;
    let Some(app) = spawn_app_with(Backend::Postgres, |config| {
        config.media.video = Some(video.config());
        config.media.voice = Some(twilio.voice_config());
        config.notifications.twilio = Some(twilio.config());
    })
    .await
    else {
        return;
    };
    let db = Backdoor::open(&app).await;
    app.register_provider("prov-1").await;
    app.register_provider("prov-2").await;
    let video_id = confirmed(&app, &db, "pat-1", "prov-1", in_minutes(10), 30, "video").await;
    let room = provisioned(&db, &video_id).await;
    let voice_id = confirmed(&app, &db, "pat-2", "prov-2", in_minutes(10), 30, "voice").await;
    let response = voice_call(&app, Role::Patient, "pat-2", &voice_id).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let call_id = response.json::<Value>().await.expect("json")["call_id"]
        .as_str()
        .expect("call_id")
        .to_owned();
    assert!(eventually(WAIT, || async { twilio.accepted_calls().len() == 1 }).await);
    let call = twilio.accepted_calls()[0].clone();
    let sid = call.sid.clone().expect("sid");
    let call_path = path_of(call.field("StatusCallback").expect("callback")).to_owned();
    let twiml_path = path_of(call.field("Url").expect("url")).to_owned();
    let room_path = format!("/v1/webhooks/twilio/rooms?consultation_id={video_id}");

    // (consultation, path, genuine form, the same form with one parameter changed)
    let cases = [
        (
            video_id.as_str(),
            room_path.clone(),
            room_event(
                &room,
                "participant-connected",
                1,
                &[("ParticipantIdentity", "pat-1")],
            ),
            room_event(&room, "room-ended", 1, &[("RoomDuration", "1")]),
        ),
        (
            voice_id.as_str(),
            call_path.clone(),
            call_event(&sid, "in-progress", 2, None),
            call_event(&sid, "completed", 2, Some(3600)),
        ),
        (
            voice_id.as_str(),
            twiml_path.clone(),
            pairs(&[
                ("CallSid", &sid),
                ("CallStatus", "in-progress"),
                ("To", PATIENT_PHONE),
            ]),
            pairs(&[
                ("CallSid", &sid),
                ("CallStatus", "in-progress"),
                ("To", "+15550000000"),
            ]),
        ),
    ];
    for (id, path, genuine, tampered) in &cases {
        let before = db.events(id).await;
        let good = sign(path, genuine);
        let refused = [
            webhook(&app, path, genuine, None).await,
            webhook(&app, path, genuine, Some("bm90IHRoZSBzaWduYXR1cmU=")).await,
            webhook(&app, path, genuine, Some("not base64 at all")).await,
            // Signed with another account's token.
            webhook(
                &app,
                path,
                genuine,
                Some(&twilio_signature::signature(
                    "another-auth-token",
                    &format!("{PUBLIC_BASE}{path}"),
                    genuine,
                )),
            )
            .await,
            // A genuine signature over other parameters.
            webhook(&app, path, tampered, Some(&good)).await,
            // A genuine signature, with a parameter added.
            webhook(
                &app,
                path,
                &[genuine.clone(), pairs(&[("Extra", "1")])].concat(),
                Some(&good),
            )
            .await,
        ];
        for response in refused {
            assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
        }
        assert_eq!(db.events(id).await, before, "nothing recorded for {path}");
    }

    // A genuine signature moved to another URL: the query names what the callback is about.
    let voice_path_as_provider = twiml_path.replace("caller=patient", "caller=provider");
    assert_ne!(voice_path_as_provider, twiml_path);
    let form = &cases[2].2;
    assert_problem(
        webhook(
            &app,
            &voice_path_as_provider,
            form,
            Some(&sign(&twiml_path, form)),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let other_room_path = format!("/v1/webhooks/twilio/rooms?consultation_id={voice_id}");
    let form = &cases[0].2;
    assert_problem(
        webhook(&app, &other_room_path, form, Some(&sign(&room_path, form))).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(db.count(&video_id, "CallStarted").await, 0);
    assert_eq!(db.count(&voice_id, "CallStarted").await, 0);
    assert_eq!(
        db.call(&call_id).await.2,
        None,
        "the call's row did not move"
    );

    // The genuine requests go through.
    signed(&app, &room_path, &cases[0].2, 204).await;
    assert_eq!(db.count(&video_id, "CallStarted").await, 1);
    signed(&app, &call_path, &cases[1].2, 204).await;
    assert_eq!(db.count(&voice_id, "CallStarted").await, 1);
    let form = &cases[2].2;
    let response = webhook(&app, &twiml_path, form, Some(&sign(&twiml_path, form))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_dials(&response.text().await.expect("TwiML"), PROVIDER_PHONE);
    db.close().await;
}

/// Room callbacks: two participants connecting record one CallStarted (by video); the room
/// ending records CallEnded with the room's duration and RoomEnded, once however often it is
/// reported; a callback about another room changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_callbacks_start_and_end_the_call_once() {
    let video = VideoFake::start().await;
    let twilio = TwilioFake::start().await;
    let Some(app) = spawn_app_with(Backend::Postgres, |config| {
        config.media.video = Some(video.config());
        config.notifications.twilio = Some(twilio.config());
    })
    .await
    else {
        return;
    };
    let db = Backdoor::open(&app).await;
    app.register_provider("prov-1").await;
    let id = confirmed(&app, &db, "pat-1", "prov-1", in_minutes(10), 30, "video").await;
    let room = provisioned(&db, &id).await;
    let held = video.room(&room.name).expect("the room at the fake");
    let callback = held.status_callback.clone().expect("a status callback");
    assert_eq!(
        callback,
        format!("{PUBLIC_BASE}/v1/webhooks/twilio/rooms?consultation_id={id}")
    );
    let path = path_of(&callback);

    // A room of the same consultation's name but another one: ignored.
    let stranger = Room {
        name: "consult-0000000000000000000000000000dead".into(),
        ..room.clone()
    };
    signed(
        &app,
        path,
        &room_event(&stranger, "participant-connected", 0, &[]),
        204,
    )
    .await;
    assert_eq!(db.count(&id, "CallStarted").await, 0);

    // Events Twilio sends that mean nothing here are accepted and ignored.
    signed(&app, path, &room_event(&room, "room-created", 0, &[]), 204).await;
    for (sequence, who) in [(1, "pat-1"), (2, "prov-1")] {
        signed(
            &app,
            path,
            &room_event(
                &room,
                "participant-connected",
                sequence,
                &[("ParticipantIdentity", who)],
            ),
            204,
        )
        .await;
    }
    let events = db.events(&id).await;
    let started: Vec<_> = events
        .iter()
        .filter(|e| e.name() == "CallStarted")
        .collect();
    assert_eq!(started.len(), 1, "one CallStarted for two participants");
    assert!(matches!(
        started[0],
        ConsultationEvent::CallStarted {
            via: CallChannel::Video,
            ..
        }
    ));
    let read: Value = app
        .read(
            &format!("/v1/consultations/{id}"),
            &app.token(Role::Patient, "pat-1"),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(read["status"], "in_progress");

    let ended = room_event(&room, "room-ended", 5, &[("RoomDuration", "1500")]);
    signed(&app, path, &ended, 204).await;
    let after = db.events(&id).await;
    let tail: Vec<&str> = after[events.len()..]
        .iter()
        .map(ConsultationEvent::name)
        .collect();
    assert_eq!(tail, vec!["CallEnded", "RoomEnded"]);
    assert!(after.iter().any(|e| matches!(
        e,
        ConsultationEvent::CallEnded {
            duration_seconds: 1500,
            ..
        }
    )));
    assert!(after.iter().any(|e| matches!(
        e,
        ConsultationEvent::RoomEnded {
            reason: RoomEndReason::ClosedByProvider,
            ..
        }
    )));
    signed(&app, path, &ended, 204).await;
    signed(
        &app,
        path,
        &room_event(&room, "participant-connected", 6, &[]),
        204,
    )
    .await;
    assert_eq!(db.events(&id).await, after, "repeats record nothing");
    let read: Value = app
        .read(
            &format!("/v1/consultations/{id}"),
            &app.token(Role::Patient, "pat-1"),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(read["room"]["ended"], true);
    db.close().await;
}

/// Twilio closes a room nobody joined after its unused timeout; while the consultation can
/// still be joined, a new room replaces it, and tokens name the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_closed_unused_by_the_provider_is_replaced() {
    let video = VideoFake::start().await;
    let twilio = TwilioFake::start().await;
    let Some(app) = spawn_app_with(Backend::Postgres, |config| {
        config.media.video = Some(video.config());
        config.notifications.twilio = Some(twilio.config());
    })
    .await
    else {
        return;
    };
    let db = Backdoor::open(&app).await;
    app.register_provider("prov-1").await;
    let id = confirmed(&app, &db, "pat-1", "prov-1", in_minutes(10), 30, "video").await;
    let first = provisioned(&db, &id).await;
    let callback = video
        .room(&first.name)
        .and_then(|r| r.status_callback.clone())
        .expect("a status callback");
    // Twilio closes it (unused) and says so.
    video.complete(&first.name);
    signed(
        &app,
        path_of(&callback),
        &room_event(&first, "room-ended", 3, &[("RoomDuration", "0")]),
        204,
    )
    .await;
    let replaced = eventually(WAIT, || async {
        db.count(&id, "RoomProvisioned").await == 2
    })
    .await;
    assert!(replaced, "a second room is provisioned");
    assert_eq!(db.count(&id, "RoomEnded").await, 1);
    assert_eq!(db.count(&id, "CallEnded").await, 0, "no call had started");
    let rooms = video.rooms();
    assert_eq!(rooms.len(), 2, "{rooms:?}");
    let response = video_token(&app, Role::Patient, "pat-1", &id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_ne!(
        body["room"],
        json!(first.name),
        "the token names the new room"
    );
    assert!(video.room(body["room"].as_str().expect("room")).is_some());
    db.close().await;
}
