//! Outbound calls through Twilio Programmable Voice.
//!
//! One call is one `POST {api_base}/2010-04-01/Accounts/{AccountSid}/Calls.json` with Basic
//! auth (Account SID : Auth Token) and a form-encoded body: `To`, `From` (our number), `Url`
//! (our TwiML webhook) with `Method=POST`, `StatusCallback` with `StatusCallbackMethod=POST`,
//! and `StatusCallbackEvent` repeated once per event (`initiated`, `ringing`, `answered`,
//! `completed`): Twilio wants the key repeated, not bracketed. Twilio answers `201 Created`
//! with the call resource, whose `sid` (`CA…`) and `status` (`queued`) become [`PlacedCall`].
//!
//! # Retries
//!
//! Calls have no idempotency key: a request Twilio received may ring the phone even if its
//! answer never reaches us, and sending it again would ring twice. So only failures where
//! Twilio surely did not take the call are retryable:
//!
//! - the connection could not be made (nothing was sent);
//! - `429 Too Many Requests`, `408 Request Timeout`, and `500`, `502`, `503` (Twilio, or its
//!   edge, refused or failed the request instead of creating a call).
//!
//! Everything else is permanent, including a timeout while waiting for the answer, a
//! connection dropped after the request went out, and `504 Gateway Timeout`: the call may or
//! may not have been placed, and the error message says so. `4xx` refusals (invalid number,
//! unverified caller ID, bad credentials) are permanent as usual.
//!
//! Nothing here logs or returns a full phone number.

use std::fmt;
use std::time::Duration;

use consult_store::BoxFuture;
use reqwest::StatusCode;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use super::{CallRequest, PlacedCall, VoiceProvider};
use crate::channels::twilio::{error_text, is_e164, TwilioError};
use crate::channels::{mask, SendError};

/// Twilio's production API root.
pub const DEFAULT_API_BASE: &str = "https://api.twilio.com";

/// The call progress events we ask Twilio to report, each sent as its own
/// `StatusCallbackEvent` field.
pub const STATUS_CALLBACK_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];

/// What a caller is told when the outcome of a call request is unknown.
const MAYBE_PLACED: &str = "the call may or may not have been placed; not retrying";

/// Credentials and caller ID for Twilio Voice.
#[derive(Clone)]
pub struct TwilioVoiceConfig {
    /// API root without a trailing slash; [`DEFAULT_API_BASE`] in production, a local fake in
    /// tests.
    pub api_base: String,
    /// The account SID (`AC…`), also the Basic-auth user name.
    pub account_sid: String,
    /// The account's Auth Token, the Basic-auth password.
    pub auth_token: SecretString,
    /// Our Twilio number (E.164), the caller ID on every call.
    pub from: String,
}

impl TwilioVoiceConfig {
    /// A configuration for the production API.
    pub fn new(
        account_sid: impl Into<String>,
        auth_token: SecretString,
        from: impl Into<String>,
    ) -> Self {
        Self {
            api_base: DEFAULT_API_BASE.to_owned(),
            account_sid: account_sid.into(),
            auth_token,
            from: from.into(),
        }
    }
}

/// Hides the Auth Token (and keeps the caller ID, which is our own number).
impl fmt::Debug for TwilioVoiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioVoiceConfig")
            .field("api_base", &self.api_base)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"[redacted]")
            .field("from", &self.from)
            .finish()
    }
}

/// Twilio Programmable Voice as a [`VoiceProvider`].
#[derive(Debug, Clone)]
pub struct TwilioVoice {
    config: TwilioVoiceConfig,
    /// `{api_base}/2010-04-01/Accounts/{AccountSid}/Calls.json`.
    endpoint: String,
    client: reqwest::Client,
}

