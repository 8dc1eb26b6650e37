//! A strict stand-in for Twilio's Messages and Calls APIs on 127.0.0.1.
//!
//! It checks each `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` the way Twilio does
//! (account SID in the path, Basic auth, form content type, `To`/`From`/`Body`/`StatusCallback`
//! well-formed) and answers like Twilio: `201` with a message resource on success, a Twilio
//! error JSON (`{"code", "message", "more_info", "status"}`) with 400/401/404/415 otherwise.
//! `POST /2010-04-01/Accounts/{AccountSid}/Calls.json` gets the same treatment with the Calls
//! rules (E.164 `To`/`From`, exactly one of `Url`/`Twiml`/`ApplicationSid`, absolute URLs,
//! known `StatusCallbackEvent` values, `GET`/`POST` methods) and a call resource on success.
//! Every request is recorded, valid or not, so tests can check what arrived.
//!
//! It can also be told to misbehave ([`TwilioBehavior`], for messages and calls alike) to
//! exercise error handling.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use consult_reactors::channels::twilio::TwilioConfig;
use consult_reactors::voice::twilio::TwilioVoiceConfig;
use secrecy::SecretString;
use serde_json::json;

/// Account SID the fake expects unless started with [`TwilioFake::start_with`].
pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000001";
/// Auth Token the fake expects unless started with [`TwilioFake::start_with`].
pub const AUTH_TOKEN: &str = "fake-auth-token-0123456789abcdef";
/// SMS sender used by [`TwilioFake::config`].
pub const FROM_SMS: &str = "+15005550006";
/// WhatsApp sender used by [`TwilioFake::config`].
pub const FROM_WHATSAPP: &str = "+14155238886";
/// Status callback used by [`TwilioFake::config`].
pub const STATUS_CALLBACK: &str = "https://consult.example/v1/webhooks/twilio/messages";
/// Caller ID used by [`TwilioFake::voice_config`] (Twilio's magic "valid" test number).
pub const FROM_VOICE: &str = "+15005550006";
/// The call progress events Twilio knows.
pub const CALL_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];

/// How the fake answers requests that pass validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioBehavior {
    /// `201 Created` with a message resource (the default), each with a sid of its own.
    Accept,
    /// `201 Created` with this one sid for every message, as Twilio's published examples (and
    /// a mock built from them) answer.
    AcceptWithSid(String),
    /// Answer with this status and a Twilio error body (e.g. 500, 503, 429).
    Fail(u16),
    /// Wait this long before accepting (to outlast the client's timeout).
    Hang(Duration),
    /// Answer with a Twilio error: HTTP status, Twilio error code, message.
    Reject {
        status: u16,
        code: u32,
        message: String,
    },
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// The request path, e.g. `/2010-04-01/Accounts/AC…/Messages.json`.
    pub path: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// Whether the Basic auth header matched the expected account SID and Auth Token.
    pub auth_ok: bool,
    /// The decoded form fields, in the order they were sent.
    pub form: Vec<(String, String)>,
    /// The HTTP status the fake answered.
    pub status: u16,
    /// The `sid` handed out, for accepted messages and calls.
    pub sid: Option<String>,
}

impl ReceivedRequest {
    /// The first value of form field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every value of form field `name` (repeated keys such as `StatusCallbackEvent`), in order.
    pub fn fields(&self, name: &str) -> Vec<&str> {
        self.form
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }
}

#[derive(Debug)]
struct Shared {
    account_sid: String,
    auth_token: String,
    behavior: Mutex<TwilioBehavior>,
    requests: Mutex<Vec<ReceivedRequest>>,
    /// The form of every request as it arrived, before it was answered (a client that dies
    /// while waiting for the answer still counts here).
    arrivals: Mutex<Vec<Vec<(String, String)>>>,
    /// Calls requests, answered; kept apart from messages.
    calls: Mutex<Vec<ReceivedRequest>>,
    /// The form of every calls request as it arrived, before it was answered.
    call_arrivals: Mutex<Vec<Vec<(String, String)>>>,
}

