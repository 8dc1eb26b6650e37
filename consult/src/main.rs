//! `consult`: the telehealth consultation engine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use std::time::Duration;

use consult::config::{database_url, parse_duration, ConfigError, Media, Notifications, Payments};
use consult::{secret, Application, Config, Roles};
use consult_api::{Claims, Role, TokenKey};
use consult_store::{Store, StoreOptions};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "consult",
    version,
    about = "Event-sourced telehealth consultation engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the engine keeps its data.
#[derive(Debug, Args)]
struct Storage {
    /// Embedded database, generated token secret, file sinks.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// `postgres://…` or `sqlite://…`; default: the SQLite file in the data directory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

/// Notifications, reminders, deadlines and the channels' credentials. A channel without
/// credentials writes to the outbox file.
#[derive(Debug, Args)]
struct NotificationArgs {
    /// Reminders before the start: <offset>:<channels>, comma-separated.
    #[arg(
        long,
        env = "REMINDERS",
        default_value = "24h:email,1h:sms,15m:sms+email"
    )]
    reminders: String,
    /// A request not accepted this long after booking (or by its start) expires.
    #[arg(long, value_parser = parse_duration, env = "ACCEPT_DEADLINE", default_value = "24h")]
    accept_deadline: Duration,
    /// Attempts of a notification before it is dead-lettered.
    #[arg(long, env = "NOTIFY_MAX_ATTEMPTS", default_value_t = 8)]
    notify_max_attempts: i32,
    /// First retry delay of a failed job (doubling with jitter, up to NOTIFY_RETRY_MAX).
    #[arg(long, value_parser = parse_duration, env = "NOTIFY_RETRY_BASE", default_value = "2s")]
    notify_retry_base: Duration,
    /// Longest retry delay of a failed job: after an outage, every job is tried again within this.
    #[arg(long, value_parser = parse_duration, env = "NOTIFY_RETRY_MAX", default_value = "1h")]
    notify_retry_max: Duration,
    /// At most this many messages to one recipient within the window, e.g. 20/1h.
    #[arg(long, env = "NOTIFY_FLOOD_LIMIT", default_value = "20/1h")]
    notify_flood_limit: String,
    /// At most this many bookings by one patient within the window, e.g. 10/1h (then 429).
    #[arg(long, env = "BOOKING_LIMIT", default_value = "10/1h")]
    booking_limit: String,
    /// How long a claimed job stays locked to its worker (the at-least-once window after a crash).
    #[arg(long, value_parser = parse_duration, env = "JOB_LEASE", default_value = "60s")]
    job_lease: Duration,
    /// Messages of channels without credentials go here; default $DATA_DIR/outbox.jsonl.
    #[arg(long, env = "OUTBOX_FILE")]
    outbox_file: Option<PathBuf>,
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    twilio_account_sid: Option<String>,
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    twilio_auth_token: Option<String>,
    /// Sender number for SMS (E.164); default TWILIO_PHONE_NUMBER.
    #[arg(long, env = "TWILIO_FROM_SMS")]
    twilio_from_sms: Option<String>,
    /// Sender number for WhatsApp (E.164, with or without the whatsapp: prefix).
    #[arg(long, env = "TWILIO_FROM_WHATSAPP")]
    twilio_from_whatsapp: Option<String>,
    /// The same as TWILIO_FROM_WHATSAPP (the name other systems use), e.g.
    /// whatsapp:+14155238886; TWILIO_FROM_WHATSAPP wins when both are set.
    #[arg(long, env = "TWILIO_WHATSAPP_FROM")]
    twilio_whatsapp_from: Option<String>,
    #[arg(
        long,
        env = "TWILIO_API_BASE",
        default_value = "https://api.twilio.com"
    )]
    twilio_api_base: String,
    /// twilio or console; default twilio when TWILIO_API_KEY and TWILIO_API_SECRET are set.
    #[arg(long, env = "VIDEO_PROVIDER")]
    video_provider: Option<String>,
    /// API key SID (SK…) that signs video access tokens.
    #[arg(long, env = "TWILIO_API_KEY")]
    twilio_api_key: Option<String>,
    #[arg(long, env = "TWILIO_API_SECRET", hide_env_values = true)]
    twilio_api_secret: Option<String>,
    #[arg(
        long,
        env = "TWILIO_VIDEO_BASE",
        default_value = "https://video.twilio.com"
    )]
    twilio_video_base: String,
    /// Our number for voice calls (E.164; default TWILIO_FROM_SMS), and the SMS sender when
    /// TWILIO_FROM_SMS is unset.
    #[arg(long, env = "TWILIO_PHONE_NUMBER")]
    twilio_phone_number: Option<String>,
    /// Participants may join this long before the start.
    #[arg(long, value_parser = parse_duration, env = "VIDEO_JOIN_BEFORE", default_value = "15m")]
    video_join_before: Duration,
    /// Participants may join until this long after the end; then the room is closed.
    #[arg(long, value_parser = parse_duration, env = "VIDEO_GRACE", default_value = "30m")]
    video_grace: Duration,
    /// Longest life of a video access token (at most 1h).
    #[arg(long, value_parser = parse_duration, env = "VIDEO_TOKEN_TTL", default_value = "1h")]
    video_token_ttl: Duration,
    #[arg(long, env = "SMTP_HOST")]
    smtp_host: Option<String>,
    /// Default: 587 with starttls, 465 with tls, 25 with none.
    #[arg(long, env = "SMTP_PORT")]
    smtp_port: Option<u16>,
    #[arg(long, env = "SMTP_USERNAME")]
    smtp_username: Option<String>,
    #[arg(long, env = "SMTP_PASSWORD", hide_env_values = true)]
    smtp_password: Option<String>,
    /// starttls, tls or none.
    #[arg(long, env = "SMTP_TLS", default_value = "starttls")]
    smtp_tls: String,
    /// The From mailbox, e.g. "Clinic <no-reply@clinic.example>"; default EMAIL_FROM, else
    /// "Consultations <no-reply@localhost>".
    #[arg(long, env = "SMTP_FROM")]
    smtp_from: Option<String>,
    /// The SMTP server as one URL (lettre's form), used when SMTP_HOST is unset:
    /// smtp://user:pass@host:587?tls=required, smtps://user:pass@host, smtp://host (plain).
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    smtp_url: Option<String>,
    /// The same as SMTP_FROM (the name other systems use); SMTP_FROM wins when both are set.
    #[arg(long, env = "EMAIL_FROM")]
    email_from: Option<String>,
}