impl TwilioVoice {
    /// Builds the provider with its own HTTP client; `timeout` bounds each request from
    /// connecting to reading the response (`channels::twilio::DEFAULT_TIMEOUT` is a good
    /// value). A timeout is not retried (see the module documentation), so keep it generous.
    ///
    /// Fails only if the HTTP client cannot be built (TLS backend initialisation).
    pub fn new(config: TwilioVoiceConfig, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // Connecting gets half the time, so a slow connection surfaces as a connect error
            // (nothing sent, retryable) rather than as the ambiguous overall timeout.
            .connect_timeout(timeout / 2)
            // A redirect would turn the POST into a GET; treat it as the error it is.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let endpoint = format!(
            "{}/2010-04-01/Accounts/{}/Calls.json",
            config.api_base.trim_end_matches('/'),
            config.account_sid
        );
        Ok(Self {
            config,
            endpoint,
            client,
        })
    }

    /// The configuration this provider was built with.
    pub fn config(&self) -> &TwilioVoiceConfig {
        &self.config
    }

    async fn place(&self, request: &CallRequest) -> Result<PlacedCall, SendError> {
        let to = request.to.trim();
        if !is_e164(to) {
            return Err(SendError::permanent(format!(
                "number to call {} is not an E.164 number",
                mask(&request.to)
            )));
        }
        let from = self.config.from.trim();
        if !is_e164(from) {
            return Err(SendError::permanent(
                "configured caller ID is not an E.164 number",
            ));
        }
        if !is_absolute_url(&request.instructions_url) {
            return Err(SendError::permanent(
                "call instructions URL is not an absolute http(s) URL",
            ));
        }
        if !is_absolute_url(&request.status_callback) {
            return Err(SendError::permanent(
                "call status callback is not an absolute http(s) URL",
            ));
        }

        let mut form = vec![
            ("To", to),
            ("From", from),
            ("Url", request.instructions_url.as_str()),
            ("Method", "POST"),
            ("StatusCallback", request.status_callback.as_str()),
            ("StatusCallbackMethod", "POST"),
        ];
        form.extend(
            STATUS_CALLBACK_EVENTS
                .iter()
                .map(|event| ("StatusCallbackEvent", *event)),
        );

        let response = self
            .client
            .post(&self.endpoint)
            .basic_auth(
                &self.config.account_sid,
                Some(self.config.auth_token.expose_secret()),
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|error| {
                let error = request_error(&error);
                tracing::warn!(
                    to = %mask(to),
                    retryable = error.retryable,
                    "Twilio call request failed: {}",
                    error.message
                );
                error
            })?;

        let status = response.status();
        if status.is_success() {
            // Twilio has taken the call: from here on, never report a retryable error, which
            // would ring again.
            let created = response.json::<Created>().await.ok();
            let Some(Created {
                sid: Some(sid),
                status: call_status,
            }) = created
            else {
                tracing::warn!(
                    to = %mask(to),
                    http_status = status.as_u16(),
                    "Twilio accepted the call but its response had no sid"
                );
                return Err(SendError::permanent(
                    "Twilio accepted the call but its answer had no call sid; the call is \
                     probably ringing; not retrying",
                ));
            };
            let call_status = call_status.unwrap_or_else(|| "queued".to_owned());
            tracing::info!(
                to = %mask(to),
                sid = %sid,
                status = %call_status,
                "call handed to Twilio"
            );
            return Ok(PlacedCall {
                sid,
                status: call_status,
            });
        }

        // An error body that cannot be read or parsed just leaves out Twilio's details.
        let details = response
            .bytes()
            .await
            .ok()
            .and_then(|body| serde_json::from_slice::<TwilioError>(&body).ok());
        let error = status_error(status, details.as_ref());
        tracing::warn!(
            to = %mask(to),
            http_status = status.as_u16(),
            twilio_code = details.as_ref().and_then(|d| d.code),
            retryable = error.retryable,
            "Twilio refused the call"
        );
        Err(error)
    }
}

impl VoiceProvider for TwilioVoice {
    fn caller_id(&self) -> &str {
        &self.config.from
    }

    fn place_call<'a>(
        &'a self,
        request: &'a CallRequest,
    ) -> BoxFuture<'a, Result<PlacedCall, SendError>> {
        Box::pin(self.place(request))
    }
}

/// The part of Twilio's call resource we use.
#[derive(Deserialize)]
struct Created {
    sid: Option<String>,
    status: Option<String>,
}

fn is_absolute_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && !url.contains(char::is_whitespace)
}

/// A failure before any HTTP status arrived: retryable only if nothing reached Twilio.
fn request_error(error: &reqwest::Error) -> SendError {
    if error.is_builder() {
        SendError::permanent("invalid Twilio request (check api_base and account_sid)")
    } else if error.is_connect() {
        // Includes a connect timeout: no request was sent.
        SendError::retryable("could not connect to Twilio; no call was placed")
    } else if error.is_timeout() {
        SendError::permanent(format!(
            "Twilio did not answer the call request in time: {MAYBE_PLACED}"
        ))
    } else {
        SendError::permanent(format!(
            "the Twilio call request failed after it was sent: {MAYBE_PLACED}"
        ))
    }
}

/// A non-success HTTP status, with Twilio's error code and (scrubbed) message if present.
fn status_error(status: StatusCode, details: Option<&TwilioError>) -> SendError {
    let text = error_text(status, details);
    if status == StatusCode::GATEWAY_TIMEOUT {
        return SendError::permanent(format!("{text}; {MAYBE_PLACED}"));
    }
    let retryable = matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::REQUEST_TIMEOUT
            | StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
    );
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
    fn only_failures_that_placed_no_call_are_retryable() {
        for status in [429, 408, 500, 502, 503] {
            let status = StatusCode::from_u16(status).expect("status");
            assert!(status_error(status, None).retryable, "{status}");
        }
        for status in [400, 401, 403, 404, 415, 504] {
            let status = StatusCode::from_u16(status).expect("status");
            assert!(!status_error(status, None).retryable, "{status}");
        }
        let gateway = status_error(StatusCode::GATEWAY_TIMEOUT, None);
        assert!(gateway.message.contains("may or may not"), "{gateway:?}");
    }

    #[test]
    fn error_text_keeps_the_code_but_not_the_number() {
        let details = TwilioError {
            code: Some(21211),
            message: Some("The 'To' number +15005550001 is not a valid phone number.".into()),
        };
        let error = status_error(StatusCode::BAD_REQUEST, Some(&details));
        assert_eq!(
            error.message,
            "Twilio answered 400 (code 21211): The 'To' number +1500*****01 is not a valid phone number."
        );
    }

    #[test]
    fn urls_must_be_absolute() {
        assert!(is_absolute_url("https://consult.example/v1/twiml/calls/1"));
        assert!(is_absolute_url("http://127.0.0.1:8080/x"));
        assert!(!is_absolute_url("/v1/twiml"));
        assert!(!is_absolute_url("https://"));
        assert!(!is_absolute_url("ftp://host/x"));
        assert!(!is_absolute_url("https://host/a b"));
    }

    #[test]
    fn debug_hides_the_auth_token() {
        let config = TwilioVoiceConfig::new(
            "AC123",
            SecretString::from("very-secret-token"),
            "+15005550006",
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("very-secret-token"), "{shown}");
        assert!(shown.contains("AC123"), "{shown}");
    }
}
