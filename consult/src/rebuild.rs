//! `consult rebuild <projection>`: empties a projection and replays the log into it, with
//! progress, while the API keeps serving.
//!
//! The reset is asked for on the subscription's row, so whichever process owns the projection
//! does it in one transaction with the move of its checkpoint to the start. This process also
//! runs the projection: when no worker owns it (workers stopped, or none running) this process
//! does the replay; otherwise it only watches the owner's progress.

use std::time::{Duration, Instant};

use consult_store::{Runner, RunnerOptions, Store, StoreError, SubscriptionStatus};
use tokio::sync::watch;

/// Where a rebuild stands.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Events applied since the reset.
    pub applied: i64,
    /// Events in the log when the rebuild began (the log may grow meanwhile).
    pub total: i64,
    /// Recent rate, events per second.
    pub rate: f64,
    pub elapsed: Duration,
    /// Whether the owner has done the reset yet.
    pub started: bool,
}

impl Progress {
    /// Time left at the current rate, when it can be told.
    pub fn eta(&self) -> Option<Duration> {
        let left = (self.total - self.applied).max(0) as f64;
        (self.rate > 0.0).then(|| Duration::from_secs_f64(left / self.rate))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("no projection named {name}; known: {known}")]
    Unknown { name: String, known: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

async fn status(store: &Store, name: &str) -> Result<Option<SubscriptionStatus>, StoreError> {
    Ok(store
        .subscription_statuses()
        .await?
        .into_iter()
        .find(|s| s.name == name))
}

/// Resets `name` and waits until the replay has caught up with the log, calling `report`
/// about once per `every`. Returns the final progress.
pub async fn rebuild(
    store: &Store,
    name: &str,
    every: Duration,
    mut report: impl FnMut(&Progress),
) -> Result<Progress, RebuildError> {
    let Some(projection) = consult_projections::by_name(name) else {
        let known: Vec<&str> = consult_projections::all()
            .iter()
            .map(|p| p.name())
            .collect();
        return Err(RebuildError::Unknown {
            name: name.to_owned(),
            known: known.join(", "),
        });
    };
    let previous_reset = status(store, name).await?.and_then(|s| s.reset_at_ms);
    let total = store.event_count().await?;
    let began = Instant::now();
    store.request_reset(name).await?;

    let (stop, stopped) = watch::channel(false);
    let options = RunnerOptions::default();
    let owner = format!("rebuild-pid{}", std::process::id());
    let runner = Runner::new(store.clone(), owner, options).with(projection);
    let listening = stopped.clone();
    let listener = store.clone();
    let listen = tokio::spawn(async move { listener.listen_for_appends(listening).await });
    let running = tokio::spawn(runner.run(stopped));

    let mut last = (Instant::now(), 0_i64);
    let mut rate = 0.0;
    let outcome = loop {
        tokio::time::sleep(every).await;
        let current = match status(store, name).await {
            Ok(Some(current)) => current,
            Ok(None) => continue,
            Err(err) => break Err(err.into()),
        };
        let started = !current.reset_pending && current.reset_at_ms != previous_reset;
        let applied = if started { current.applied } else { 0 };
        let now = Instant::now();
        let window = now.duration_since(last.0).as_secs_f64();
        if window > 0.0 {
            let instant_rate = (applied - last.1).max(0) as f64 / window;
            rate = if rate == 0.0 {
                instant_rate
            } else {
                0.5 * rate + 0.5 * instant_rate
            };
        }
        last = (now, applied);
        let progress = Progress {
            applied,
            total: total.max(applied),
            rate,
            elapsed: began.elapsed(),
            started,
        };
        if started && current.lag_events == 0 && !current.replaying {
            let overall = applied as f64 / began.elapsed().as_secs_f64().max(1e-9);
            break Ok(Progress {
                rate: overall,
                ..progress
            });
        }
        report(&progress);
    };
    let _ = stop.send(true);
    let _ = running.await;
    let _ = listen.await;
    outcome
}