/// A running fake; the server stops when the test's runtime ends.
#[derive(Debug, Clone)]
pub struct TwilioFake {
    /// `http://127.0.0.1:<port>`, to use as `api_base`.
    pub base_url: String,
    shared: Arc<Shared>,
}

impl TwilioFake {
    /// Starts a fake expecting [`ACCOUNT_SID`] and [`AUTH_TOKEN`].
    pub async fn start() -> Self {
        Self::start_with(ACCOUNT_SID, AUTH_TOKEN).await
    }

    /// Starts a fake expecting the given credentials.
    pub async fn start_with(account_sid: &str, auth_token: &str) -> Self {
        let shared = Arc::new(Shared {
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
            behavior: Mutex::new(TwilioBehavior::Accept),
            requests: Mutex::new(Vec::new()),
            arrivals: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            call_arrivals: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                post(create_message),
            )
            .route("/2010-04-01/Accounts/{sid}/Calls.json", post(create_call))
            .fallback(not_found)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Twilio fake");
        let address = listener.local_addr().expect("fake's local address");
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("Twilio fake server");
        });
        Self {
            base_url: format!("http://{address}"),
            shared,
        }
    }

    /// A channel configuration pointing at this fake, with both senders and a status callback.
    pub fn config(&self) -> TwilioConfig {
        TwilioConfig {
            api_base: self.base_url.clone(),
            account_sid: self.shared.account_sid.clone(),
            auth_token: SecretString::from(self.shared.auth_token.clone()),
            from_sms: Some(FROM_SMS.to_owned()),
            from_whatsapp: Some(FROM_WHATSAPP.to_owned()),
            status_callback: Some(STATUS_CALLBACK.to_owned()),
        }
    }

    /// A voice configuration pointing at this fake, calling from [`FROM_VOICE`].
    pub fn voice_config(&self) -> TwilioVoiceConfig {
        TwilioVoiceConfig {
            api_base: self.base_url.clone(),
            account_sid: self.shared.account_sid.clone(),
            auth_token: SecretString::from(self.shared.auth_token.clone()),
            from: FROM_VOICE.to_owned(),
        }
    }

    /// The path calls must be posted to.
    pub fn calls_path(&self) -> String {
        format!(
            "/2010-04-01/Accounts/{}/Calls.json",
            self.shared.account_sid
        )
    }

    /// Every calls request received so far (answered), oldest first.
    pub fn calls(&self) -> Vec<ReceivedRequest> {
        self.shared.calls.lock().expect("calls lock").clone()
    }

    /// The calls requests the fake accepted (answered 201).
    pub fn accepted_calls(&self) -> Vec<ReceivedRequest> {
        self.calls()
            .into_iter()
            .filter(|request| request.status == 201)
            .collect()
    }

    /// The form fields of every calls request that arrived, answered or not, oldest first.
    pub fn call_arrivals(&self) -> Vec<Vec<(String, String)>> {
        self.shared
            .call_arrivals
            .lock()
            .expect("call arrivals lock")
            .clone()
    }

    /// The path messages must be posted to.
    pub fn messages_path(&self) -> String {
        format!(
            "/2010-04-01/Accounts/{}/Messages.json",
            self.shared.account_sid
        )
    }

    /// Changes how subsequent valid requests are answered.
    pub fn set_behavior(&self, behavior: TwilioBehavior) {
        *self.shared.behavior.lock().expect("behavior lock") = behavior;
    }

    /// Everything received so far, oldest first.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    /// The form fields of every request that arrived, answered or not, oldest first.
    pub fn arrivals(&self) -> Vec<Vec<(String, String)>> {
        self.shared.arrivals.lock().expect("arrivals lock").clone()
    }

    /// The requests the fake accepted (answered 201).
    pub fn accepted(&self) -> Vec<ReceivedRequest> {
        self.requests()
            .into_iter()
            .filter(|request| request.status == 201)
            .collect()
    }
}

async fn not_found() -> Response {
    twilio_error(404, 20404, "The requested resource was not found")
}

