//! Email over SMTP, with `lettre`'s async transport on Tokio.
//!
//! Each message becomes a `multipart/alternative` email with a `text/plain` part (the
//! message's `text`) and a `text/html` part (its `html`, required), the message's `subject`, a
//! `Message-ID` of our own (returned as [`Sent::provider_message_id`]) and an
//! `X-Notification-Id` header carrying the notification's id, so bounces and copies can be
//! traced back without relying on the `Message-ID`.
//!
//! Failures are classified for the dispatcher: SMTP 4xx replies, timeouts and connection or
//! TLS failures are retryable; 5xx replies and addresses that cannot be parsed are not.
//! Error messages and logs never contain the body or a full email address.

use std::fmt;
use std::time::Duration;

use consult_store::BoxFuture;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};
use secrecy::{ExposeSecret as _, SecretString};

use super::{mask, Channel, ChannelKind, Message, SendError, Sent};

/// The header that carries [`Message::notification_id`].
pub const NOTIFICATION_ID_HEADER: &str = "X-Notification-Id";

/// A reasonable timeout for SMTP commands.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmtpTls {
    /// Plain text: only for a trusted relay on the same host or network (and for tests).
    None,
    /// Plain connection upgraded with `STARTTLS`, which is required (usually port 587).
    #[default]
    StartTls,
    /// TLS from the first byte, "SMTPS" (usually port 465).
    Tls,
    /// `STARTTLS` when the server offers it, plain text otherwise: open to a man in the middle.
    /// Only so that `SMTP_URL=smtp://…?tls=opportunistic` works as elsewhere.
    Opportunistic,
}

impl SmtpTls {
    /// The usual port for this mode: 25, 587 or 465.
    pub fn default_port(self) -> u16 {
        match self {
            Self::None => 25,
            Self::StartTls | Self::Opportunistic => 587,
            Self::Tls => 465,
        }
    }
}

/// Where and how to submit email.
#[derive(Clone)]
pub struct SmtpConfig {
    /// Server host name (also the name checked against its TLS certificate).
    pub host: String,
    /// Server port; see [`SmtpTls::default_port`].
    pub port: u16,
    /// User name for `AUTH`; no authentication when `None`.
    pub username: Option<String>,
    /// Password for `AUTH`; required when `username` is set.
    pub password: Option<SecretString>,
    /// How the connection is secured.
    pub tls: SmtpTls,
    /// The `From` mailbox, e.g. `Clinic <no-reply@clinic.example>`.
    pub from: String,
    /// Timeout for connecting and for each SMTP command.
    pub timeout: Duration,
}

impl SmtpConfig {
    /// A configuration with `STARTTLS` on port 587, no authentication and
    /// [`DEFAULT_TIMEOUT`].
    pub fn new(host: impl Into<String>, from: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: SmtpTls::StartTls.default_port(),
            username: None,
            password: None,
            tls: SmtpTls::StartTls,
            from: from.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Hides the password.
impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("tls", &self.tls)
            .field("from", &self.from)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why an [`SmtpEmail`] could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SmtpSetupError {
    /// `from` is not a mailbox such as `Clinic <no-reply@clinic.example>`.
    #[error("invalid From mailbox {0:?}")]
    InvalidFrom(String),
    /// A user name without a password.
    #[error("SMTP username given without a password")]
    MissingPassword,
    /// The TLS settings (root certificates) could not be prepared.
    #[error("cannot set up TLS for {host}: {source}")]
    Tls {
        host: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
}

/// The SMTP channel for [`ChannelKind::Email`].
#[derive(Debug, Clone)]
pub struct SmtpEmail {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpEmail {
    /// Builds the channel. Nothing is sent and no connection is made until the first message.
    pub fn new(config: SmtpConfig) -> Result<Self, SmtpSetupError> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|_| SmtpSetupError::InvalidFrom(config.from.clone()))?;
        let tls = match config.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::Required(tls_parameters(&config.host)?),
            SmtpTls::Tls => Tls::Wrapper(tls_parameters(&config.host)?),
            SmtpTls::Opportunistic => Tls::Opportunistic(tls_parameters(&config.host)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(config.timeout));
        match (config.username, config.password) {
            (Some(user), Some(password)) => {
                builder = builder
                    .credentials(Credentials::new(user, password.expose_secret().to_owned()));
            }
            (Some(_), None) => return Err(SmtpSetupError::MissingPassword),
            (None, _) => {}
        }
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }

    async fn send_email(&self, message: &Message) -> Result<Sent, SendError> {
        if message.channel != ChannelKind::Email {
            return Err(SendError::permanent(format!(
                "the SMTP channel cannot send {}",
                message.channel
            )));
        }
        let to: Address = message.to.trim().parse().map_err(|_| {
            SendError::permanent(format!("invalid email address {}", mask(&message.to)))
        })?;
        let subject = message
            .subject
            .as_deref()
            .filter(|subject| !subject.trim().is_empty())
            .ok_or_else(|| SendError::permanent("email has no subject"))?;
        let html = message
            .html
            .as_deref()
            .ok_or_else(|| SendError::permanent("email has no HTML part"))?;

        let message_id = format!("<{}@{}>", uuid::Uuid::new_v4(), self.from.email.domain());
        let email = lettre::Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(subject)
            .message_id(Some(message_id.clone()))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(NOTIFICATION_ID_HEADER),
                message.notification_id.clone(),
            ))
            .multipart(MultiPart::alternative_plain_html(
                message.text.clone(),
                html.to_owned(),
            ))
            .map_err(|error| SendError::permanent(format!("cannot build the email: {error}")))?;

        match self.transport.send(email).await {
            Ok(_) => {
                tracing::info!(
                    to = %mask(&message.to),
                    notification_id = %message.notification_id,
                    message_id = %message_id,
                    "email handed to the SMTP server"
                );
                Ok(Sent {
                    provider_message_id: Some(message_id),
                })
            }
            Err(error) => {
                let error = classify(&error);
                tracing::warn!(
                    to = %mask(&message.to),
                    notification_id = %message.notification_id,
                    retryable = error.retryable,
                    error = %error.message,
                    "SMTP send failed"
                );
                Err(error)
            }
        }
    }
}

