//! Consultation rooms on Twilio Programmable Video (Rooms API v1).
//!
//! - Create: `POST {video_base}/v1/Rooms`, Basic auth (Account SID : Auth Token), form-encoded
//!   `UniqueName`, `Type=group`, `MaxParticipants=2`, `StatusCallback` and
//!   `StatusCallbackMethod=POST` (when a callback is given), `EmptyRoomTimeout`,
//!   `UnusedRoomTimeout`. Twilio answers `201` with the room (`sid` `RM…`).
//! - Idempotency: a `UniqueName` is unique among in-progress rooms, so creating the same room
//!   again is refused with `400` and Twilio error `53113` ("Room exists"); the client then
//!   fetches `GET /v1/Rooms/{UniqueName}` and returns that room.
//! - End: `POST /v1/Rooms/{Sid or UniqueName}` with `Status=completed`. A room Twilio no longer
//!   knows by that name (`404`: a name only resolves while the room is in progress) or that is
//!   no longer in progress (`400` with `53112` "Status is invalid … or the Room is not
//!   in-progress", or `53118` "Room completed") counts as ended.
//! - Tokens: [`super::token::twilio_access_token`] with the API key, if configured.
//!
//! Errors are classified for the dispatcher like the Messages client: timeouts, connection
//! errors, `408`, `429` and `5xx` are retryable (retrying a create is safe, see above), other
//! `4xx` are permanent. Room names are unguessable, so they are kept out of logs and errors.
//!
//! Twilio no longer onboards Programmable Video customers and ends the product on
//! 5 December 2026; this adapter sits behind [`VideoProvider`] so another provider can replace
//! it.

use std::fmt;
use std::time::Duration;

use consult_store::BoxFuture;
use reqwest::StatusCode;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use super::{AccessGrant, CreatedRoom, RoomRequest, TokenUnavailable, VideoProvider};
use crate::channels::twilio::TwilioError;
use crate::channels::SendError;

/// Twilio Video's production API root.
pub const DEFAULT_VIDEO_BASE: &str = "https://video.twilio.com";

/// Default minutes a room stays open after its last participant left.
pub const DEFAULT_EMPTY_ROOM_TIMEOUT_MINUTES: u32 = 5;

/// Default minutes a room nobody joined stays open (Twilio's maximum).
pub const DEFAULT_UNUSED_ROOM_TIMEOUT_MINUTES: u32 = 60;

/// How long before a consultation's start its room is created: Twilio closes a room nobody
/// joined after `UnusedRoomTimeout` (at most 60 minutes), so the room is created shortly
/// before the 15-minute window in which participants get tokens.
pub const PROVISION_LEAD: Duration = Duration::from_secs(20 * 60);

/// A consultation has two participants: the patient and the provider.
const MAX_PARTICIPANTS: &str = "2";

/// Twilio's limit on `UniqueName`, in characters.
const MAX_NAME_CHARS: usize = 128;

/// Twilio error: "Room exists" (an in-progress room already has this `UniqueName`).
const ROOM_EXISTS: i64 = 53113;
/// Twilio error: "Status is invalid" (the room is not in progress).
const STATUS_INVALID: i64 = 53112;
/// Twilio error: "Room completed".
const ROOM_COMPLETED: i64 = 53118;

const TOKEN_UNAVAILABLE: &str = "TWILIO_API_KEY and TWILIO_API_SECRET are not set";

/// Credentials and room settings for Twilio Video.
#[derive(Clone)]
pub struct TwilioVideoConfig {
    /// API root without a trailing slash; [`DEFAULT_VIDEO_BASE`] in production, a local fake in
    /// tests.
    pub video_base: String,
    /// The account SID (`AC…`), the Basic-auth user name and the tokens' `sub`.
    pub account_sid: String,
    /// The account's Auth Token, the Basic-auth password.
    pub auth_token: SecretString,
    /// API key SID (`SK…`, created in the US1 region) that signs access tokens; `None` means no
    /// tokens can be minted.
    pub api_key_sid: Option<String>,
    /// The API key's secret, the tokens' HMAC key.
    pub api_key_secret: Option<SecretString>,
    /// `EmptyRoomTimeout`: minutes a room stays open after its last participant left (1–60).
    pub empty_room_timeout_minutes: u32,
    /// `UnusedRoomTimeout`: minutes a room nobody joined stays open (1–60).
    pub unused_room_timeout_minutes: u32,
}

