//! A strict stand-in for Twilio Video's Rooms API (v1) on 127.0.0.1.
//!
//! - `POST /v1/Rooms` checks Basic auth, the form content type and the fields the way Twilio
//!   does (`Type` one of `group|group-small|peer-to-peer|go`, `MaxParticipants` 1–50,
//!   `EmptyRoomTimeout`/`UnusedRoomTimeout` 1–60, `StatusCallback` an absolute URL,
//!   `StatusCallbackMethod` `GET|POST`, `UniqueName` at most 128 characters and unique among
//!   in-progress rooms, else `400` with code `53113` "Room exists") and answers `201` with the
//!   room.
//! - `GET /v1/Rooms/{Sid or UniqueName}`: any room by sid, an in-progress room by name;
//!   `404` (code `20404`) otherwise.
//! - `POST /v1/Rooms/{Sid or UniqueName}` with the required `Status=completed` ends an
//!   in-progress room (`202` with the room, the status code the spec gives `UpdateRoom`); a
//!   room that is not in progress gets `400` code `53112`, and a name stops resolving once its
//!   room ended (`404`), as on Twilio.
//!
//! Rooms are kept (`RM` + 32 hex sids) and every request is recorded, valid or not. The fake
//! can be told to misbehave with [`TwilioBehavior`], for requests that pass validation.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use consult_reactors::video::twilio::TwilioVideoConfig;
use secrecy::SecretString;
use serde_json::{json, Value};

use super::twilio::{
    basic_auth_matches, is_absolute_url, is_form, parse_form, refuse, twilio_error, Refusal,
    TwilioBehavior, ACCOUNT_SID, AUTH_TOKEN,
};

/// API key SID put in [`VideoFake::config`], for minting tokens.
pub const API_KEY_SID: &str = "SK00000000000000000000000000000002";
/// API key secret put in [`VideoFake::config`].
pub const API_KEY_SECRET: &str = "fake-api-key-secret-0123456789abc";
/// Room types the spec knows.
pub const ROOM_TYPES: [&str; 4] = ["group", "group-small", "peer-to-peer", "go"];

/// One room as the fake holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRoom {
    /// `RM` + 32 hex digits.
    pub sid: String,
    /// The `UniqueName` (the sid when none was given).
    pub unique_name: String,
    /// `in-progress` or `completed`.
    pub status: String,
    /// `Type` (default `group`).
    pub room_type: String,
    pub max_participants: u32,
    pub empty_room_timeout: u32,
    pub unused_room_timeout: u32,
    pub status_callback: Option<String>,
    pub status_callback_method: String,
}

impl FakeRoom {
    /// Whether the room is still open.
    pub fn in_progress(&self) -> bool {
        self.status == "in-progress"
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct VideoRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// The request path, e.g. `/v1/Rooms` or `/v1/Rooms/RM…`.
    pub path: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// Whether the Basic auth header matched the expected account SID and Auth Token.
    pub auth_ok: bool,
    /// The decoded form fields, in the order they were sent (empty for `GET`).
    pub form: Vec<(String, String)>,
    /// The HTTP status the fake answered.
    pub status: u16,
}

impl VideoRequest {
    /// The first value of form field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Debug)]
struct Shared {
    account_sid: String,
    auth_token: String,
    behavior: Mutex<TwilioBehavior>,
    rooms: Mutex<Vec<FakeRoom>>,
    requests: Mutex<Vec<VideoRequest>>,
}

/// A running fake; the server stops when the test's runtime ends.
#[derive(Debug, Clone)]
pub struct VideoFake {
    /// `http://127.0.0.1:<port>`, to use as `video_base`.
    pub base_url: String,
    shared: Arc<Shared>,
}

impl VideoFake {
    /// Starts a fake expecting the Twilio fake's [`ACCOUNT_SID`] and [`AUTH_TOKEN`].
    pub async fn start() -> Self {
        Self::start_with(ACCOUNT_SID, AUTH_TOKEN).await
    }

