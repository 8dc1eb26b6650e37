//! Configuration from the environment (and the flags that mirror it).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

/// Which parts of the engine this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub workers: bool,
}

impl Roles {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut roles = Self {
            api: false,
            workers: false,
        };
        for role in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "api" => roles.api = true,
                "workers" => roles.workers = true,
                _ => return Err(ConfigError::Roles),
            }
        }
        if roles.api || roles.workers {
            Ok(roles)
        } else {
            Err(ConfigError::Roles)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("ROLES must list api, workers or both, comma-separated")]
    Roles,
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    #[error("{name}: {message}")]
    Invalid { name: &'static str, message: String },
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub data_dir: PathBuf,
    pub bind: String,
    pub public_base_url: String,
    pub app_url: String,
    pub roles: Roles,
    pub jwt_secret: SecretString,
    /// How long a worker's hold on a subscription lasts unrenewed: how soon another worker
    /// takes over from one that died.
    pub subscription_lease: Duration,
    pub notifications: Notifications,
    pub media: Media,
    pub payments: Payments,
    /// Connection bounds, the admin listener, `/metrics` and bearer-token limits.
    pub http: Http,
}

/// The HTTP side: connection timeouts, the admin listener, `/metrics`, token lifetimes.
#[derive(Debug, Clone)]
pub struct Http {
    /// `ADMIN_BIND`: where `/healthz`, `/readyz` and `/metrics` are served besides `BIND`; a
    /// worker-only process serves them only there (default [`DEFAULT_ADMIN_BIND`] then).
    /// `None`: no admin listener.
    pub admin_bind: Option<String>,
    /// `HTTP_HEADER_TIMEOUT`, `HTTP_IDLE_TIMEOUT`, `HTTP_BODY_TIMEOUT`.
    pub timeouts: consult_api::HttpTimeouts,
    /// `METRICS_TOKEN`: when set, `/metrics` needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<SecretString>,
    /// `AUTH_MAX_TOKEN_LIFETIME`: bearer tokens meant to live longer are refused (24 h).
    pub max_token_lifetime: Duration,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            admin_bind: None,
            timeouts: consult_api::HttpTimeouts::default(),
            metrics_token: None,
            max_token_lifetime: consult_api::DEFAULT_MAX_TOKEN_LIFETIME,
        }
    }
}

/// Where a worker-only process serves `/healthz`, `/readyz` and `/metrics` unless
/// `ADMIN_BIND` says otherwise.
pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:8090";

/// Payments: the webhook, refunds, the cancellation policy.
#[derive(Debug, Clone)]
pub struct Payments {
    /// `PAYMENT_WEBHOOK_SECRET` (`whsec_…`); `None`: the webhook answers 503.
    pub webhook_secret: Option<SecretString>,
    /// `PAYMENT_WEBHOOK_TOLERANCE`: how old a signature may be (300 s).
    pub tolerance: Duration,
    /// `CANCELLATION_NOTICE`: a patient cancelling later than this before the start is not
    /// refunded (24 h).
    pub refund_notice: Duration,
    /// `PAYMENT_API_KEY` (+ `PAYMENT_API_BASE`): refunds through Stripe; `None`: refunds are
    /// written to the outbox file.
    pub stripe: Option<consult_reactors::payments::stripe::StripeConfig>,
}

impl Default for Payments {
    fn default() -> Self {
        Self {
            webhook_secret: None,
            tolerance: Duration::from_secs(300),
            refund_notice: Duration::from_secs(24 * 3600),
            stripe: None,
        }
    }
}

/// Video rooms and voice calls.
#[derive(Debug, Clone)]
pub struct Media {
    /// `VIDEO_PROVIDER`: Twilio Video, or the console provider (rooms only in the outbox
    /// file, no tokens) when Twilio's API key is not set.
    pub video: Option<consult_reactors::video::twilio::TwilioVideoConfig>,
    /// Voice calls through Twilio; `None` answers `voice-call` with 503.
    pub voice: Option<consult_reactors::voice::twilio::TwilioVoiceConfig>,
    /// `VIDEO_JOIN_BEFORE`: participants may join this long before the start (15 min).
    pub join_before: Duration,
    /// `VIDEO_GRACE`: ... and until this long after the end, when the room is closed (30 min).
    pub grace: Duration,
    /// `VIDEO_TOKEN_TTL`: the longest life of an access token (1 h, at most 1 h).
    pub token_ttl: Duration,
}