async fn create_message(
    State(shared): State<Arc<Shared>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let auth_ok = basic_auth_matches(&headers, &shared.account_sid, &shared.auth_token);
    let form = std::str::from_utf8(&body).ok().and_then(parse_form);
    shared
        .arrivals
        .lock()
        .expect("arrivals lock")
        .push(form.clone().unwrap_or_default());
    let mut received = ReceivedRequest {
        path: format!("/2010-04-01/Accounts/{sid}/Messages.json"),
        content_type: content_type.clone(),
        auth_ok,
        form: form.clone().unwrap_or_default(),
        status: 0,
        sid: None,
    };

    let behavior = shared.behavior.lock().expect("behavior lock").clone();
    let outcome = check(
        &shared,
        &sid,
        auth_ok,
        content_type.as_deref(),
        form.as_deref(),
    );
    let response = match outcome {
        Err(refusal) => twilio_error(refusal.status, refusal.code, &refusal.message),
        Ok(()) => match behavior {
            TwilioBehavior::Accept => accept(&mut received, None),
            TwilioBehavior::AcceptWithSid(sid) => accept(&mut received, Some(sid)),
            TwilioBehavior::Hang(delay) => {
                tokio::time::sleep(delay).await;
                accept(&mut received, None)
            }
            TwilioBehavior::Fail(status) => twilio_error(status, 20500, "Internal Server Error"),
            TwilioBehavior::Reject {
                status,
                code,
                message,
            } => twilio_error(status, code, &message),
        },
    };
    received.status = response.status().as_u16();
    shared
        .requests
        .lock()
        .expect("requests lock")
        .push(received);
    response
}

async fn create_call(
    State(shared): State<Arc<Shared>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let auth_ok = basic_auth_matches(&headers, &shared.account_sid, &shared.auth_token);
    let form = std::str::from_utf8(&body).ok().and_then(parse_form);
    shared
        .call_arrivals
        .lock()
        .expect("call arrivals lock")
        .push(form.clone().unwrap_or_default());
    let mut received = ReceivedRequest {
        path: format!("/2010-04-01/Accounts/{sid}/Calls.json"),
        content_type: content_type.clone(),
        auth_ok,
        form: form.clone().unwrap_or_default(),
        status: 0,
        sid: None,
    };

    let behavior = shared.behavior.lock().expect("behavior lock").clone();
    let outcome = check_call(
        &shared,
        &sid,
        auth_ok,
        content_type.as_deref(),
        form.as_deref(),
    );
    let response = match outcome {
        Err(refusal) => twilio_error(refusal.status, refusal.code, &refusal.message),
        Ok(()) => match behavior {
            TwilioBehavior::Accept | TwilioBehavior::AcceptWithSid(_) => accept_call(&mut received),
            TwilioBehavior::Hang(delay) => {
                tokio::time::sleep(delay).await;
                accept_call(&mut received)
            }
            TwilioBehavior::Fail(status) => twilio_error(status, 20500, "Internal Server Error"),
            TwilioBehavior::Reject {
                status,
                code,
                message,
            } => twilio_error(status, code, &message),
        },
    };
    received.status = response.status().as_u16();
    shared.calls.lock().expect("calls lock").push(received);
    response
}

/// Why the fake refuses a request: HTTP status, Twilio error code, message.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub code: u32,
    pub message: String,
}

impl Refusal {
    /// The Twilio error response for this refusal.
    pub fn into_response(self) -> Response {
        twilio_error(self.status, self.code, &self.message)
    }
}