    /// Starts a fake expecting the given credentials.
    pub async fn start_with(account_sid: &str, auth_token: &str) -> Self {
        let shared = Arc::new(Shared {
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
            behavior: Mutex::new(TwilioBehavior::Accept),
            rooms: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/Rooms", post(create_room))
            .route("/v1/Rooms/{room}", get(fetch_room).post(update_room))
            .fallback(not_found)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Video fake");
        let address = listener.local_addr().expect("fake's local address");
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("Video fake server");
        });
        Self {
            base_url: format!("http://{address}"),
            shared,
        }
    }

    /// A provider configuration pointing at this fake, with an API key (tokens can be minted)
    /// and the default room timeouts.
    pub fn config(&self) -> TwilioVideoConfig {
        TwilioVideoConfig {
            video_base: self.base_url.clone(),
            account_sid: self.shared.account_sid.clone(),
            auth_token: SecretString::from(self.shared.auth_token.clone()),
            api_key_sid: Some(API_KEY_SID.to_owned()),
            api_key_secret: Some(SecretString::from(API_KEY_SECRET)),
            empty_room_timeout_minutes: 5,
            unused_room_timeout_minutes: 60,
        }
    }

    /// Changes how subsequent valid requests are answered.
    pub fn set_behavior(&self, behavior: TwilioBehavior) {
        *self.shared.behavior.lock().expect("behavior lock") = behavior;
    }

    /// Every room ever created, oldest first.
    pub fn rooms(&self) -> Vec<FakeRoom> {
        self.shared.rooms.lock().expect("rooms lock").clone()
    }

    /// The room with this sid, or the in-progress room with this name.
    pub fn room(&self, sid_or_name: &str) -> Option<FakeRoom> {
        let rooms = self.shared.rooms.lock().expect("rooms lock");
        find(&rooms, sid_or_name).map(|index| rooms[index].clone())
    }

    /// How many rooms have been created.
    pub fn created(&self) -> usize {
        self.shared.rooms.lock().expect("rooms lock").len()
    }

    /// Ends a room as Twilio does on its own (empty or unused room timeout); `false` if there
    /// is no such in-progress room.
    pub fn complete(&self, sid_or_name: &str) -> bool {
        let mut rooms = self.shared.rooms.lock().expect("rooms lock");
        match find(&rooms, sid_or_name) {
            Some(index) if rooms[index].in_progress() => {
                rooms[index].status = "completed".to_owned();
                true
            }
            _ => false,
        }
    }

