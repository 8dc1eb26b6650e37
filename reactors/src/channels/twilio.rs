//! SMS and WhatsApp through Twilio's Programmable Messaging API.
//!
//! One message is one `POST {api_base}/2010-04-01/Accounts/{AccountSid}/Messages.json` with
//! Basic auth (Account SID : Auth Token) and a form-encoded body of `To`, `From`, `Body` and,
//! when configured, `StatusCallback`. WhatsApp numbers carry the `whatsapp:` prefix on both
//! `To` and `From`. Twilio answers `201 Created` with the message resource, whose `sid`
//! (`SM…`) becomes [`Sent::provider_message_id`].
//!
//! Failures are classified for the dispatcher: timeouts, connection errors, `429` and `5xx`
//! are retryable; other `4xx` (invalid number, unverified sender, bad credentials) are not.
//! Twilio's API has no idempotency key, so a retry after a timeout may, rarely, send twice.
//!
//! Nothing here logs or returns the message body or a full phone number.

use std::fmt;
use std::time::Duration;

use consult_store::BoxFuture;
use reqwest::StatusCode;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use super::{mask, Channel, ChannelKind, Message, SendError, Sent};

/// Twilio's production API root.
pub const DEFAULT_API_BASE: &str = "https://api.twilio.com";

/// A reasonable request timeout for [`TwilioMessages::new`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Twilio's limit on `Body`, in characters.
const MAX_BODY_CHARS: usize = 1600;

const WHATSAPP_PREFIX: &str = "whatsapp:";

/// Credentials and senders for Twilio Messaging.
#[derive(Clone)]
pub struct TwilioConfig {
    /// API root without a trailing slash; [`DEFAULT_API_BASE`] in production, a local fake in
    /// tests.
    pub api_base: String,
    /// The account SID (`AC…`), also the Basic-auth user name.
    pub account_sid: String,
    /// The account's Auth Token, the Basic-auth password.
    pub auth_token: SecretString,
    /// Sender for SMS: an E.164 number (`+15551234567`). `None` disables SMS.
    pub from_sms: Option<String>,
    /// Sender for WhatsApp: an E.164 number without the `whatsapp:` prefix. `None` disables
    /// WhatsApp.
    pub from_whatsapp: Option<String>,
    /// Full URL of our message status webhook (e.g.
    /// `https://host/v1/webhooks/twilio/messages`), sent as `StatusCallback` when set.
    pub status_callback: Option<String>,
}

impl TwilioConfig {
    /// A configuration for the production API with no senders and no status callback.
    pub fn new(account_sid: impl Into<String>, auth_token: SecretString) -> Self {
        Self {
            api_base: DEFAULT_API_BASE.to_owned(),
            account_sid: account_sid.into(),
            auth_token,
            from_sms: None,
            from_whatsapp: None,
            status_callback: None,
        }
    }
}

/// Hides the Auth Token (and keeps the senders, which are our own numbers).
impl fmt::Debug for TwilioConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioConfig")
            .field("api_base", &self.api_base)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"[redacted]")
            .field("from_sms", &self.from_sms)
            .field("from_whatsapp", &self.from_whatsapp)
            .field("status_callback", &self.status_callback)
            .finish()
    }
}

/// The Twilio channel for [`ChannelKind::Sms`] and [`ChannelKind::Whatsapp`].
#[derive(Debug, Clone)]
pub struct TwilioMessages {
    config: TwilioConfig,
    endpoint: String,
    client: reqwest::Client,
}