impl TwilioVideoConfig {
    /// A configuration for the production API, without an API key, with the default timeouts.
    pub fn new(account_sid: impl Into<String>, auth_token: SecretString) -> Self {
        Self {
            video_base: DEFAULT_VIDEO_BASE.to_owned(),
            account_sid: account_sid.into(),
            auth_token,
            api_key_sid: None,
            api_key_secret: None,
            empty_room_timeout_minutes: DEFAULT_EMPTY_ROOM_TIMEOUT_MINUTES,
            unused_room_timeout_minutes: DEFAULT_UNUSED_ROOM_TIMEOUT_MINUTES,
        }
    }
}

/// Hides the Auth Token and the API key secret.
impl fmt::Debug for TwilioVideoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |secret: &Option<SecretString>| secret.as_ref().map(|_| "[redacted]");
        f.debug_struct("TwilioVideoConfig")
            .field("video_base", &self.video_base)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"[redacted]")
            .field("api_key_sid", &self.api_key_sid)
            .field("api_key_secret", &redacted(&self.api_key_secret))
            .field(
                "empty_room_timeout_minutes",
                &self.empty_room_timeout_minutes,
            )
            .field(
                "unused_room_timeout_minutes",
                &self.unused_room_timeout_minutes,
            )
            .finish()
    }
}

/// Twilio Video as a [`VideoProvider`].
#[derive(Debug, Clone)]
pub struct TwilioVideo {
    config: TwilioVideoConfig,
    /// `{video_base}/v1/Rooms`; a room is this plus `/{sid or name}`.
    rooms_endpoint: String,
    client: reqwest::Client,
}

impl TwilioVideo {
    /// Builds the provider with its own HTTP client; `timeout` bounds each request from
    /// connecting to reading the response (`channels::twilio::DEFAULT_TIMEOUT` is a good
    /// value).
    ///
    /// Fails only if the HTTP client cannot be built (TLS backend initialisation).
    pub fn new(config: TwilioVideoConfig, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect would turn the POST into a GET; treat it as the error it is.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let rooms_endpoint = format!("{}/v1/Rooms", config.video_base.trim_end_matches('/'));
        Ok(Self {
            config,
            rooms_endpoint,
            client,
        })
    }

    /// The configuration this provider was built with.
    pub fn config(&self) -> &TwilioVideoConfig {
        &self.config
    }

    async fn create(&self, request: &RoomRequest) -> Result<CreatedRoom, SendError> {
        check_name(&request.name)?;
        let empty = timeout_minutes("EmptyRoomTimeout", self.config.empty_room_timeout_minutes)?;
        let unused = timeout_minutes("UnusedRoomTimeout", self.config.unused_room_timeout_minutes)?;
        let mut form = vec![
            ("UniqueName", request.name.clone()),
            ("Type", "group".to_owned()),
            ("MaxParticipants", MAX_PARTICIPANTS.to_owned()),
        ];
        if let Some(callback) = &request.status_callback {
            form.push(("StatusCallback", callback.clone()));
            form.push(("StatusCallbackMethod", "POST".to_owned()));
        }
        form.push(("EmptyRoomTimeout", empty));
        form.push(("UnusedRoomTimeout", unused));

        let response = self
            .authed(self.client.post(&self.rooms_endpoint))
            .form(&form)
            .send()
            .await
            .map_err(|error| request_error(&error))?;
        let status = response.status();
        if status.is_success() {
            let room = response.json::<Room>().await.ok();
            let sid = room.and_then(|room| room.sid);
            if sid.is_none() {
                // The room exists; ending it by name still works while it is in progress.
                tracing::warn!(
                    http_status = status.as_u16(),
                    "Twilio created the room but its response had no sid"
                );
            }
            tracing::info!(
                room_sid = sid.as_deref().unwrap_or(""),
                "Twilio room created"
            );
            return Ok(CreatedRoom {
                name: request.name.clone(),
                sid,
            });
        }

        let details = error_details(response).await;
        if status == StatusCode::BAD_REQUEST && details.code == Some(ROOM_EXISTS) {
            // An earlier attempt (or a redelivery) created it: this is that room.
            return self.fetch_in_progress(&request.name).await;
        }
        let error = status_error("create the room", status, &details, &[&request.name]);
        tracing::warn!(
            http_status = status.as_u16(),
            twilio_code = details.code,
            retryable = error.retryable,
            "Twilio refused to create the room"
        );
        Err(error)
    }