impl Default for Media {
    fn default() -> Self {
        Self {
            video: None,
            voice: None,
            join_before: Duration::from_secs(15 * 60),
            grace: Duration::from_secs(30 * 60),
            token_ttl: Duration::from_secs(3600),
        }
    }
}

/// Notifications, reminders and deadlines.
#[derive(Debug, Clone)]
pub struct Notifications {
    /// `REMINDERS`, e.g. `24h:email,1h:sms,15m:sms+email`.
    pub reminders: Vec<consult_reactors::ReminderSpec>,
    /// `ACCEPT_DEADLINE`: a request not accepted this long after booking (or by its start)
    /// expires.
    pub accept_deadline: Duration,
    /// `NOTIFY_MAX_ATTEMPTS`: attempts of a job before it is dead-lettered.
    pub max_attempts: i32,
    /// `NOTIFY_RETRY_BASE`: the first retry delay (doubling, with jitter, up to `retry_max`).
    pub retry_base: Duration,
    /// `NOTIFY_RETRY_MAX`: the longest retry delay (1 h): after a provider outage, how long
    /// at most until each waiting job is tried again.
    pub retry_max: Duration,
    /// `NOTIFY_FLOOD_LIMIT`, e.g. `20/1h`: at most that many messages to one recipient.
    pub flood: consult_reactors::FloodGuard,
    /// `BOOKING_LIMIT`, e.g. `10/1h`: at most that many bookings by one patient (then 429).
    pub booking_limit: consult_api::RateLimit,
    /// `JOB_LEASE`: how long a claimed job stays locked to its worker; a worker that dies
    /// mid-send leaves the job to others after this (the at-least-once window).
    pub job_lease: Duration,
    /// SMS and WhatsApp; `None` sends them to the outbox file.
    pub twilio: Option<consult_reactors::channels::twilio::TwilioConfig>,
    /// Email; `None` sends it to the outbox file.
    pub smtp: Option<consult_reactors::channels::smtp::SmtpConfig>,
    /// Where messages go when their channel has no credentials (one JSON line each).
    pub outbox: PathBuf,
}

impl Notifications {
    /// The defaults: reminders 24 h email, 1 h SMS, 15 min SMS and email; requests expire after
    /// 24 h; every channel to `outbox.jsonl` in the data directory.
    pub fn new(data_dir: &std::path::Path) -> Self {
        let defaults = consult_reactors::NotificationsConfig::default();
        Self {
            reminders: defaults.reminders,
            accept_deadline: defaults.accept_deadline,
            max_attempts: defaults.max_attempts,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(3600),
            flood: consult_reactors::DispatcherOptions::default().flood,
            booking_limit: consult_api::RateLimit {
                limit: 10,
                window: Duration::from_secs(3600),
            },
            job_lease: Duration::from_secs(60),
            twilio: None,
            smtp: None,
            outbox: data_dir.join("outbox.jsonl"),
        }
    }
}

/// The default of `SUBSCRIPTION_LEASE`.
pub const DEFAULT_SUBSCRIPTION_LEASE: Duration = Duration::from_secs(10);

/// The database URL: the configured one, or the SQLite file in the data directory.
pub fn database_url(configured: Option<String>, data_dir: &std::path::Path) -> String {
    configured
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("consult.db").display()))
}