impl TwilioMessages {
    /// Builds the channel with its own HTTP client; `timeout` bounds each request from
    /// connecting to reading the response ([`DEFAULT_TIMEOUT`] is a good value).
    ///
    /// Fails only if the HTTP client cannot be built (TLS backend initialisation).
    pub fn new(config: TwilioConfig, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect would turn the POST into a GET; treat it as the error it is.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let endpoint = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            config.api_base.trim_end_matches('/'),
            config.account_sid
        );
        Ok(Self {
            config,
            endpoint,
            client,
        })
    }

    /// The configuration this channel was built with.
    pub fn config(&self) -> &TwilioConfig {
        &self.config
    }

    /// Whether a sender is configured for `kind` (always `false` for email).
    pub fn supports(&self, kind: ChannelKind) -> bool {
        self.sender(kind).is_some()
    }

    fn sender(&self, kind: ChannelKind) -> Option<&str> {
        match kind {
            ChannelKind::Sms => self.config.from_sms.as_deref(),
            ChannelKind::Whatsapp => self.config.from_whatsapp.as_deref(),
            ChannelKind::Email => None,
        }
    }

    async fn send_message(&self, message: &Message) -> Result<Sent, SendError> {
        let kind = message.channel;
        if kind == ChannelKind::Email {
            return Err(SendError::permanent("Twilio cannot send email"));
        }
        let from = self.sender(kind).ok_or_else(|| {
            SendError::permanent(format!("no Twilio sender configured for {kind}"))
        })?;
        let to = address(kind, &message.to).ok_or_else(|| {
            SendError::permanent(format!(
                "recipient {} is not an E.164 number",
                mask(&message.to)
            ))
        })?;
        let from = address(kind, from).ok_or_else(|| {
            SendError::permanent(format!("configured {kind} sender is not an E.164 number"))
        })?;
        if message.text.trim().is_empty() {
            return Err(SendError::permanent("message body is empty"));
        }
        if message.text.chars().count() > MAX_BODY_CHARS {
            return Err(SendError::permanent(format!(
                "message body is longer than {MAX_BODY_CHARS} characters"
            )));
        }

        let mut form = vec![("To", to), ("From", from), ("Body", message.text.clone())];
        if let Some(callback) = &self.config.status_callback {
            form.push(("StatusCallback", callback.clone()));
        }

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
            .map_err(|error| request_error(&error))?;

        let status = response.status();
        if status.is_success() {
            // Twilio has taken the message: from here on, never report a retryable error,
            // which would send it again.
            let sid = match response.json::<Created>().await {
                Ok(created) => created.sid,
                Err(_) => None,
            };
            if sid.is_none() {
                tracing::warn!(
                    channel = %kind,
                    notification_id = %message.notification_id,
                    http_status = status.as_u16(),
                    "Twilio accepted the message but its response had no sid"
                );
            }
            tracing::info!(
                channel = %kind,
                to = %mask(&message.to),
                notification_id = %message.notification_id,
                sid = sid.as_deref().unwrap_or(""),
                "message handed to Twilio"
            );
            return Ok(Sent {
                provider_message_id: sid,
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
            channel = %kind,
            to = %mask(&message.to),
            notification_id = %message.notification_id,
            http_status = status.as_u16(),
            twilio_code = details.as_ref().and_then(|d| d.code),
            retryable = error.retryable,
            "Twilio refused the message"
        );
        Err(error)
    }
}

impl Channel for TwilioMessages {
    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(self.send_message(message))
    }
}

/// The part of Twilio's message resource we use.
#[derive(Deserialize)]
struct Created {
    sid: Option<String>,
}

/// Twilio's REST error body: `{"code": 21211, "message": "…", "more_info": "…", "status": 400}`.
/// Shared by every Twilio client here (messages, calls, rooms).
#[derive(Deserialize, Default)]
pub(crate) struct TwilioError {
    pub(crate) code: Option<i64>,
    pub(crate) message: Option<String>,
}

/// The `To`/`From` value for `kind`: E.164, with the `whatsapp:` prefix for WhatsApp. Accepts
/// the input with or without that prefix; `None` if the number is not E.164.
fn address(kind: ChannelKind, number: &str) -> Option<String> {
    let number = number.trim();
    let number = number.strip_prefix(WHATSAPP_PREFIX).unwrap_or(number);
    if !is_e164(number) {
        return None;
    }
    Some(match kind {
        ChannelKind::Whatsapp => format!("{WHATSAPP_PREFIX}{number}"),
        ChannelKind::Sms | ChannelKind::Email => number.to_owned(),
    })
}