    /// Everything received so far, oldest first.
    pub fn requests(&self) -> Vec<VideoRequest> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    /// The `POST /v1/Rooms` requests received so far, oldest first.
    pub fn create_requests(&self) -> Vec<VideoRequest> {
        self.requests()
            .into_iter()
            .filter(|request| request.method == "POST" && request.path == "/v1/Rooms")
            .collect()
    }
}

/// The index of the room with this sid, or of the in-progress room with this name.
fn find(rooms: &[FakeRoom], sid_or_name: &str) -> Option<usize> {
    rooms
        .iter()
        .position(|room| room.sid == sid_or_name)
        .or_else(|| {
            rooms
                .iter()
                .position(|room| room.in_progress() && room.unique_name == sid_or_name)
        })
}

async fn not_found() -> Response {
    twilio_error(404, 20404, "The requested resource was not found")
}

/// What the handlers share: record the request, check credentials and (for `POST`) the form,
/// apply the configured behavior, then run `answer`.
async fn handle(
    shared: &Shared,
    method: Method,
    path: String,
    headers: &HeaderMap,
    body: &[u8],
    answer: impl FnOnce(&Shared, &[(String, String)]) -> Response,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let auth_ok = basic_auth_matches(headers, &shared.account_sid, &shared.auth_token);
    let form = std::str::from_utf8(body).ok().and_then(parse_form);
    let mut received = VideoRequest {
        method: method.to_string(),
        path,
        content_type: content_type.clone(),
        auth_ok,
        form: form.clone().unwrap_or_default(),
        status: 0,
    };

    let behavior = shared.behavior.lock().expect("behavior lock").clone();
    let response = if !auth_ok {
        twilio_error(401, 20003, "Authenticate")
    } else if method == Method::POST && !is_form(content_type.as_deref()) {
        twilio_error(415, 20415, "Unsupported Media Type")
    } else {
        // A GET carries no form.
        let form = if method == Method::GET {
            Some(Vec::new())
        } else {
            form
        };
        match form {
            None => twilio_error(400, 20001, "Malformed form body"),
            Some(form) => match behavior {
                TwilioBehavior::Accept | TwilioBehavior::AcceptWithSid(_) => answer(shared, &form),
                TwilioBehavior::Hang(delay) => {
                    tokio::time::sleep(delay).await;
                    answer(shared, &form)
                }
                TwilioBehavior::Fail(status) => {
                    twilio_error(status, 20500, "Internal Server Error")
                }
                TwilioBehavior::Reject {
                    status,
                    code,
                    message,
                } => twilio_error(status, code, &message),
            },
        }
    };
    received.status = response.status().as_u16();
    shared
        .requests
        .lock()
        .expect("requests lock")
        .push(received);
    response
}

async fn create_room(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = "/v1/Rooms".to_owned();
    handle(&shared, Method::POST, path, &headers, &body, create).await
}

async fn fetch_room(
    State(shared): State<Arc<Shared>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v1/Rooms/{room}");
    handle(&shared, Method::GET, path, &headers, &[], |shared, _| {
        let rooms = shared.rooms.lock().expect("rooms lock");
        match find(&rooms, &room) {
            Some(index) => room_response(StatusCode::OK, &shared.account_sid, &rooms[index]),
            None => twilio_error(404, 20404, "The requested resource was not found"),
        }
    })
    .await
}

async fn update_room(
    State(shared): State<Arc<Shared>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/Rooms/{room}");
    handle(
        &shared,
        Method::POST,
        path,
        &headers,
        &body,
        |shared, form| {
            let status = match single(form, "Status") {
                Err(refusal) => return refusal.into_response(),
                Ok(None) => return twilio_error(400, 20001, "Missing required parameter Status"),
                Ok(Some(status)) => status,
            };
            if !["in-progress", "completed", "failed"].contains(&status) {
                return twilio_error(400, 53112, "Status is invalid");
            }
            let mut rooms = shared.rooms.lock().expect("rooms lock");
            let Some(index) = find(&rooms, &room) else {
                return twilio_error(404, 20404, "The requested resource was not found");
            };
            if status != "completed" || !rooms[index].in_progress() {
                return twilio_error(400, 53112, "Status is invalid");
            }
            rooms[index].status = "completed".to_owned();
            room_response(StatusCode::ACCEPTED, &shared.account_sid, &rooms[index])
        },
    )
    .await
}

/// `POST /v1/Rooms` once credentials and content type passed.
fn create(shared: &Shared, form: &[(String, String)]) -> Response {
    create_checked(shared, form).unwrap_or_else(Refusal::into_response)
}

fn create_checked(shared: &Shared, form: &[(String, String)]) -> Result<Response, Refusal> {
    let room_type = single(form, "Type")?.unwrap_or("group");
    if !ROOM_TYPES.contains(&room_type) {
        return Err(refuse(400, 53108, "RoomType is not valid"));
    }
    let max_participants = number(form, "MaxParticipants", 1..=50, 53107)?.unwrap_or(50);
    let empty_room_timeout = number(form, "EmptyRoomTimeout", 1..=60, 53109)?.unwrap_or(5);
    let unused_room_timeout = number(form, "UnusedRoomTimeout", 1..=60, 53109)?.unwrap_or(5);
    let status_callback = single(form, "StatusCallback")?;
    if status_callback.is_some_and(|url| !is_absolute_url(url)) {
        return Err(refuse(400, 53111, "StatusCallback is invalid"));
    }
    let method = single(form, "StatusCallbackMethod")?.unwrap_or("POST");
    if method != "GET" && method != "POST" {
        return Err(refuse(400, 53110, "StatusCallbackMethod is invalid"));
    }
    let unique_name = single(form, "UniqueName")?;
    if unique_name.is_some_and(|name| name.chars().count() > 128) {
        return Err(refuse(400, 53101, "Room name is too long"));
    }
    if unique_name.is_some_and(str::is_empty) {
        return Err(refuse(400, 53100, "Room name is invalid"));
    }

    let mut rooms = shared.rooms.lock().expect("rooms lock");
    if let Some(name) = unique_name {
        if rooms
            .iter()
            .any(|room| room.in_progress() && room.unique_name == name)
        {
            return Err(refuse(400, 53113, "Room exists"));
        }
    }
    let sid = format!("RM{}", uuid::Uuid::new_v4().simple());
    let room = FakeRoom {
        unique_name: unique_name.map_or_else(|| sid.clone(), str::to_owned),
        sid,
        status: "in-progress".to_owned(),
        room_type: room_type.to_owned(),
        max_participants,
        empty_room_timeout,
        unused_room_timeout,
        status_callback: status_callback.map(str::to_owned),
        status_callback_method: method.to_owned(),
    };
    let response = room_response(StatusCode::CREATED, &shared.account_sid, &room);
    rooms.push(room);
    Ok(response)
}

/// The value of a field that may appear at most once.
fn single<'f>(form: &'f [(String, String)], name: &str) -> Result<Option<&'f str>, Refusal> {
    let mut values = form.iter().filter(|(key, _)| key == name);
    let first = values.next().map(|(_, value)| value.as_str());
    if values.next().is_some() {
        return Err(refuse(400, 20001, format!("Duplicate parameter {name}")));
    }
    Ok(first)
}