/// A [`Refusal`].
pub fn refuse(status: u16, code: u32, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

/// Twilio's own checks on a Messages request, in roughly the order Twilio applies them.
fn check(
    shared: &Shared,
    sid: &str,
    auth_ok: bool,
    content_type: Option<&str>,
    form: Option<&[(String, String)]>,
) -> Result<(), Refusal> {
    let form = check_common(shared, sid, auth_ok, content_type, form)?;
    let single = |name: &str| single(form, name);

    let to = single("To")?.ok_or_else(|| refuse(400, 21604, "A 'To' phone number is required."))?;
    let from =
        single("From")?.ok_or_else(|| refuse(400, 21603, "A 'From' phone number is required."))?;
    let (to_whatsapp, to_number) = split_channel(to);
    let (from_whatsapp, from_number) = split_channel(from);
    if !is_e164(to_number) {
        return Err(refuse(
            400,
            21211,
            format!("The 'To' number {to} is not a valid phone number."),
        ));
    }
    if !is_e164(from_number) {
        return Err(refuse(
            400,
            21212,
            format!("The 'From' number {from} is not a valid phone number."),
        ));
    }
    if to_whatsapp != from_whatsapp {
        return Err(refuse(
            400,
            21910,
            "Invalid From and To pair. From and To should be of the same channel",
        ));
    }
    match single("Body")? {
        None | Some("") => {
            return Err(refuse(400, 21602, "Message body is required."));
        }
        Some(body) if body.chars().count() > 1600 => {
            return Err(refuse(
                400,
                21617,
                "The concatenated message body exceeds the 1600 character limit.",
            ));
        }
        Some(_) => {}
    }
    if let Some(callback) = single("StatusCallback")? {
        if !is_absolute_url(callback) {
            return Err(refuse(400, 21609, "Invalid StatusCallback url"));
        }
    }
    Ok(())
}

/// Twilio's checks on a Calls request (`CreateCall` in the spec, plus what the live API
/// refuses: one instruction source, E.164 numbers, absolute URLs, known events).
fn check_call(
    shared: &Shared,
    sid: &str,
    auth_ok: bool,
    content_type: Option<&str>,
    form: Option<&[(String, String)]>,
) -> Result<(), Refusal> {
    let form = check_common(shared, sid, auth_ok, content_type, form)?;
    let single = |name: &str| single(form, name);

    let to = single("To")?.ok_or_else(|| refuse(400, 21201, "No 'To' number is specified"))?;
    let from =
        single("From")?.ok_or_else(|| refuse(400, 21213, "No 'From' number is specified"))?;
    if !is_e164(to) {
        return Err(refuse(
            400,
            21211,
            format!("The 'To' number {to} is not a valid phone number."),
        ));
    }
    if !is_e164(from) {
        return Err(refuse(
            400,
            21212,
            format!("The 'From' number {from} is not a valid phone number."),
        ));
    }
    let url = single("Url")?;
    let sources = [url, single("Twiml")?, single("ApplicationSid")?];
    match sources.iter().filter(|source| source.is_some()).count() {
        0 => return Err(refuse(400, 21205, "Url parameter is required.")),
        1 => {}
        _ => {
            return Err(refuse(
                400,
                21205,
                "Give exactly one of Url, Twiml and ApplicationSid.",
            ))
        }
    }
    if url.is_some_and(|url| !is_absolute_url(url)) {
        return Err(refuse(400, 21205, "Url is not a valid URL."));
    }
    for name in ["Method", "StatusCallbackMethod", "FallbackMethod"] {
        if let Some(method) = single(name)? {
            if method != "GET" && method != "POST" {
                return Err(refuse(
                    400,
                    21200,
                    format!("{name} must be GET or POST, not {method}"),
                ));
            }
        }
    }
    if let Some(callback) = single("StatusCallback")? {
        if !is_absolute_url(callback) {
            return Err(refuse(400, 21609, "Invalid StatusCallback url"));
        }
    }
    for (key, event) in form {
        if key == "StatusCallbackEvent" && !CALL_EVENTS.contains(&event.as_str()) {
            return Err(refuse(
                400,
                21626,
                format!("Invalid StatusCallbackEvent: {event}"),
            ));
        }
    }
    Ok(())
}

/// Credentials, account, content type and form syntax: what every endpoint checks first.
fn check_common<'f>(
    shared: &Shared,
    sid: &str,
    auth_ok: bool,
    content_type: Option<&str>,
    form: Option<&'f [(String, String)]>,
) -> Result<&'f [(String, String)], Refusal> {
    if !auth_ok {
        return Err(refuse(401, 20003, "Authenticate"));
    }
    if sid != shared.account_sid {
        return Err(refuse(404, 20404, "The requested resource was not found"));
    }
    if !is_form(content_type) {
        return Err(refuse(415, 20415, "Unsupported Media Type"));
    }
    form.ok_or_else(|| refuse(400, 20001, "Malformed form body"))
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