/// The SMTP server of `SMTP_URL`, in lettre's URL form: `smtp://host` (plain, port 25),
/// `smtp://host?tls=required` (STARTTLS, 587), `smtp://host?tls=opportunistic` (587),
/// `smtps://host` (TLS, 465); with `user:password@` (percent-encoded) for `AUTH` and `:port`.
/// Errors never repeat the URL, which may hold a password.
pub fn smtp_from_url(
    text: &str,
    from: String,
) -> Result<consult_reactors::channels::smtp::SmtpConfig, ConfigError> {
    use consult_reactors::channels::smtp::{SmtpConfig, SmtpTls};
    let invalid = |message: &str| ConfigError::Invalid {
        name: "SMTP_URL",
        message: message.to_owned(),
    };
    let url = reqwest::Url::parse(text.trim())
        .map_err(|_| invalid("must be a URL such as smtp://user:pass@host:587?tls=required"))?;
    let tls_param = url
        .query_pairs()
        .find(|(key, _)| key == "tls")
        .map(|(_, value)| value.into_owned());
    let tls = match (url.scheme(), tls_param.as_deref()) {
        ("smtp", None) => SmtpTls::None,
        ("smtp", Some("required")) => SmtpTls::StartTls,
        ("smtp", Some("opportunistic")) => SmtpTls::Opportunistic,
        ("smtps", _) => SmtpTls::Tls,
        _ => {
            return Err(invalid(
                "the scheme must be smtp or smtps, and tls= required or opportunistic",
            ))
        }
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid("has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut smtp = SmtpConfig::new(host, from);
    smtp.tls = tls;
    smtp.port = url.port().unwrap_or(match tls {
        SmtpTls::None => 25,
        other => other.default_port(),
    });
    let decode = |part: &str| {
        percent_decode(part).ok_or_else(|| invalid("its user or password is not valid UTF-8"))
    };
    if !url.username().is_empty() {
        smtp.username = Some(decode(url.username())?);
    }
    if let Some(password) = url.password() {
        smtp.password = Some(SecretString::from(decode(password)?));
    }
    Ok(smtp)
}

/// Decodes `%XX` escapes (not `+`, which stays a plus in a URL's user and password).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or_default() * 16 + hex(l).unwrap_or_default();
                out.push(u8::try_from(value).unwrap_or_default());
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The value parser of every duration setting: humantime's forms, e.g. `90s`, `15m`, `24h`,
/// `2d`, `1h 30m`, `500ms`, with blanks around ignored. A bare number has no unit and is
/// refused. Clap names the setting in its error; the message never repeats the value's parts.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| "must be a duration such as 90s, 15m, 24h or 2d".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_number_and_a_unit() {
        // Every spelling the settings took before humantime still reads the same.
        for (text, seconds) in [
            ("24h", 86_400),
            ("15m", 900),
            ("90s", 90),
            ("2d", 172_800),
            ("0s", 0),
            (" 30s ", 30),
        ] {
            assert_eq!(
                parse_duration(text).ok(),
                Some(Duration::from_secs(seconds)),
                "{text}"
            );
        }
        assert_eq!(
            parse_duration("1h 30m").ok(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            parse_duration("500ms").ok(),
            Some(Duration::from_millis(500))
        );
        for bad in ["15", "h", "", "3x", "-5s"] {
            let err = parse_duration(bad).err().unwrap_or_default();
            assert_eq!(
                err, "must be a duration such as 90s, 15m, 24h or 2d",
                "{bad}"
            );
        }
    }

    #[test]
    fn smtp_urls_read_as_lettre_reads_them() {
        use consult_reactors::channels::smtp::SmtpTls;
        use secrecy::ExposeSecret as _;
        let from = || "Clinic <no-reply@clinic.example>".to_owned();
        let smtp = smtp_from_url(
            "smtp://user%40x:p%2Bss+w@mail.example:2525?tls=required",
            from(),
        )
        .expect("valid");
        assert_eq!(smtp.host, "mail.example");
        assert_eq!(smtp.port, 2525);
        assert_eq!(smtp.tls, SmtpTls::StartTls);
        assert_eq!(smtp.username.as_deref(), Some("user@x"));
        assert_eq!(
            smtp.password.as_ref().map(|p| p.expose_secret().to_owned()),
            Some("p+ss+w".to_owned())
        );
        assert_eq!(smtp.from, from());
        let plain = smtp_from_url("smtp://relay.local", from()).expect("valid");
        assert_eq!(
            (plain.tls, plain.port, plain.username),
            (SmtpTls::None, 25, None)
        );
        let tls = smtp_from_url("smtps://u:p@mail.example", from()).expect("valid");
        assert_eq!((tls.tls, tls.port), (SmtpTls::Tls, 465));
        let opportunistic =
            smtp_from_url("smtp://mail.example?tls=opportunistic", from()).expect("valid");
        assert_eq!(
            (opportunistic.tls, opportunistic.port),
            (SmtpTls::Opportunistic, 587)
        );
        for bad in [
            "http://mail.example",
            "smtp://mail.example?tls=maybe",
            "not a url",
        ] {
            let err = smtp_from_url(bad, from()).err().map(|e| e.to_string());
            assert!(err.is_some(), "{bad}");
        }
        let err = smtp_from_url("ftp://user:hunter2@mail.example", from())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn roles_are_api_workers_or_both() {
        assert_eq!(
            Roles::parse("api,workers").ok(),
            Some(Roles {
                api: true,
                workers: true
            })
        );
        assert!(Roles::parse("workers").is_ok_and(|r| !r.api && r.workers));
        assert!(Roles::parse("web").is_err());
        assert!(Roles::parse("").is_err());
    }
}