    /// The in-progress room called `name`.
    async fn fetch_in_progress(&self, name: &str) -> Result<CreatedRoom, SendError> {
        let response = self
            .authed(self.client.get(self.room_url(name)))
            .send()
            .await
            .map_err(|error| request_error(&error))?;
        let status = response.status();
        if status.is_success() {
            let room = response.json::<Room>().await.map_err(|_| {
                SendError::retryable("Twilio's answer about an existing room could not be read")
            })?;
            if room.status.as_deref().is_some_and(|s| s != "in-progress") {
                return Err(SendError::retryable(
                    "the existing Twilio room is no longer in progress",
                ));
            }
            tracing::info!(
                room_sid = room.sid.as_deref().unwrap_or(""),
                "Twilio room existed already"
            );
            return Ok(CreatedRoom {
                name: name.to_owned(),
                sid: room.sid,
            });
        }
        if status == StatusCode::NOT_FOUND {
            // It ended between Twilio's "Room exists" and this fetch; the name is free again,
            // so creating it once more will work.
            return Err(SendError::retryable(
                "the existing Twilio room ended while it was being fetched",
            ));
        }
        let details = error_details(response).await;
        Err(status_error(
            "fetch the existing room",
            status,
            &details,
            &[name],
        ))
    }

    async fn end(&self, name: &str, sid: Option<&str>) -> Result<(), SendError> {
        let target = match sid {
            Some(sid) => sid,
            None => {
                check_name(name)?;
                name
            }
        };
        if !is_path_safe(target) {
            return Err(SendError::permanent(
                "room sid has characters Twilio cannot address",
            ));
        }
        let response = self
            .authed(self.client.post(self.room_url(target)))
            .form(&[("Status", "completed")])
            .send()
            .await
            .map_err(|error| request_error(&error))?;
        let status = response.status();
        if status.is_success() {
            tracing::info!(room_sid = sid.unwrap_or(""), "Twilio room ended");
            return Ok(());
        }
        if status == StatusCode::NOT_FOUND {
            // A name stops resolving once its room has ended; an unknown sid is no room.
            tracing::info!(
                room_sid = sid.unwrap_or(""),
                "Twilio does not know the room (any more); counting it as ended"
            );
            return Ok(());
        }
        let details = error_details(response).await;
        if status == StatusCode::BAD_REQUEST
            && matches!(details.code, Some(STATUS_INVALID | ROOM_COMPLETED))
        {
            // We always ask for `completed`, so "invalid status" means "not in progress".
            tracing::info!(
                room_sid = sid.unwrap_or(""),
                twilio_code = details.code,
                "Twilio room had ended already"
            );
            return Ok(());
        }
        let error = status_error("end the room", status, &details, &[name, target]);
        tracing::warn!(
            room_sid = sid.unwrap_or(""),
            http_status = status.as_u16(),
            twilio_code = details.code,
            retryable = error.retryable,
            "Twilio refused to end the room"
        );
        Err(error)
    }

    fn room_url(&self, sid_or_name: &str) -> String {
        format!("{}/{sid_or_name}", self.rooms_endpoint)
    }

    fn authed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request
            .basic_auth(
                &self.config.account_sid,
                Some(self.config.auth_token.expose_secret()),
            )
            .header(reqwest::header::ACCEPT, "application/json")
    }
}

impl VideoProvider for TwilioVideo {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn provision_lead(&self) -> Option<Duration> {
        Some(PROVISION_LEAD)
    }

    fn create_room<'a>(
        &'a self,
        request: &'a RoomRequest,
    ) -> BoxFuture<'a, Result<CreatedRoom, SendError>> {
        Box::pin(self.create(request))
    }

    fn end_room<'a>(
        &'a self,
        name: &'a str,
        sid: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.end(name, sid))
    }

    fn access_token(&self, grant: &AccessGrant) -> Result<String, TokenUnavailable> {
        match (&self.config.api_key_sid, &self.config.api_key_secret) {
            (Some(key_sid), Some(secret))
                if !key_sid.is_empty() && !secret.expose_secret().is_empty() =>
            {
                Ok(super::token::twilio_access_token(
                    &self.config.account_sid,
                    key_sid,
                    secret.expose_secret(),
                    grant,
                ))
            }
            _ => Err(TokenUnavailable(TOKEN_UNAVAILABLE.to_owned())),
        }
    }
}

