//! The consultation engine as a program: configuration, start-up and shutdown. `main.rs` holds
//! only the command line; tests start the same [`Application`] on port 0.

pub mod audit;
pub mod config;
pub mod rebuild;
pub mod secret;

use std::future::Future;
use std::sync::Arc;

use consult_api::{AppState, MediaSettings, PaymentSettings, SystemClock, TokenKey, TwilioWebhook};
use consult_reactors::channels::console::ConsoleSink;
use consult_reactors::channels::smtp::SmtpEmail;
use consult_reactors::channels::twilio::TwilioMessages;
use consult_reactors::channels::Channel;
use consult_reactors::video::VideoProvider;
use consult_reactors::{
    Channels, Dispatcher, DispatcherOptions, Media, NotificationsConfig, NotificationsReactor,
    Refunds, RefundsReactor, RoomsConfig, RoomsReactor,
};
use consult_store::{Runner, RunnerOptions, Store, StoreError, StoreOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Config, ConfigError, Roles};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("notification channels: {0}")]
    Channels(String),
    #[error("cannot listen on {bind}")]
    Bind {
        bind: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {bind} (ADMIN_BIND: /healthz, /readyz and /metrics)")]
    AdminBind {
        bind: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the data directory")]
    DataDir(#[source] std::io::Error),
}

/// A built engine: store open and migrated, listener bound, not serving yet.
#[derive(Debug)]
pub struct Application {
    /// The store this process writes to; kept to close it on shutdown.
    store: Store,
    /// `None` when this process does not run the API role.
    listener: Option<TcpListener>,
    /// `/healthz`, `/readyz` and `/metrics` only (`ADMIN_BIND`).
    admin_listener: Option<TcpListener>,
    /// Bounds on every connection of both listeners.
    timeouts: consult_api::HttpTimeouts,
    state: AppState,
    roles: Roles,
    runner: RunnerOptions,
    notifications: NotificationsConfig,
    rooms: RoomsConfig,
    /// Attempts of a refund job.
    refund_attempts: i32,
    dispatcher: Dispatcher,
}

impl Application {
    /// Opens and migrates the store and binds the listener (port 0 picks a free port).
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        private_data_dir(&config.data_dir)?;
        let store = Store::connect(&StoreOptions::new(config.database_url.clone())).await?;
        store.migrate().await?;
        let listener =
            if config.roles.api {
                Some(TcpListener::bind(&config.bind).await.map_err(|source| {
                    StartupError::Bind {
                        bind: config.bind.clone(),
                        source,
                    }
                })?)
            } else {
                None
            };
        let admin_listener = match &config.http.admin_bind {
            Some(bind) => Some(bind_admin(bind).await?),
            None => None,
        };
        let outbox = ConsoleSink::new(&config.notifications.outbox)
            .map_err(|e| StartupError::Channels(format!("outbox file: {e}")))?;
        let video = video_provider(config, &outbox)?;
        let voice: Option<Arc<dyn consult_reactors::voice::VoiceProvider>> =
            match &config.media.voice {
                Some(voice) => Some(Arc::new({
                    live("voice", "twilio", &voice.api_base);
                    consult_reactors::voice::twilio::TwilioVoice::new(
                        voice.clone(),
                        consult_reactors::channels::twilio::DEFAULT_TIMEOUT,
                    )
                    .map_err(|e| StartupError::Channels(format!("Twilio voice client: {e}")))?
                })),
                None => {
                    tracing::warn!(
                        channel = "voice",
                        "channel not configured: voice-call answers 503 (TWILIO_ACCOUNT_SID, \
                         TWILIO_AUTH_TOKEN, TWILIO_PHONE_NUMBER)"
                    );
                    None
                }
            };
        let state = AppState {
            store: store.clone(),
            token_key: TokenKey::new(config.jwt_secret.clone()),
            clock: Arc::new(SystemClock),
            twilio: config.notifications.twilio.as_ref().map(|t| TwilioWebhook {
                auth_token: t.auth_token.clone(),
                public_base_url: config.public_base_url.clone(),
            }),
            media: MediaSettings {
                video: video.clone(),
                voice_number: voice.as_ref().map(|v| v.caller_id().to_owned()),
                join_before: config.media.join_before,
                grace: config.media.grace,
                token_ttl: config.media.token_ttl,
                app_url: config.app_url.clone(),
            },
            payments: PaymentSettings {
                secret: config.payments.webhook_secret.clone(),
                tolerance: config.payments.tolerance,
                refund_notice: config.payments.refund_notice,
            },
            metrics_token: config.http.metrics_token.clone(),
            max_token_lifetime: config.http.max_token_lifetime,
            booking_limit: config.notifications.booking_limit,
        };
        let payments: Arc<dyn consult_reactors::payments::PaymentProvider> = match &config
            .payments
            .stripe
        {
            Some(stripe) => Arc::new({
                live("payments", "stripe", &stripe.api_base);
                consult_reactors::payments::stripe::StripePayments::new(
                    stripe.clone(),
                    consult_reactors::payments::stripe::DEFAULT_TIMEOUT,
                )
                .map_err(|e| StartupError::Channels(format!("payment client: {e}")))?
            }),
            None => {
                tracing::warn!(channel = "payments", outbox = %outbox.path().display(), "channel writes to the outbox file (no credentials): refunds are written there (PAYMENT_API_KEY)");
                Arc::new(consult_reactors::payments::console::ConsolePayments::new(
                    outbox.clone(),
                ))
            }
        };
        let n = &config.notifications;
        let notifications = NotificationsConfig {
            reminders: n.reminders.clone(),
            accept_deadline: n.accept_deadline,
            max_attempts: n.max_attempts,
        };
        let dispatcher = Dispatcher::new(
            store.clone(),
            owner_id(),
            channels(config, outbox)?,
            notifications.clone(),
            DispatcherOptions {
                lease: n.job_lease,
                base_backoff: n.retry_base,
                max_backoff: n.retry_max,
                flood: n.flood,
                app_url: config.app_url.clone(),
                ..DispatcherOptions::default()
            },
        )
        .with_refunds(Refunds { provider: payments })
        .with_media(Media {
            video: video.clone(),
            voice,
            public_base_url: config.public_base_url.clone(),
            grace: config.media.grace,
        });
        let rooms = RoomsConfig {
            provision_lead: video.provision_lead(),
            grace: config.media.grace,
            max_attempts: n.max_attempts,
            ..RoomsConfig::default()
        };
        Ok(Self {
            store,
            listener,
            admin_listener,
            timeouts: config.http.timeouts,
            state,
            roles: config.roles,
            runner: RunnerOptions {
                lease: config.subscription_lease,
                ..RunnerOptions::default()
            },
            notifications,
            rooms,
            refund_attempts: n.max_attempts,
            dispatcher,
        })
    }

    /// The port the API listens on, if this process runs the API.
    pub fn port(&self) -> Option<u16> {
        self.listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    /// The port of the admin listener (`/healthz`, `/readyz`, `/metrics`), if there is one.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight and closes the
    /// store.
    pub async fn run_until<F>(self, shutdown: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let mut workers = tokio::task::JoinSet::new();
        let admin = self.admin_listener.map(|listener| {
            let mut stopping = stopped.clone();
            tokio::spawn(consult_api::serve(
                listener,
                consult_api::admin_router(self.state.clone()),
                self.timeouts,
                async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                },
            ))
        });
        {
            let store = self.store.clone();
            let stopping = stopped.clone();
            workers.spawn(async move {
                store
                    .notify_appends(stopping, std::time::Duration::from_millis(2))
                    .await
            });
        }
        if self.roles.workers {
            let store = self.store.clone();
            let listening = stopped.clone();
            workers.spawn(async move { store.listen_for_appends(listening).await });
            let mut runner = Runner::new(self.store.clone(), owner_id(), self.runner);
            for projection in consult_projections::all() {
                runner = runner.with(projection);
            }
            let (wake, woken) = watch::channel(0_u64);
            runner = runner.with(Arc::new(NotificationsReactor::new(
                self.notifications,
                wake.clone(),
            )));
            runner = runner.with(Arc::new(consult_store::ChainSealer));
            runner = runner.with(Arc::new(RefundsReactor::new(
                self.refund_attempts,
                wake.clone(),
            )));
            runner = runner.with(Arc::new(RoomsReactor::new(self.rooms, wake)));
            workers.spawn(self.dispatcher.run(woken, stopped.clone()));
            workers.spawn(runner.run(stopped));
        }
        match self.listener {
            Some(listener) => {
                let router = consult_api::router(self.state);
                consult_api::serve(listener, router, self.timeouts, shutdown).await?;
            }
            None => shutdown.await,
        }
        let _ = stop.send(true);
        if let Some(admin) = admin {
            workers.spawn(async move {
                if let Ok(Err(err)) = admin.await {
                    tracing::warn!(%err, "the admin listener failed");
                }
            });
        }
        let drained = async { while workers.join_next().await.is_some() {} };
        if tokio::time::timeout(std::time::Duration::from_secs(10), drained)
            .await
            .is_err()
        {
            tracing::warn!("workers did not stop within 10 s; leaving them");
        }
        self.store.close().await;
        Ok(())
    }
}

/// The channel of each kind: the configured provider, or the outbox file when a channel has no
/// credentials (said once at start-up).
fn channels(config: &Config, outbox: ConsoleSink) -> Result<Channels, StartupError> {
    let n = &config.notifications;
    let outbox: Arc<dyn Channel> = Arc::new(outbox);
    let twilio: Option<Arc<TwilioMessages>> = match &n.twilio {
        Some(twilio) => {
            let mut twilio = twilio.clone();
            if twilio.status_callback.is_none() {
                twilio.status_callback = Some(format!(
                    "{}/v1/webhooks/twilio/messages",
                    config.public_base_url.trim_end_matches('/')
                ));
            }
            Some(Arc::new(
                TwilioMessages::new(twilio, consult_reactors::channels::twilio::DEFAULT_TIMEOUT)
                    .map_err(|e| StartupError::Channels(format!("Twilio client: {e}")))?,
            ))
        }
        None => None,
    };
    let text = |kind: consult_reactors::channels::ChannelKind| -> Arc<dyn Channel> {
        match (&twilio, &n.twilio) {
            (Some(t), Some(config)) if t.supports(kind) => {
                live(&kind.to_string(), "twilio", &config.api_base);
                t.clone()
            }
            _ => {
                to_outbox(&kind.to_string(), &n.outbox);
                outbox.clone()
            }
        }
    };
    let email: Arc<dyn Channel> = match &n.smtp {
        Some(smtp) => {
            let channel = SmtpEmail::new(smtp.clone())
                .map_err(|e| StartupError::Channels(format!("SMTP: {e}")))?;
            tracing::info!(
                channel = "email",
                provider = "smtp",
                host = %format!("{}:{}", smtp.host, smtp.port),
                tls = ?smtp.tls,
                "channel live"
            );
            Arc::new(channel)
        }
        None => {
            to_outbox("email", &n.outbox);
            outbox.clone()
        }
    };
    Ok(Channels {
        sms: text(consult_reactors::channels::ChannelKind::Sms),
        whatsapp: text(consult_reactors::channels::ChannelKind::Whatsapp),
        email,
    })
}

/// Says at start-up that `channel` is live through `provider` at the host of `api_base` (never
/// its credentials or path).
fn live(channel: &str, provider: &str, api_base: &str) {
    tracing::info!(channel, provider, host = %host_of(api_base), "channel live");
}

/// Says at start-up that `channel` writes to the outbox file.
fn to_outbox(channel: &str, outbox: &std::path::Path) {
    tracing::warn!(channel, outbox = %outbox.display(), "channel writes to the outbox file (no credentials or no sender configured)");
}

/// `host[:port]` of a URL, without user, password, path or query.
fn host_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) => match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => "?".to_owned(),
        },
        Err(_) => "?".to_owned(),
    }
}