/// An integer field within `range`, else Twilio error `code`.
fn number(
    form: &[(String, String)],
    name: &str,
    range: std::ops::RangeInclusive<u32>,
    code: u32,
) -> Result<Option<u32>, Refusal> {
    let Some(text) = single(form, name)? else {
        return Ok(None);
    };
    match text.parse::<u32>() {
        Ok(value) if range.contains(&value) => Ok(Some(value)),
        _ => Err(refuse(400, code, format!("{name} is out of range: {text}"))),
    }
}

fn room_response(status: StatusCode, account_sid: &str, room: &FakeRoom) -> Response {
    (status, Json(room_json(account_sid, room))).into_response()
}

/// The room resource as Twilio returns it (`video.v1.room`).
fn room_json(account_sid: &str, room: &FakeRoom) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let completed = !room.in_progress();
    let url = format!("https://video.twilio.com/v1/Rooms/{}", room.sid);
    json!({
        "sid": room.sid,
        "status": room.status,
        "date_created": now,
        "date_updated": now,
        "account_sid": account_sid,
        "enable_turn": true,
        "unique_name": room.unique_name,
        "status_callback": room.status_callback,
        "status_callback_method": room.status_callback_method,
        "end_time": if completed { Value::from(now.clone()) } else { Value::Null },
        "duration": if completed { Value::from(0) } else { Value::Null },
        "type": room.room_type,
        "max_participants": room.max_participants,
        "max_participant_duration": 14400,
        "max_concurrent_published_tracks": 170,
        "record_participants_on_connect": false,
        "video_codecs": ["VP8", "H264"],
        "media_region": "us1",
        "audio_only": false,
        "empty_room_timeout": room.empty_room_timeout,
        "unused_room_timeout": room.unused_room_timeout,
        "large_room": false,
        "url": url,
        "links": {
            "participants": format!("{url}/Participants"),
            "recordings": format!("{url}/Recordings"),
            "recording_rules": format!("{url}/RecordingRules"),
        },
    })
}