/// The From mailbox when neither SMTP_FROM nor EMAIL_FROM is set.
const DEFAULT_EMAIL_FROM: &str = "Consultations <no-reply@localhost>";

/// `value`, unless it is empty or blank.
fn set(value: Option<&String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

impl NotificationArgs {
    /// Video and voice settings; reads the Twilio account from `twilio` (TWILIO_ACCOUNT_SID
    /// and TWILIO_AUTH_TOKEN).
    fn media(
        &self,
        twilio: Option<&consult_reactors::channels::twilio::TwilioConfig>,
    ) -> Result<Media, Box<dyn std::error::Error>> {
        use consult_reactors::video::twilio::TwilioVideoConfig;
        use consult_reactors::voice::twilio::TwilioVoiceConfig;
        let mut media = Media {
            join_before: self.video_join_before,
            grace: self.video_grace,
            token_ttl: self.video_token_ttl,
            ..Media::default()
        };
        for (name, value) in [
            ("VIDEO_JOIN_BEFORE", media.join_before),
            ("VIDEO_GRACE", media.grace),
        ] {
            if value > Duration::from_secs(24 * 3600) {
                return Err(ConfigError::Invalid {
                    name,
                    message: "must be at most 24h".into(),
                }
                .into());
            }
        }
        if media.token_ttl > Duration::from_secs(3600) || media.token_ttl < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                name: "VIDEO_TOKEN_TTL",
                message: "must be between 1s and 1h".into(),
            }
            .into());
        }
        let key = self.twilio_api_key.clone().filter(|k| !k.is_empty());
        let secret = self.twilio_api_secret.clone().filter(|k| !k.is_empty());
        let provider = match self.video_provider.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => p.to_owned(),
            None if key.is_some() && secret.is_some() && twilio.is_some() => "twilio".into(),
            None => "console".into(),
        };
        media.video = match provider.as_str() {
            "console" => None,
            "twilio" => {
                let (Some(twilio), Some(key), Some(secret)) = (twilio, key, secret) else {
                    return Err(ConfigError::Invalid {
                        name: "VIDEO_PROVIDER",
                        message: "twilio needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, \
                                  TWILIO_API_KEY and TWILIO_API_SECRET"
                            .into(),
                    }
                    .into());
                };
                let mut video =
                    TwilioVideoConfig::new(twilio.account_sid.clone(), twilio.auth_token.clone());
                video.video_base = self.twilio_video_base.trim_end_matches('/').to_owned();
                video.api_key_sid = Some(key);
                video.api_key_secret = Some(secrecy::SecretString::from(secret));
                Some(video)
            }
            _ => {
                return Err(ConfigError::Invalid {
                    name: "VIDEO_PROVIDER",
                    message: "must be twilio or console".into(),
                }
                .into())
            }
        };
        let number = self
            .twilio_phone_number
            .clone()
            .or_else(|| self.twilio_from_sms.clone())
            .filter(|n| !n.is_empty());
        media.voice = match (twilio, number) {
            (Some(twilio), Some(number)) => {
                let mut voice = TwilioVoiceConfig::new(
                    twilio.account_sid.clone(),
                    twilio.auth_token.clone(),
                    number,
                );
                voice.api_base = twilio.api_base.clone();
                Some(voice)
            }
            _ => None,
        };
        Ok(media)
    }

    fn into_config(
        self,
        data_dir: &std::path::Path,
    ) -> Result<(Notifications, Media), Box<dyn std::error::Error>> {
        use consult_reactors::channels::smtp::{SmtpConfig, SmtpTls};
        use consult_reactors::channels::twilio::TwilioConfig;
        let mut n = Notifications::new(data_dir);
        n.reminders = consult_reactors::parse_reminders(&self.reminders).map_err(|message| {
            ConfigError::Invalid {
                name: "REMINDERS",
                message,
            }
        })?;
        n.accept_deadline = self.accept_deadline;
        if self.notify_max_attempts < 1 {
            return Err(ConfigError::Invalid {
                name: "NOTIFY_MAX_ATTEMPTS",
                message: "must be at least 1".into(),
            }
            .into());
        }
        n.max_attempts = self.notify_max_attempts;
        n.retry_base = self.notify_retry_base;
        n.retry_max = self.notify_retry_max;
        if n.retry_max < Duration::from_secs(1) || n.retry_max < n.retry_base {
            return Err(ConfigError::Invalid {
                name: "NOTIFY_RETRY_MAX",
                message: "must be at least 1s and at least NOTIFY_RETRY_BASE".into(),
            }
            .into());
        }
        n.flood =
            consult_reactors::FloodGuard::parse(&self.notify_flood_limit).map_err(|message| {
                ConfigError::Invalid {
                    name: "NOTIFY_FLOOD_LIMIT",
                    message,
                }
            })?;
        let booking_limit =
            consult_reactors::FloodGuard::parse(&self.booking_limit).map_err(|message| {
                ConfigError::Invalid {
                    name: "BOOKING_LIMIT",
                    message,
                }
            })?;
        n.booking_limit = consult_api::RateLimit {
            limit: booking_limit.limit,
            window: booking_limit.window,
        };
        n.job_lease = self.job_lease;
        if let Some(outbox) = self.outbox_file.clone() {
            n.outbox = outbox;
        }
        n.twilio = match (
            self.twilio_account_sid.clone(),
            self.twilio_auth_token.clone(),
        ) {
            (Some(sid), Some(token)) if !sid.is_empty() && !token.is_empty() => {
                let mut twilio = TwilioConfig::new(sid, secrecy::SecretString::from(token));
                twilio.api_base = self.twilio_api_base.trim_end_matches('/').to_owned();
                twilio.from_sms = set(self.twilio_from_sms.as_ref())
                    .or_else(|| set(self.twilio_phone_number.as_ref()));
                twilio.from_whatsapp = set(self.twilio_from_whatsapp.as_ref())
                    .or_else(|| set(self.twilio_whatsapp_from.as_ref()))
                    .map(|n| n.strip_prefix("whatsapp:").unwrap_or(&n).trim().to_owned());
                Some(twilio)
            }
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    name: "TWILIO_ACCOUNT_SID",
                    message: "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN go together".into(),
                }
                .into())
            }
        };
        let media = self.media(n.twilio.as_ref())?;
        let from = set(self.smtp_from.as_ref())
            .or_else(|| set(self.email_from.as_ref()))
            .unwrap_or_else(|| DEFAULT_EMAIL_FROM.to_owned());
        let smtp_url = set(self.smtp_url.as_ref());
        n.smtp = match self.smtp_host.filter(|h| !h.is_empty()) {
            None => match smtp_url {
                Some(url) => Some(consult::config::smtp_from_url(&url, from)?),
                None => None,
            },
            Some(host) => {
                if smtp_url.is_some() {
                    tracing::warn!("SMTP_HOST and SMTP_URL are both set: SMTP_URL is ignored");
                }
                let tls = match self.smtp_tls.as_str() {
                    "starttls" => SmtpTls::StartTls,
                    "tls" => SmtpTls::Tls,
                    "none" => SmtpTls::None,
                    _ => {
                        return Err(ConfigError::Invalid {
                            name: "SMTP_TLS",
                            message: "must be starttls, tls or none".into(),
                        }
                        .into())
                    }
                };
                let mut smtp = SmtpConfig::new(host, from);
                smtp.tls = tls;
                smtp.port = self.smtp_port.unwrap_or(tls.default_port());
                smtp.username = self.smtp_username.filter(|u| !u.is_empty());
                smtp.password = self.smtp_password.map(secrecy::SecretString::from);
                Some(smtp)
            }
        };
        Ok((n, media))
    }
}

