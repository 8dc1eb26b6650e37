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
    Channels, Dispatcher, DispatcherOptions, Media, NotificationsReactor, ReactorConfig, Refunds,
    RefundsReactor, RoomsConfig, RoomsReactor,
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
}

/// A built engine: store open and migrated, listener bound, not serving yet.
#[derive(Debug)]
pub struct Application {
    /// The store this process writes to; kept to close it on shutdown.
    store: Store,
    /// `None` when this process does not run the API role.
    listener: Option<TcpListener>,
    state: AppState,
    roles: Roles,
    runner: RunnerOptions,
    reactor: ReactorConfig,
    rooms: RoomsConfig,
    /// Attempts of a refund job.
    reactor_attempts: i32,
    dispatcher: Dispatcher,
}

impl Application {
    /// Opens and migrates the store and binds the listener (port 0 picks a free port).
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
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
        let outbox = ConsoleSink::new(&config.notifications.outbox)
            .map_err(|e| StartupError::Channels(format!("outbox file: {e}")))?;
        let video = video_provider(config, &outbox)?;
        let voice: Option<Arc<dyn consult_reactors::voice::VoiceProvider>> =
            match &config.media.voice {
                Some(voice) => Some(Arc::new(
                    consult_reactors::voice::twilio::TwilioVoice::new(
                        voice.clone(),
                        consult_reactors::channels::twilio::DEFAULT_TIMEOUT,
                    )
                    .map_err(|e| StartupError::Channels(format!("Twilio voice client: {e}")))?,
                )),
                None => None,
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
        };
        let payments: Arc<dyn consult_reactors::payments::PaymentProvider> = match &config
            .payments
            .stripe
        {
            Some(stripe) => Arc::new(
                consult_reactors::payments::stripe::StripePayments::new(
                    stripe.clone(),
                    consult_reactors::payments::stripe::DEFAULT_TIMEOUT,
                )
                .map_err(|e| StartupError::Channels(format!("payment client: {e}")))?,
            ),
            None => {
                tracing::warn!(outbox = %outbox.path().display(), "no payment provider configured (PAYMENT_API_KEY): refunds are written to the outbox file");
                Arc::new(consult_reactors::payments::console::ConsolePayments::new(
                    outbox.clone(),
                ))
            }
        };
        let n = &config.notifications;
        let reactor = ReactorConfig {
            reminders: n.reminders.clone(),
            accept_deadline: n.accept_deadline,
            max_attempts: n.max_attempts,
        };
        let dispatcher = Dispatcher::new(
            store.clone(),
            owner_id(),
            channels(config, outbox)?,
            reactor.clone(),
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
            state,
            roles: config.roles,
            runner: RunnerOptions {
                lease: config.subscription_lease,
                ..RunnerOptions::default()
            },
            reactor,
            rooms,
            reactor_attempts: n.max_attempts,
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
                self.reactor,
                wake.clone(),
            )));
            runner = runner.with(Arc::new(consult_store::ChainSealer));
            runner = runner.with(Arc::new(RefundsReactor::new(
                self.reactor_attempts,
                wake.clone(),
            )));
            runner = runner.with(Arc::new(RoomsReactor::new(self.rooms, wake)));
            workers.spawn(self.dispatcher.run(woken, stopped.clone()));
            workers.spawn(runner.run(stopped));
        }
        match self.listener {
            Some(listener) => {
                let router = consult_api::router(self.state);
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await?;
            }
            None => shutdown.await,
        }
        let _ = stop.send(true);
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
        match &twilio {
            Some(t) if t.supports(kind) => t.clone(),
            _ => {
                tracing::warn!(channel = %kind, outbox = %n.outbox.display(), "no Twilio sender for this channel: its messages go to the outbox file");
                outbox.clone()
            }
        }
    };
    let email: Arc<dyn Channel> = match &n.smtp {
        Some(smtp) => Arc::new(
            SmtpEmail::new(smtp.clone())
                .map_err(|e| StartupError::Channels(format!("SMTP: {e}")))?,
        ),
        None => {
            tracing::warn!(outbox = %n.outbox.display(), "no SMTP server configured: email goes to the outbox file");
            outbox.clone()
        }
    };
    Ok(Channels {
        sms: text(consult_reactors::channels::ChannelKind::Sms),
        whatsapp: text(consult_reactors::channels::ChannelKind::Whatsapp),
        email,
    })
}

/// The video provider: Twilio Video when configured, else rooms in the outbox file only.
fn video_provider(
    config: &Config,
    outbox: &ConsoleSink,
) -> Result<Arc<dyn VideoProvider>, StartupError> {
    Ok(match &config.media.video {
        Some(twilio) => Arc::new(
            consult_reactors::video::twilio::TwilioVideo::new(
                twilio.clone(),
                consult_reactors::channels::twilio::DEFAULT_TIMEOUT,
            )
            .map_err(|e| StartupError::Channels(format!("Twilio video client: {e}")))?,
        ),
        None => {
            tracing::warn!(outbox = %outbox.path().display(), "no video provider configured: rooms are written to the outbox file and no access tokens can be issued");
            Arc::new(consult_reactors::video::console::ConsoleVideo::new(
                outbox.clone(),
            ))
        }
    })
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