impl Channel for SmtpEmail {
    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(self.send_email(message))
    }
}

fn tls_parameters(host: &str) -> Result<TlsParameters, SmtpSetupError> {
    TlsParameters::new(host.to_owned()).map_err(|source| SmtpSetupError::Tls {
        host: host.to_owned(),
        source,
    })
}

/// Maps a transport error to a [`SendError`] whose text is safe to log.
fn classify(error: &lettre::transport::smtp::Error) -> SendError {
    // The server's reply text may quote the recipient's address.
    let text = scrub_addresses(&error.to_string());
    if error.is_permanent() {
        SendError::permanent(format!("SMTP server refused the email: {text}"))
    } else if error.is_transient() {
        SendError::retryable(format!("SMTP server deferred the email: {text}"))
    } else if error.is_timeout() {
        SendError::retryable("SMTP server timed out")
    } else if error.is_client() {
        SendError::permanent(format!("SMTP client error: {text}"))
    } else {
        // Connection, network, TLS and unparsable replies: worth another try later.
        SendError::retryable(format!("SMTP delivery failed: {text}"))
    }
}

/// Masks every word that looks like an email address (`<jane@x.org>` → `<j***@x.org>`).
fn scrub_addresses(text: &str) -> String {
    const MAX_CHARS: usize = 300;
    let text: String = text.chars().take(MAX_CHARS).collect();
    let is_delimiter = |c: char| c.is_whitespace() || "<>()[]\"',;".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if is_delimiter(c) {
            push_word(&mut out, &word);
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    push_word(&mut out, &word);
    out
}

fn push_word(out: &mut String, word: &str) {
    if word.contains('@') {
        out.push_str(&mask(word));
    } else {
        out.push_str(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_addresses_from_server_replies() {
        assert_eq!(
            scrub_addresses("permanent error (550): 5.1.1 <jane.doe@example.org>: unknown user"),
            "permanent error (550): 5.1.1 <j***@example.org>: unknown user"
        );
    }

    #[test]
    fn rejects_invalid_configuration() {
        let mut config = SmtpConfig::new("smtp.example.org", "not a mailbox");
        assert!(matches!(
            SmtpEmail::new(config.clone()),
            Err(SmtpSetupError::InvalidFrom(_))
        ));
        config.from = "Clinic <no-reply@clinic.example>".to_owned();
        config.username = Some("user".to_owned());
        assert!(matches!(
            SmtpEmail::new(config.clone()),
            Err(SmtpSetupError::MissingPassword)
        ));
        config.password = Some(SecretString::from("hunter2"));
        assert!(SmtpEmail::new(config.clone()).is_ok());
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn refuses_messages_it_cannot_send_without_connecting() {
        // Port 9 on a reserved host: the checks must fail before any connection attempt.
        let mut config = SmtpConfig::new("smtp.invalid", "no-reply@clinic.example");
        config.port = 9;
        let channel = SmtpEmail::new(config).expect("valid config");
        let email = Message {
            channel: ChannelKind::Email,
            to: "jane@example.org".to_owned(),
            subject: Some("Your appointment".to_owned()),
            text: "text".to_owned(),
            html: Some("<p>html</p>".to_owned()),
            notification_id: "n-1".to_owned(),
        };

        let no_html = Message {
            html: None,
            ..email.clone()
        };
        let error = channel.send(&no_html).await.expect_err("no html");
        assert!(!error.retryable);
        assert!(error.message.contains("HTML"), "{}", error.message);

        let bad_address = Message {
            to: "jane.example.org".to_owned(),
            ..email.clone()
        };
        let error = channel.send(&bad_address).await.expect_err("bad address");
        assert!(!error.retryable);
        assert!(
            !error.message.contains("jane.example.org"),
            "{}",
            error.message
        );

        let sms = Message {
            channel: ChannelKind::Sms,
            ..email.clone()
        };
        assert!(!channel.send(&sms).await.expect_err("not email").retryable);

        let no_subject = Message {
            subject: None,
            ..email
        };
        assert!(
            !channel
                .send(&no_subject)
                .await
                .expect_err("no subject")
                .retryable
        );
    }
}