/// `+` then 2 to 15 digits, the first not zero.
pub(crate) fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// A failure before any HTTP status arrived.
fn request_error(error: &reqwest::Error) -> SendError {
    if error.is_builder() {
        SendError::permanent("invalid Twilio request (check api_base and account_sid)")
    } else if error.is_timeout() {
        SendError::retryable("Twilio request timed out")
    } else if error.is_connect() {
        SendError::retryable("could not connect to Twilio")
    } else {
        SendError::retryable("Twilio request failed before a response arrived")
    }
}

/// What Twilio answered, for logs and the dead letters: the status, Twilio's error code and its
/// (scrubbed) message if present.
pub(crate) fn error_text(status: StatusCode, details: Option<&TwilioError>) -> String {
    let mut text = format!("Twilio answered {}", status.as_u16());
    if let Some(code) = details.and_then(|d| d.code) {
        text.push_str(&format!(" (code {code})"));
    }
    if let Some(message) = details.and_then(|d| d.message.as_deref()) {
        text.push_str(": ");
        text.push_str(&scrub(message));
    }
    text
}

/// A non-success HTTP status, with Twilio's error code and (scrubbed) message if present.
fn status_error(status: StatusCode, details: Option<&TwilioError>) -> SendError {
    let text = error_text(status, details);
    let retryable = status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error();
    if retryable {
        SendError::retryable(text)
    } else {
        SendError::permanent(text)
    }
}

/// Twilio's error messages may quote the phone number ("The 'To' number +1… is not a valid
/// phone number."): mask every run of 7 or more digits (with its `+`), and cap the length.
pub(crate) fn scrub(text: &str) -> String {
    const MAX_CHARS: usize = 300;
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let digits = run.chars().filter(char::is_ascii_digit).count();
        if digits >= 7 {
            out.push_str(&mask(run));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars().take(MAX_CHARS) {
        if c.is_ascii_digit() || (c == '+' && run.is_empty()) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_addresses_per_channel() {
        assert_eq!(
            address(ChannelKind::Sms, "+15551234567").as_deref(),
            Some("+15551234567")
        );
        assert_eq!(
            address(ChannelKind::Whatsapp, "+15551234567").as_deref(),
            Some("whatsapp:+15551234567")
        );
        assert_eq!(
            address(ChannelKind::Whatsapp, "whatsapp:+15551234567").as_deref(),
            Some("whatsapp:+15551234567")
        );
        assert_eq!(address(ChannelKind::Sms, "15551234567"), None);
        assert_eq!(address(ChannelKind::Sms, "+0555123"), None);
        assert_eq!(address(ChannelKind::Sms, "+1555-123"), None);
        assert_eq!(address(ChannelKind::Sms, "+1234567890123456"), None);
    }

    #[test]
    fn classifies_statuses() {
        assert!(status_error(StatusCode::INTERNAL_SERVER_ERROR, None).retryable);
        assert!(status_error(StatusCode::SERVICE_UNAVAILABLE, None).retryable);
        assert!(status_error(StatusCode::TOO_MANY_REQUESTS, None).retryable);
        assert!(!status_error(StatusCode::BAD_REQUEST, None).retryable);
        assert!(!status_error(StatusCode::UNAUTHORIZED, None).retryable);
        assert!(!status_error(StatusCode::FOUND, None).retryable);
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
    fn debug_hides_the_auth_token() {
        let config = TwilioConfig::new("AC123", SecretString::from("very-secret-token"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("very-secret-token"), "{shown}");
        assert!(shown.contains("AC123"), "{shown}");
    }
}