/// Connections, the admin listener, `/metrics` and bearer tokens.
#[derive(Debug, Args)]
struct HttpArgs {
    /// Where /healthz, /readyz and /metrics are also served; default 127.0.0.1:8090 for a
    /// worker-only process (ROLES=workers), none otherwise (the API serves them on BIND).
    #[arg(long, env = "ADMIN_BIND")]
    admin_bind: Option<String>,
    /// A request's header must arrive within this (from accept, or from its first byte).
    #[arg(long, value_parser = parse_duration, env = "HTTP_HEADER_TIMEOUT", default_value = "10s")]
    http_header_timeout: Duration,
    /// A kept-alive connection waiting this long for its next request is closed.
    #[arg(long, value_parser = parse_duration, env = "HTTP_IDLE_TIMEOUT", default_value = "60s")]
    http_idle_timeout: Duration,
    /// A request's body must arrive whole within this of its header.
    #[arg(long, value_parser = parse_duration, env = "HTTP_BODY_TIMEOUT", default_value = "30s")]
    http_body_timeout: Duration,
    /// When set, /metrics answers only `Authorization: Bearer <METRICS_TOKEN>`.
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// Bearer tokens made to live longer than this (exp - iat) are refused.
    #[arg(long, value_parser = parse_duration, env = "AUTH_MAX_TOKEN_LIFETIME", default_value = "24h")]
    auth_max_token_lifetime: Duration,
}

