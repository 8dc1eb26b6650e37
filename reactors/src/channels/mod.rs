//! Where messages go: one small trait, implemented by Twilio (SMS and WhatsApp), SMTP (email)
//! and a console/file sink used when a channel has no credentials.

use std::fmt;

use consult_store::BoxFuture;

pub mod console;
pub mod smtp;
pub mod twilio;

/// The kind of channel a notification goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Sms,
    Whatsapp,
    Email,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Whatsapp => "whatsapp",
            Self::Email => "email",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "sms" => Some(Self::Sms),
            "whatsapp" => Some(Self::Whatsapp),
            "email" => Some(Self::Email),
            _ => None,
        }
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rendered message, ready to send.
///
/// `to` is an E.164 phone number (`+15551234567`) for SMS and WhatsApp (the channel adds the
/// `whatsapp:` prefix itself), an email address for email. Text messages use `text` only;
/// email uses `subject`, `text` (the plain-text part) and `html` (the HTML part).
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub channel: ChannelKind,
    pub to: String,
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
    /// The notification's id, for the provider's status callback and for idempotency where
    /// the provider supports it.
    pub notification_id: String,
}

/// Messages hold personal data: their `Debug` shows only what may be logged.
impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("channel", &self.channel)
            .field("to", &mask(&self.to))
            .field("notification_id", &self.notification_id)
            .finish_non_exhaustive()
    }
}

/// What the provider said when it took the message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sent {
    /// The provider's id for the message (Twilio `SM…`), if it gives one.
    pub provider_message_id: Option<String>,
}

/// Why a send failed. `retryable` says whether trying again later may help (timeouts, 5xx,
/// 429, connection errors) or not (4xx refusals such as an invalid number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub retryable: bool,
    /// Safe to log and to show admins: no message body, no full address.
    pub message: String,
}

impl SendError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }
}

/// A way of delivering messages.
pub trait Channel: Send + Sync + fmt::Debug + 'static {
    /// Sends one message. Must not log the body or the full address.
    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<Sent, SendError>>;
}

/// A recipient address with most of it hidden, for logs and the notification log:
/// `+4479******89`, `j***@example.org`.
pub fn mask(address: &str) -> String {
    if let Some((local, domain)) = address.split_once('@') {
        let first: String = local.chars().take(1).collect();
        return format!("{first}***@{domain}");
    }
    let chars: Vec<char> = address.chars().collect();
    if chars.len() <= 6 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..5].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_phone_numbers_and_emails() {
        assert_eq!(mask("+447911123489"), "+4479******89");
        assert_eq!(mask("jane.doe@example.org"), "j***@example.org");
        assert_eq!(mask("12345"), "*****");
    }
}