/// The video provider: Twilio Video when configured, else rooms in the outbox file only.
fn video_provider(
    config: &Config,
    outbox: &ConsoleSink,
) -> Result<Arc<dyn VideoProvider>, StartupError> {
    Ok(match &config.media.video {
        Some(twilio) => {
            live("video", "twilio", &twilio.video_base);
            Arc::new(
                consult_reactors::video::twilio::TwilioVideo::new(
                    twilio.clone(),
                    consult_reactors::channels::twilio::DEFAULT_TIMEOUT,
                )
                .map_err(|e| StartupError::Channels(format!("Twilio video client: {e}")))?,
            )
        }
        None => {
            tracing::warn!(channel = "video", outbox = %outbox.path().display(), "channel writes to the outbox file (no credentials): no access tokens can be issued");
            Arc::new(consult_reactors::video::console::ConsoleVideo::new(
                outbox.clone(),
            ))
        }
    })
}

/// The listener of `ADMIN_BIND`.
async fn bind_admin(bind: &str) -> Result<TcpListener, StartupError> {
    TcpListener::bind(bind)
        .await
        .map_err(|source| StartupError::AdminBind {
            bind: bind.to_owned(),
            source,
        })
}

/// Creates the data directory owner-only (0700) if it is missing, and warns if an existing one
/// is open to other users: it holds the SQLite database, the outbox and the token secret.
fn private_data_dir(dir: &std::path::Path) -> Result<(), StartupError> {
    consult_store::private_dir(dir).map_err(StartupError::DataDir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(dir) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "the data directory is open to other users; it holds personal data \
                     (chmod 700 it)"
                );
            }
        }
    }
    Ok(())
}

/// Names this process in subscription leases: unique among live processes, no personal data.
fn owner_id() -> String {
    let mut bytes = [0u8; 4];
    let suffix = match getrandom::fill(&mut bytes) {
        Ok(()) => u32::from_le_bytes(bytes),
        Err(_) => 0,
    };
    format!("pid{}-{suffix:08x}", std::process::id())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