impl HttpArgs {
    fn into_config(self, roles: Roles) -> Result<consult::config::Http, ConfigError> {
        let positive = |name: &'static str, value: Duration| {
            if value < Duration::from_secs(1) {
                return Err(ConfigError::Invalid {
                    name,
                    message: "must be at least 1s".into(),
                });
            }
            Ok(value)
        };
        let admin_bind = set(self.admin_bind.as_ref())
            .or_else(|| (!roles.api).then(|| consult::config::DEFAULT_ADMIN_BIND.to_owned()));
        Ok(consult::config::Http {
            admin_bind,
            timeouts: consult_api::HttpTimeouts {
                header: positive("HTTP_HEADER_TIMEOUT", self.http_header_timeout)?,
                idle: positive("HTTP_IDLE_TIMEOUT", self.http_idle_timeout)?,
                body: positive("HTTP_BODY_TIMEOUT", self.http_body_timeout)?,
            },
            metrics_token: set(self.metrics_token.as_ref()).map(secrecy::SecretString::from),
            max_token_lifetime: positive("AUTH_MAX_TOKEN_LIFETIME", self.auth_max_token_lifetime)?,
        })
    }
}

/// The payment provider: its webhook, refunds, and the cancellation policy.
#[derive(Debug, Args)]
struct PaymentArgs {
    /// The webhook's signing secret (whsec_…); unset, the webhook answers 503.
    #[arg(long, env = "PAYMENT_WEBHOOK_SECRET", hide_env_values = true)]
    payment_webhook_secret: Option<String>,
    /// How old a webhook signature may be.
    #[arg(long, value_parser = parse_duration, env = "PAYMENT_WEBHOOK_TOLERANCE", default_value = "300s")]
    payment_webhook_tolerance: Duration,
    /// Secret API key for refunds (sk_…); unset, refunds go to the outbox file.
    #[arg(long, env = "PAYMENT_API_KEY", hide_env_values = true)]
    payment_api_key: Option<String>,
    #[arg(
        long,
        env = "PAYMENT_API_BASE",
        default_value = "https://api.stripe.com"
    )]
    payment_api_base: String,
    /// A patient cancelling later than this before the start is not refunded.
    #[arg(long, value_parser = parse_duration, env = "CANCELLATION_NOTICE", default_value = "24h")]
    cancellation_notice: Duration,
}