/// Whether `content_type` is `application/x-www-form-urlencoded` (parameters allowed).
pub fn is_form(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|value| {
        value.split(';').next().is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
    })
}

/// An absolute `http(s)` URL with a host and no whitespace, as Twilio wants for webhooks.
pub fn is_absolute_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && !url.contains(char::is_whitespace)
}

fn accept(received: &mut ReceivedRequest, sid: Option<String>) -> Response {
    let sid = sid.unwrap_or_else(|| format!("SM{}", uuid::Uuid::new_v4().simple()));
    received.sid = Some(sid.clone());
    let field = |name: &str| received.field(name).unwrap_or_default().to_owned();
    let body = json!({
        "sid": sid,
        "account_sid": received.path.split('/').nth(3).unwrap_or_default(),
        "messaging_service_sid": null,
        "from": field("From"),
        "to": field("To"),
        "body": field("Body"),
        "status": "queued",
        "direction": "outbound-api",
        "num_segments": "1",
        "num_media": "0",
        "error_code": null,
        "error_message": null,
        "price": null,
        "price_unit": "USD",
        "api_version": "2010-04-01",
        "uri": format!("{}/{sid}.json", received.path.trim_end_matches(".json")),
    });
    (StatusCode::CREATED, Json(body)).into_response()
}

fn accept_call(received: &mut ReceivedRequest) -> Response {
    let sid = format!("CA{}", uuid::Uuid::new_v4().simple());
    received.sid = Some(sid.clone());
    let field = |name: &str| received.field(name).unwrap_or_default().to_owned();
    let now = chrono::Utc::now().to_rfc2822();
    let body = json!({
        "sid": sid,
        "date_created": now,
        "date_updated": now,
        "parent_call_sid": null,
        "account_sid": received.path.split('/').nth(3).unwrap_or_default(),
        "to": field("To"),
        "to_formatted": field("To"),
        "from": field("From"),
        "from_formatted": field("From"),
        "phone_number_sid": null,
        "status": "queued",
        "start_time": null,
        "end_time": null,
        "duration": null,
        "price": null,
        "price_unit": "USD",
        "direction": "outbound-api",
        "answered_by": null,
        "api_version": "2010-04-01",
        "forwarded_from": null,
        "group_sid": null,
        "caller_name": null,
        "queue_time": "0",
        "trunk_sid": null,
        "uri": format!("{}/{sid}.json", received.path.trim_end_matches(".json")),
        "subresource_uris": {},
    });
    (StatusCode::CREATED, Json(body)).into_response()
}

/// Twilio's error body with this HTTP status, error code and message.
pub fn twilio_error(status: u16, code: u32, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, Json(body)).into_response()
}

/// Whether the `Authorization` header is Basic `user:password`.
pub fn basic_auth_matches(headers: &HeaderMap, user: &str, password: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .is_some_and(|decoded| decoded == format!("{user}:{password}"))
}

fn split_channel(address: &str) -> (bool, &str) {
    match address.strip_prefix("whatsapp:") {
        Some(number) => (true, number),
        None => (false, address),
    }
}

fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (2..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// Decodes `application/x-www-form-urlencoded`; `None` if malformed.
pub fn parse_form(body: &str) -> Option<Vec<(String, String)>> {
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode_component(name)?, decode_component(value)?))
        })
        .collect()
}

fn decode_component(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut input = text.bytes();
    while let Some(byte) = input.next() {
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => {
                let high = (input.next()? as char).to_digit(16)?;
                let low = (input.next()? as char).to_digit(16)?;
                bytes.push(u8::try_from(high * 16 + low).ok()?);
            }
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).ok()
}