/// The part of Twilio's room resource we use.
#[derive(Deserialize)]
struct Room {
    sid: Option<String>,
    status: Option<String>,
}

async fn error_details(response: reqwest::Response) -> TwilioError {
    response
        .bytes()
        .await
        .ok()
        .and_then(|body| serde_json::from_slice(&body).ok())
        .unwrap_or_default()
}

/// Room names go into URL paths, so they must not need percent-encoding (Twilio: a
/// `UniqueName` with reserved characters cannot address the room).
fn check_name(name: &str) -> Result<(), SendError> {
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(SendError::permanent(format!(
            "room name must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if !is_path_safe(name) {
        return Err(SendError::permanent(
            "room name may only hold letters, digits, '-', '_', '.' and '~'",
        ));
    }
    Ok(())
}

/// RFC 3986 unreserved characters only.
fn is_path_safe(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        && text != "."
        && text != ".."
}

fn timeout_minutes(field: &str, minutes: u32) -> Result<String, SendError> {
    if (1..=60).contains(&minutes) {
        Ok(minutes.to_string())
    } else {
        Err(SendError::permanent(format!(
            "{field} must be 1 to 60 minutes, is {minutes}"
        )))
    }
}

/// A failure before any HTTP status arrived. Every Rooms call may be repeated safely.
fn request_error(error: &reqwest::Error) -> SendError {
    if error.is_builder() {
        SendError::permanent("invalid Twilio Video request (check video_base)")
    } else if error.is_timeout() {
        SendError::retryable("Twilio Video request timed out")
    } else if error.is_connect() {
        SendError::retryable("could not connect to Twilio Video")
    } else {
        SendError::retryable("Twilio Video request failed before a response arrived")
    }
}

/// A non-success status, with Twilio's error code and message (room names taken out).
fn status_error(
    action: &str,
    status: StatusCode,
    details: &TwilioError,
    hide: &[&str],
) -> SendError {
    let mut text = format!("Twilio Video answered {} to {action}", status.as_u16());
    if let Some(code) = details.code {
        text.push_str(&format!(" (code {code})"));
    }
    if let Some(message) = &details.message {
        let mut message: String = message.chars().take(300).collect();
        for secret in hide.iter().filter(|s| !s.is_empty()) {
            message = message.replace(secret, "[room]");
        }
        text.push_str(": ");
        text.push_str(&message);
    }
    let retryable = status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error();
    if retryable {
        SendError::retryable(text)
    } else {
        SendError::permanent(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secrets() {
        let mut config = TwilioVideoConfig::new("AC123", SecretString::from("auth-token-secret"));
        config.api_key_sid = Some("SK456".to_owned());
        config.api_key_secret = Some(SecretString::from("api-key-secret"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("auth-token-secret"), "{shown}");
        assert!(!shown.contains("api-key-secret"), "{shown}");
        assert!(
            shown.contains("AC123") && shown.contains("SK456"),
            "{shown}"
        );
    }

    #[test]
    fn room_names_must_be_addressable() {
        assert!(check_name("consult-3f2a_9.x~").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("..").is_err());
        assert!(check_name(&"a".repeat(129)).is_err());
        assert!(check_name(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn classifies_statuses_and_hides_the_room_name() {
        let details = TwilioError {
            code: Some(53101),
            message: Some("Room name consult-secret is too long".to_owned()),
        };
        let error = status_error(
            "create the room",
            StatusCode::BAD_REQUEST,
            &details,
            &["consult-secret"],
        );
        assert!(!error.retryable);
        assert_eq!(
            error.message,
            "Twilio Video answered 400 to create the room (code 53101): Room name [room] is too long"
        );
        let none = TwilioError::default();
        assert!(status_error("x", StatusCode::SERVICE_UNAVAILABLE, &none, &[]).retryable);
        assert!(status_error("x", StatusCode::TOO_MANY_REQUESTS, &none, &[]).retryable);
        assert!(!status_error("x", StatusCode::UNAUTHORIZED, &none, &[]).retryable);
    }

    #[test]
    fn timeouts_must_be_within_twilios_range() {
        assert!(timeout_minutes("EmptyRoomTimeout", 0).is_err());
        assert!(timeout_minutes("EmptyRoomTimeout", 61).is_err());
        assert_eq!(
            timeout_minutes("EmptyRoomTimeout", 60).ok().as_deref(),
            Some("60")
        );
    }
}