impl PaymentArgs {
    fn into_config(self) -> Result<Payments, Box<dyn std::error::Error>> {
        let tolerance = self.payment_webhook_tolerance;
        if tolerance < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                name: "PAYMENT_WEBHOOK_TOLERANCE",
                message: "must be at least 1s".into(),
            }
            .into());
        }
        let stripe = self.payment_api_key.filter(|k| !k.is_empty()).map(|key| {
            let mut stripe = consult_reactors::payments::stripe::StripeConfig::new(
                secrecy::SecretString::from(key),
            );
            stripe.api_base = self.payment_api_base.trim_end_matches('/').to_owned();
            stripe
        });
        Ok(Payments {
            webhook_secret: self
                .payment_webhook_secret
                .filter(|s| !s.trim().is_empty())
                .map(secrecy::SecretString::from),
            tolerance,
            refund_notice: self.cancellation_notice,
            stripe,
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine (API and workers by default).
    Serve {
        #[command(flatten)]
        storage: Storage,
        /// Listen address.
        #[arg(long, env = "BIND", default_value = "127.0.0.1:8080")]
        bind: String,
        /// Base of meeting links and callback URLs; default http://$BIND.
        #[arg(long, env = "PUBLIC_BASE_URL")]
        public_base_url: Option<String>,
        /// Base of the links people get in notifications; default $PUBLIC_BASE_URL.
        #[arg(long, env = "APP_URL")]
        app_url: Option<String>,
        /// What this process runs: api, workers, or both.
        #[arg(long, env = "ROLES", default_value = "api,workers")]
        roles: String,
        /// How soon a worker takes a subscription over from one that died.
        #[arg(long, value_parser = parse_duration, env = "SUBSCRIPTION_LEASE", default_value = "10s")]
        subscription_lease: Duration,
        #[command(flatten)]
        notifications: Box<NotificationArgs>,
        #[command(flatten)]
        payments: PaymentArgs,
        #[command(flatten)]
        http: Box<HttpArgs>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        storage: Storage,
    },
    /// Mint a bearer token signed with the server's secret (for development).
    Token {
        #[arg(long, env = "DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// patient, provider, admin or auditor.
        #[arg(long)]
        role: String,
        /// The caller's id (a provider's id for the provider role).
        #[arg(long)]
        sub: String,
        /// How long the token is valid, e.g. 30m, 24h; at most AUTH_MAX_TOKEN_LIFETIME.
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        ttl: Duration,
        /// The server refuses tokens made to live longer than this.
        #[arg(long, value_parser = parse_duration, env = "AUTH_MAX_TOKEN_LIFETIME", default_value = "24h")]
        auth_max_token_lifetime: Duration,
    },
    /// Empty a projection and replay the whole log into it, showing progress. The API may
    /// keep serving meanwhile.
    Rebuild {
        /// The projection's name (see GET /v1/admin/subscriptions).
        projection: String,
        #[command(flatten)]
        storage: Storage,
    },
    /// A consultation's history: every event with who did it, the state, and the side effects.
    History {
        /// The consultation's id.
        id: String,
        /// Only what was recorded up to this instant (RFC 3339), and the state then.
        #[arg(long)]
        as_of: Option<String>,
        /// Print JSON instead of a timeline.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        storage: Storage,
    },
    /// Write the event log as JSON Lines to standard output, in log order, streaming.
    Export {
        /// Only this consultation's events.
        #[arg(long, conflicts_with = "since")]
        consultation: Option<String>,
        /// Only events recorded from this instant on (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Resume: only events after this position (the last line's `position`).
        #[arg(long, default_value_t = 0)]
        after_position: i64,
        #[command(flatten)]
        storage: Storage,
    },
    /// Load an export (JSON Lines on standard input) into an empty store, hashes and all.
    Import {
        #[command(flatten)]
        storage: Storage,
    },
    /// Recompute every stream's hash chain and report each break (an edited, deleted,
    /// reordered or inserted event); exits non-zero when any is found.
    Verify {
        #[command(flatten)]
        storage: Storage,
    },
}

/// Opens (and migrates) the store a command names.
async fn open_store(storage: Storage) -> Result<Store, Box<dyn std::error::Error>> {
    let url = database_url(storage.database_url, &storage.data_dir);
    let store = Store::connect(&StoreOptions::new(url)).await?;
    store.migrate().await?;
    Ok(store)
}

fn jwt_secret(data_dir: &std::path::Path) -> Result<secrecy::SecretString, secret::SecretError> {
    secret::load_or_create(std::env::var("AUTH_JWT_SECRET").ok(), data_dir)
}

/// A write beyond the file size limit (`ulimit -f`) must fail, so that the store reports it
/// (503) and stays consistent, instead of killing the process: the default action of SIGXFSZ
/// is to terminate. With a handler installed the write returns `EFBIG`.
#[cfg(all(unix, not(any(target_arch = "mips", target_arch = "mips64"))))]
fn survive_file_size_limit() {
    // SIGXFSZ is 25 on Linux (but MIPS), macOS and the BSDs.
    const SIGXFSZ: i32 = 25;
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::from_raw(SIGXFSZ)) {
        Ok(mut received) => {
            tokio::spawn(async move {
                while received.recv().await.is_some() {
                    tracing::warn!("a write went beyond the file size limit (SIGXFSZ)");
                }
            });
        }
        Err(err) => tracing::warn!(%err, "cannot handle SIGXFSZ"),
    }
}

#[cfg(not(all(unix, not(any(target_arch = "mips", target_arch = "mips64")))))]
fn survive_file_size_limit() {}

/// Logs to standard error, as text or (`LOG_FORMAT=json`) one JSON object per line with the
/// same fields: `timestamp`, `level`, `target`, `message` and the event's own fields.
fn init_logging() -> Result<(), String> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let format = std::env::var("LOG_FORMAT").unwrap_or_default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format.trim() {
        "" | "text" => builder.init(),
        "json" => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        _ => return Err("LOG_FORMAT must be text or json".to_owned()),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(err) = init_logging() {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    survive_file_size_limit();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", consult_store::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve {
            storage,
            bind,
            public_base_url,
            app_url,
            roles,
            subscription_lease,
            notifications,
            payments,
            http,
        } => {
            let (notifications, media) = notifications.into_config(&storage.data_dir)?;
            let roles = Roles::parse(&roles)?;
            let public_base_url = public_base_url.unwrap_or_else(|| format!("http://{bind}"));
            let config = Config {
                database_url: database_url(storage.database_url, &storage.data_dir),
                jwt_secret: jwt_secret(&storage.data_dir)?,
                app_url: app_url.unwrap_or_else(|| public_base_url.clone()),
                public_base_url,
                data_dir: storage.data_dir,
                bind,
                roles,
                subscription_lease,
                notifications,
                media,
                payments: payments.into_config()?,
                http: http.into_config(roles)?,
            };
            let app = Application::build(&config).await?;
            tracing::info!(
                backend = app.store().backend(),
                port = app.port(),
                admin_port = app.admin_port(),
                api = config.roles.api,
                workers = config.roles.workers,
                "consult is serving"
            );
            app.run_until(consult::shutdown_signal()).await?;
            tracing::info!("stopped");
        }
        Command::Migrate { storage } => {
            let url = database_url(storage.database_url, &storage.data_dir);
            let store = Store::connect(&StoreOptions::new(url)).await?;
            store.migrate().await?;
            tracing::info!(backend = store.backend(), "migrations applied");
            store.close().await;
        }
        Command::Token {
            data_dir,
            role,
            sub,
            ttl,
            auth_max_token_lifetime,
        } => {
            let role =
                Role::parse(&role).ok_or("--role must be patient, provider, admin or auditor")?;
            let max = auth_max_token_lifetime;
            if ttl > max {
                return Err(format!(
                    "--ttl is longer than AUTH_MAX_TOKEN_LIFETIME ({}s): the server would refuse the token",
                    max.as_secs()
                )
                .into());
            }
            let now = chrono::Utc::now().timestamp();
            let key = TokenKey::new(jwt_secret(&data_dir)?);
            let token = key.mint(&Claims {
                sub,
                role,
                exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
                iat: Some(now),
            });
            println!("{token}");
        }
        Command::Rebuild {
            projection,
            storage,
        } => {
            if consult_projections::by_name(&projection).is_none() {
                let known: Vec<&str> = consult_projections::all()
                    .iter()
                    .map(|p| p.name())
                    .collect();
                return Err(format!(
                    "no projection named {projection}; known: {}",
                    known.join(", ")
                )
                .into());
            }
            let url = database_url(storage.database_url, &storage.data_dir);
            let store = Store::connect(&StoreOptions::new(url)).await?;
            store.migrate().await?;
            eprintln!("rebuilding {projection} from position 0");
            let done = consult::rebuild::rebuild(
                &store,
                &projection,
                std::time::Duration::from_secs(1),
                |p| {
                    if !p.started {
                        eprintln!("  waiting for the projection's owner to reset it…");
                        return;
                    }
                    let percent = if p.total > 0 {
                        100.0 * p.applied as f64 / p.total as f64
                    } else {
                        100.0
                    };
                    let eta = p
                        .eta()
                        .map_or_else(|| "?".to_owned(), |d| format!("{}s", d.as_secs()));
                    eprintln!(
                        "  {}/{} events ({percent:.0}%), {:.0} events/s, ETA {eta}",
                        p.applied, p.total, p.rate
                    );
                },
            )
            .await;
            store.close().await;
            let done = done?;
            eprintln!(
                "rebuilt {projection}: {} events in {:.1}s ({:.0} events/s)",
                done.applied,
                done.elapsed.as_secs_f64(),
                done.rate
            );
        }
        Command::History {
            id,
            as_of,
            json,
            storage,
        } => {
            let as_of = as_of
                .map(|t| {
                    chrono::DateTime::parse_from_rfc3339(&t)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .map_err(|_| {
                            "--as-of must be an RFC 3339 timestamp, e.g. 2030-01-31T14:00:00Z"
                        })
                })
                .transpose()?;
            let store = open_store(storage).await?;
            let history = consult_projections::history(&store, &id, as_of).await;
            store.close().await;
            let Some(history) = history.map_err(|e| e.to_string())? else {
                return Err(format!("no consultation {id}").into());
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&history)?);
            } else {
                print!("{}", consult::audit::timeline(&history));
            }
        }
        Command::Export {
            consultation,
            since,
            after_position,
            storage,
        } => {
            let since = since
                .map(|t| {
                    chrono::DateTime::parse_from_rfc3339(&t)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .map_err(|_| "--since must be an RFC 3339 timestamp")
                })
                .transpose()?;
            let store = open_store(storage).await?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let filter = consult::audit::ExportFilter {
                consultation,
                since,
                after_position,
            };
            let summary = consult::audit::export(&store, &filter, &mut out).await;
            store.close().await;
            let summary = summary?;
            eprintln!(
                "exported {} events; last position {}{}",
                summary.events,
                summary.last_position,
                if summary.stopped_early {
                    " (stopped before a transaction still in flight: resume with --after-position)"
                } else {
                    ""
                }
            );
        }
        Command::Import { storage } => {
            let store = open_store(storage).await?;
            let stdin = std::io::stdin();
            let imported = consult::audit::import(&store, stdin.lock()).await;
            store.close().await;
            eprintln!("imported {} events", imported?);
        }
        Command::Verify { storage } => {
            let url = database_url(storage.database_url, &storage.data_dir);
            let store = Store::connect(&StoreOptions::new(url)).await?;
            store.migrate().await?;
            let started = std::time::Instant::now();
            let mut last = std::time::Instant::now();
            let report = store
                .verify_chain(|done, total| {
                    if last.elapsed() >= std::time::Duration::from_secs(1) || done == total {
                        last = std::time::Instant::now();
                        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
                        let percent = if total > 0 {
                            100.0 * done as f64 / total as f64
                        } else {
                            100.0
                        };
                        eprintln!("  {done}/{total} events ({percent:.0}%), {rate:.0} events/s");
                    }
                })
                .await;
            store.close().await;
            let report = report?;
            for b in &report.breaks {
                println!(
                    "BROKEN {}/{} sequence {}: {}",
                    b.aggregate_type, b.aggregate_id, b.sequence, b.problem
                );
            }
            println!(
                "{} events in {} streams checked in {:.1}s; {} not sealed yet; {} break(s)",
                report.events,
                report.streams,
                started.elapsed().as_secs_f64(),
                report.unsealed,
                report.breaks.len()
            );
            if !report.intact() {
                return Err(format!(
                    "the event store fails verification: {} break(s)",
                    report.breaks.len()
                )
                .into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_duration_names_its_setting() {
        let err = Cli::try_parse_from(["consult", "serve", "--accept-deadline", "3x"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("ACCEPT_DEADLINE"), "{err}");
        assert!(
            err.contains("must be a duration such as 90s, 15m, 24h or 2d"),
            "{err}"
        );
    }

    #[test]
    fn duration_settings_take_the_old_spellings_and_humantime_forms() {
        let cli = Cli::try_parse_from([
            "consult",
            "token",
            "--role",
            "admin",
            "--sub",
            "a",
            "--ttl",
            "1h 30m",
            "--auth-max-token-lifetime",
            "2d",
        ])
        .ok();
        let Some(Cli {
            command:
                Command::Token {
                    ttl,
                    auth_max_token_lifetime,
                    ..
                },
        }) = cli
        else {
            panic!("token did not parse");
        };
        assert_eq!(ttl, Duration::from_secs(5400));
        assert_eq!(auth_max_token_lifetime, Duration::from_secs(2 * 86_400));
    }
}
