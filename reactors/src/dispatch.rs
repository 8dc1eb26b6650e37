//! The dispatcher: claims due jobs, runs them, records each outcome.
//!
//! A claimed job is `running` under this process's name until a lock runs out; if the process
//! dies, another dispatcher claims it again once the lock has expired. A notification is
//! therefore sent **at least once**. The outcomes of a claimed batch (up to 64 jobs, run
//! concurrently) commit together once the batch has run; a message is sent twice only if the
//! process dies (or that commit fails, or the database crashes before it reached disk) between
//! the provider accepting it and that commit, and the second send happens once the lock
//! (`lease`) has run out. The window is the duration of one batch: the slowest send in it plus
//! one commit.
//!
//! The flood guard counts, per recipient, the messages sent within its window (one query per
//! batch) plus those earlier in the batch; a message over the limit is dead-lettered unsent.
//!
//! Failures are retried with exponential backoff and full jitter, up to the job's
//! `max_attempts`; then the job is dead-lettered and its notification marked `dead`. Errors the
//! provider says are permanent (an invalid number, say) are dead-lettered at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use consult_domain::{
    Canceller, Consultation, ConsultationCommand, ConsultationError, ExpiryCause, Mode, Status,
};
use consult_store::jobs::{Settled, Settlement};
use consult_store::notification_log::{self, LogOutcome, LogUpdate};
use consult_store::{HandlerError, Metadata, Store, StoreError};
use tokio::sync::watch;

use crate::channels::{Channel, ChannelKind, Message};
use crate::messages::{self, Facts, PaymentFacts, RefundNote, ReminderFacts};
use crate::notifications::{
    self, DeadlinePayload, NotificationsConfig, NotifyPayload, ReminderPayload,
};
use crate::outcome::JobOutcome;
use crate::refunds::Refunds;
use crate::room_jobs::Media;
use consult_store::jobs::{self, Job, JobKind};

/// The channel for each kind.
#[derive(Debug, Clone)]
pub struct Channels {
    pub sms: Arc<dyn Channel>,
    pub whatsapp: Arc<dyn Channel>,
    pub email: Arc<dyn Channel>,
}

impl Channels {
    fn of(&self, kind: ChannelKind) -> &Arc<dyn Channel> {
        match kind {
            ChannelKind::Sms => &self.sms,
            ChannelKind::Whatsapp => &self.whatsapp,
            ChannelKind::Email => &self.email,
        }
    }
}

/// At most `limit` messages to one recipient within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodGuard {
    pub limit: u32,
    pub window: Duration,
}

impl FloodGuard {
    /// Parses `<count>/<duration>`, e.g. `20/1h`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (count, window) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}`: expected <count>/<duration>, e.g. 20/1h"))?;
        let limit: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("`{text}`: the count must be a whole number"))?;
        let window = notifications::parse_reminders(&format!("{}:email", window.trim()))
            .ok()
            .and_then(|specs| specs.first().map(|s| s.offset))
            .ok_or_else(|| format!("`{text}`: the window must be like 30m, 1h or 1d"))?;
        if limit == 0 {
            return Err(format!("`{text}`: the count must be at least 1"));
        }
        Ok(Self { limit, window })
    }
}

/// How the dispatcher paces itself.
#[derive(Debug, Clone)]
pub struct DispatcherOptions {
    /// Jobs claimed at once.
    pub batch: u32,
    /// How long a claimed job stays locked to this process.
    pub lease: Duration,
    /// How often to look for due jobs when nothing wakes the dispatcher.
    pub poll_interval: Duration,
    /// First retry delay; doubles with each attempt (with jitter) up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub flood: FloodGuard,
    /// Base of the links in messages (the patient/provider app).
    pub app_url: String,
}

impl Default for DispatcherOptions {
    fn default() -> Self {
        Self {
            batch: 64,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            base_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(3600),
            flood: FloodGuard {
                limit: 20,
                window: Duration::from_secs(3600),
            },
            app_url: "http://localhost:8080".to_owned(),
        }
    }
}

/// Runs due jobs until told to stop.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    store: Store,
    owner: String,
    channels: Channels,
    config: NotificationsConfig,
    options: DispatcherOptions,
    /// Room and call jobs; `None` dead-letters them.
    media: Option<Media>,
    /// Refund jobs; `None` dead-letters them.
    refunds: Option<Refunds>,
}

/// `2h`, `30m`, `45s`: a window as the settings write it.
fn humanize(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn instant(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

impl Dispatcher {
    pub fn new(
        store: Store,
        owner: impl Into<String>,
        channels: Channels,
        config: NotificationsConfig,
        options: DispatcherOptions,
    ) -> Self {
        Self {
            store,
            owner: owner.into(),
            channels,
            config,
            options,
            media: None,
            refunds: None,
        }
    }

    /// Runs refund jobs with this payment provider.
    pub fn with_refunds(mut self, refunds: Refunds) -> Self {
        self.refunds = Some(refunds);
        self
    }

    /// Runs room and call jobs with these providers.
    pub fn with_media(mut self, media: Media) -> Self {
        self.media = Some(media);
        self
    }

    /// Claims and runs due jobs until `stop` turns true. `wake` is bumped by the reactor of
    /// this process when it queued jobs; other processes' jobs are found by polling.
    ///
    /// Two claim loops run side by side, so that one batch is being sent while the other's
    /// outcomes are recorded and its next batch claimed (`SKIP LOCKED` keeps them apart).
    pub async fn run(self, wake: watch::Receiver<u64>, stop: watch::Receiver<bool>) {
        tokio::join!(
            self.claim_loop(wake.clone(), stop.clone()),
            self.claim_loop(wake, stop)
        );
    }

    async fn claim_loop(&self, mut wake: watch::Receiver<u64>, mut stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                break;
            }
            wake.borrow_and_update();
            match self.run_due().await {
                Ok(claimed) if claimed >= self.options.batch as usize => continue,
                Ok(_) => failures = 0,
                Err(err) => {
                    failures += 1;
                    tracing::warn!(error = %consult_store::error_chain(&err), failures, "dispatcher cannot claim jobs");
                }
            }
            let mut wait = self.options.poll_interval;
            if failures > 0 {
                wait = Duration::from_secs(1 << failures.min(5));
            } else if let Ok(Some(next)) = jobs::next_due(&self.store).await {
                let until = u64::try_from((next - now_ms()).max(0)).unwrap_or(0);
                wait = wait.min(Duration::from_millis(until));
            }
            tokio::select! {
                _ = wake.changed() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Claims one batch of due jobs and runs them concurrently; returns how many were claimed.
    pub async fn run_due(&self) -> Result<usize, StoreError> {
        let claimed = jobs::claim(
            &self.store,
            &self.owner,
            self.options.batch,
            self.options.lease,
            now_ms(),
        )
        .await?;
        let count = claimed.len();
        if count == 0 {
            return Ok(0);
        }
        let allowed = match self.flood_allowance(&claimed).await {
            Ok(allowed) => allowed,
            Err(err) => {
                // Nothing sent: the jobs run again once their locks run out.
                tracing::warn!(error = %err, "flood guard unavailable; batch left to retry");
                return Err(err);
            }
        };
        let runs = claimed
            .iter()
            .zip(allowed)
            .map(|(job, allowed)| self.run_job(job, allowed));
        let outcomes = futures_util::future::join_all(runs).await;
        // If this process dies before the outcomes are recorded, the jobs stay `running` until
        // their locks run out and run again: at least once.
        self.record_all(&claimed, outcomes).await;
        Ok(count)
    }

    async fn run_job(&self, job: &Job, allowed: bool) -> (Option<JobKind>, JobOutcome) {
        let kind = JobKind::parse(&job.kind);
        let outcome = match kind {
            Some(JobKind::Notify) if !allowed => JobOutcome::Dead(format!(
                "flood guard: {} messages to this recipient about the same other party within \
                 {} already (NOTIFY_FLOOD_LIMIT); not sent. If it is still wanted, retry it \
                 from the dead letters",
                self.options.flood.limit,
                humanize(self.options.flood.window)
            )),
            Some(JobKind::Notify) => self.notify(job).await,
            Some(JobKind::Reminder) => self.reminder(job).await,
            Some(JobKind::Deadline) => self.deadline(job).await,
            Some(JobKind::Refund) => match &self.refunds {
                None => JobOutcome::Dead("no payment provider in this worker".into()),
                Some(refunds) => refunds.run(&self.store, job).await,
            },
            Some(JobKind::Room) => match &self.media {
                None => JobOutcome::Dead("no video provider in this worker".into()),
                Some(media) => media.run_room(&self.store, job).await,
            },
            Some(JobKind::Call) => match &self.media {
                None => JobOutcome::Dead("no voice provider in this worker".into()),
                Some(media) => media.run_call(&self.store, job).await,
            },
            None => JobOutcome::Dead(format!("unknown job kind {}", job.kind)),
        };
        (kind, outcome)
    }

    /// Whether each claimed job may be sent under the flood guard: messages already sent to its
    /// recipient on its sender's account within the window (one query for the batch), plus
    /// those before it in the batch, must stay under the limit. Counting per (sender,
    /// recipient) keeps one party's flood from silencing everyone else's messages to the same
    /// recipient.
    async fn flood_allowance(&self, claimed: &[Job]) -> Result<Vec<bool>, StoreError> {
        let keys: Vec<Option<(String, String)>> = claimed
            .iter()
            .map(|job| {
                (job.kind == JobKind::Notify.as_str())
                    .then(|| serde_json::from_str::<NotifyPayload>(&job.payload).ok())
                    .flatten()
                    .map(|p| {
                        (
                            notifications::recipient_key(&p.to),
                            notifications::sender_key(&p.sender),
                        )
                    })
            })
            .collect();
        let mut wanted: Vec<(String, String)> = keys.iter().flatten().cloned().collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut counts: HashMap<(String, String), i64> = HashMap::new();
        if !wanted.is_empty() {
            let since =
                now_ms() - i64::try_from(self.options.flood.window.as_millis()).unwrap_or(0);
            let limit = i64::from(self.options.flood.limit);
            let rows = notification_log::recent_sends(&self.store, &wanted, since, limit).await?;
            counts.extend(rows);
        }
        let limit = i64::from(self.options.flood.limit);
        Ok(keys
            .into_iter()
            .map(|key| match key {
                None => true,
                Some(key) => {
                    let count = counts.entry(key).or_insert(0);
                    *count += 1;
                    *count <= limit
                }
            })
            .collect())
    }

    /// The delay before attempt `attempts + 1`: exponential with full jitter.
    fn backoff(&self, attempts: i32) -> Duration {
        let exponent = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(20);
        let ceiling = self
            .options
            .base_backoff
            .saturating_mul(1 << exponent)
            .min(self.options.max_backoff);
        let mut bytes = [0u8; 8];
        let fraction = if getrandom::fill(&mut bytes).is_ok() {
            (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
        } else {
            1.0
        };
        // Half fixed, half random: never immediately, never in lockstep.
        ceiling.mul_f64(0.5 + 0.5 * fraction)
    }

    /// What an outcome does to its job and its notification.
    fn settle(&self, job: &Job, kind: Option<JobKind>, outcome: JobOutcome, now: i64) -> Settled {
        let notify = kind == Some(JobKind::Notify);
        let (settlement, error) = match outcome {
            JobOutcome::Done => (Settlement::Done, None),
            JobOutcome::Sent(provider_message_id) => {
                return Settled {
                    id: job.id.clone(),
                    settlement: Settlement::Done,
                    error: None,
                    log: Some(LogOutcome::Sent(provider_message_id)),
                    attempts: job.attempts,
                };
            }
            JobOutcome::Retry(error) if job.attempts < job.max_attempts => {
                let delay = i64::try_from(self.backoff(job.attempts).as_millis()).unwrap_or(0);
                tracing::info!(job = %job.id, kind = %job.kind, attempts = job.attempts, error = %error, "job failed; will retry");
                (Settlement::Retry { at_ms: now + delay }, Some(error))
            }
            JobOutcome::Retry(error) | JobOutcome::Dead(error) => {
                tracing::warn!(job = %job.id, kind = %job.kind, attempts = job.attempts, error = %error, "job dead-lettered");
                (Settlement::Dead, Some(error))
            }
        };
        let log = match settlement {
            Settlement::Done => None,
            Settlement::Dead => Some(LogOutcome::Dead),
            Settlement::Retry { .. } => Some(LogOutcome::Failed),
        };
        Settled {
            id: job.id.clone(),
            settlement,
            error,
            log: log.filter(|_| notify),
            attempts: job.attempts,
        }
    }

    /// Records every outcome of a batch: in one transaction (on PostgreSQL two statements
    /// whatever the batch's size) and, if that fails for any reason but an outage, narrowed to
    /// the job at fault by halving, as the subscriptions narrow a failing batch. A job whose
    /// outcome cannot be recorded alone is dead-lettered with the reason, never run again by
    /// itself: its lock running out would otherwise send it again, and again, every `lease`.
    async fn record_all(&self, claimed: &[Job], outcomes: Vec<(Option<JobKind>, JobOutcome)>) {
        let now = now_ms();
        let settled: Vec<Settled> = claimed
            .iter()
            .zip(outcomes)
            .map(|(job, (kind, outcome))| self.settle(job, kind, outcome, now))
            .collect();
        let mut parts: Vec<&[Settled]> = vec![&settled];
        while let Some(part) = parts.pop() {
            let Err(err) = self.record(part, now).await else {
                continue;
            };
            let error = consult_store::error_chain(err.as_ref());
            if consult_store::is_unavailable(err.as_ref()) {
                // An outage: nothing can be recorded now. The jobs stay `running` until their
                // locks run out and then run again (at least once); a job whose lock runs
                // out `max_attempts` times is dead-lettered by the claim.
                tracing::error!(%error, jobs = part.len(), "cannot record the outcomes of a batch");
                continue;
            }
            match part {
                [one] => self.record_unrecordable(one, &error, now).await,
                _ => {
                    tracing::warn!(%error, jobs = part.len(), "cannot record the outcomes of a batch; narrowing it");
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.push(second);
                    parts.push(first);
                }
            }
        }
    }

    /// One transaction recording `settled`.
    async fn record(&self, settled: &[Settled], now: i64) -> Result<(), HandlerError> {
        let mut write = self.store.begin_write().await?;
        jobs::record_outcomes(&mut write.tx(), &self.owner, settled, now).await?;
        write.commit().await?;
        Ok(())
    }

    /// A job whose outcome cannot be recorded: dead-lettered with the reason (and what became
    /// of it: a message that went out says so), so that it is never run again unasked. Its
    /// notification log row follows, in a transaction of its own, if it can; an admin sees
    /// both.
    async fn record_unrecordable(&self, one: &Settled, error: &str, now: i64) {
        let sent = one.log.as_ref().is_some_and(LogOutcome::is_sent);
        let reason = if sent {
            format!("sent, but its outcome could not be recorded: {error}")
        } else {
            let outcome = match one.settlement {
                Settlement::Done => "done",
                Settlement::Retry { .. } => "pending",
                Settlement::Dead => "dead",
            };
            format!("its outcome ({outcome}) could not be recorded: {error}")
        };
        tracing::error!(job = %one.id, error = %reason, "job dead-lettered");
        let result: Result<(), StoreError> = async {
            let mut write = self.store.begin_write().await?;
            jobs::dead_letter_held(&mut write.tx(), &one.id, &self.owner, &reason, now).await?;
            write.commit().await
        }
        .await;
        if let Err(err) = result {
            tracing::error!(job = %one.id, error = %consult_store::error_chain(&err), "cannot dead-letter a job whose outcome could not be recorded");
            return;
        }
        if one.log.is_none() {
            return;
        }
        let outcome = if sent {
            LogOutcome::Sent(None)
        } else {
            LogOutcome::Dead
        };
        let update = LogUpdate {
            id: &one.id,
            attempts: one.attempts,
            outcome: &outcome,
            error: Some(&reason),
        };
        let result: Result<(), StoreError> = async {
            let mut write = self.store.begin_write().await?;
            notification_log::record_outcomes(&mut write.tx(), &[update], now).await?;
            write.commit().await
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(job = %one.id, error = %consult_store::error_chain(&err), "cannot update the notification log of a job whose outcome could not be recorded");
        }
    }

    async fn notify(&self, job: &Job) -> JobOutcome {
        let payload: NotifyPayload = match serde_json::from_str(&job.payload) {
            Ok(payload) => payload,
            Err(err) => return JobOutcome::Dead(format!("unreadable job: {err}")),
        };
        let message = match self.render(job, &payload) {
            Ok(message) => message,
            Err(err) => return JobOutcome::Dead(format!("cannot render: {err}")),
        };
        let sent = match self.channels.of(payload.channel).send(&message).await {
            Ok(sent) => sent,
            Err(err) if err.retryable => return JobOutcome::Retry(err.message),
            Err(err) => return JobOutcome::Dead(err.message),
        };
        tracing::info!(job = %job.id, consultation = %job.consultation_id, channel = %payload.channel, kind = payload.kind.as_str(), "notification sent");
        JobOutcome::Sent(sent.provider_message_id)
    }

    fn render(&self, job: &Job, payload: &NotifyPayload) -> Result<Message, String> {
        let timezone = payload.timezone.tz();
        let base = self.options.app_url.trim_end_matches('/');
        let id = &job.consultation_id;
        let payment = match (payload.amount_minor, &payload.currency) {
            (Some(amount_minor), Some(currency)) => Some(PaymentFacts {
                amount_minor,
                currency: currency.clone(),
                refund: RefundNote::None,
            }),
            _ => payload.refund.map(|refund| PaymentFacts {
                amount_minor: 0,
                currency: String::new(),
                refund,
            }),
        };
        let facts = Facts {
            consultation_id: id.clone(),
            starts_at: payload.starts_at,
            ends_at: payload.ends_at,
            previous_starts_at: payload.previous_starts_at,
            timezone,
            mode: payload.mode.as_str().to_owned(),
            provider_name: payload.provider_name.clone(),
            // Every mode the domain has meets through the app.
            meeting_link: match payload.mode {
                Mode::Video | Mode::Voice | Mode::Messaging => {
                    Some(format!("{base}/consultations/{id}/join"))
                }
            },
            manage_link: Some(format!("{base}/consultations/{id}")),
            payment,
            cancelled_by: payload.cancelled_by.map(|by| {
                match by {
                    Canceller::Patient => "patient",
                    Canceller::Provider => "provider",
                    Canceller::Admin => "clinic",
                }
                .to_owned()
            }),
            expiry: payload.expiry.map(|cause| {
                match cause {
                    ExpiryCause::NotAcceptedInTime => "not_accepted",
                    ExpiryCause::UnpaidAtStart => "unpaid",
                }
                .to_owned()
            }),
            reminder: payload.reminder_offset_secs.map(|secs| ReminderFacts {
                offset: Duration::from_secs(secs),
                is_final: payload.reminder_is_final,
            }),
        };
        let rendered = messages::render(payload.kind, payload.recipient, payload.channel, &facts)
            .map_err(|e| e.to_string())?;
        Ok(Message {
            channel: payload.channel,
            to: payload.to.clone(),
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html,
            notification_id: job.id.clone(),
        })
    }

    /// A reminder timer: if the consultation is still confirmed for the same start, queue the
    /// reminder's sends (with keys of their own, so a second firing queues nothing).
    async fn reminder(&self, job: &Job) -> JobOutcome {
        let reminder: ReminderPayload = match serde_json::from_str(&job.payload) {
            Ok(payload) => payload,
            Err(err) => return JobOutcome::Dead(format!("unreadable job: {err}")),
        };
        match self.fire_reminder(job, &reminder).await {
            Ok(_) => JobOutcome::Done,
            Err(err) => JobOutcome::Retry(consult_store::error_chain(err.as_ref())),
        }
    }

    /// Queues a reminder's sends if it is still due; returns how many.
    async fn fire_reminder(
        &self,
        job: &Job,
        reminder: &ReminderPayload,
    ) -> Result<usize, HandlerError> {
        let id = &job.consultation_id;
        let mut write = self.store.begin_write().await?;
        let tx = &mut write.tx();
        let queued = {
            let (state, provider) = notifications::load_for_timer(tx, id).await?;
            let now = Utc::now();
            let current = state.status == Status::Confirmed
                && state.starts_at() == Some(reminder.starts_at)
                && now < reminder.starts_at;
            let mut queued = 0;
            if current {
                let sends = notifications::reminder_sends(
                    &self.config,
                    id,
                    &state,
                    provider.as_ref(),
                    reminder,
                    now,
                );
                let planned: Vec<(&_, bool)> = sends.iter().map(|send| (send, false)).collect();
                let inserted = jobs::insert_many(tx, &planned, now.timestamp_millis()).await?;
                let logs: Vec<&_> = sends.iter().filter(|s| inserted.contains(&s.id)).collect();
                notifications::insert_logs(tx, &logs, now.timestamp_millis()).await?;
                queued = logs.len();
            } else {
                tracing::info!(job = %job.id, consultation = %id, "reminder no longer due; skipped");
            }
            queued
        };
        write.commit().await?;
        Ok(queued)
    }

    /// A deadline timer: expires the consultation if it is still in the state the deadline
    /// was set for.
    async fn deadline(&self, job: &Job) -> JobOutcome {
        let deadline: DeadlinePayload = match serde_json::from_str(&job.payload) {
            Ok(payload) => payload,
            Err(err) => return JobOutcome::Dead(format!("unreadable job: {err}")),
        };
        let metadata = Metadata {
            actor_id: "deadlines".to_owned(),
            actor_role: "system".to_owned(),
            correlation_id: job.consultation_id.clone(),
            causation_id: job.id.clone(),
            request_id: String::new(),
        };
        let due = deadline.due_at;
        let cause = deadline.cause;
        let result = self
            .store
            .execute::<Consultation, ConsultationError, _>(
                &job.consultation_id,
                &metadata,
                None,
                |state| {
                    let still_due = match cause {
                        ExpiryCause::NotAcceptedInTime => state.status == Status::Requested,
                        ExpiryCause::UnpaidAtStart => {
                            state.status == Status::Accepted && state.starts_at() == Some(due)
                        }
                    };
                    if !still_due {
                        return Ok(Vec::new());
                    }
                    state.decide(ConsultationCommand::Expire {
                        cause,
                        at: Utc::now(),
                    })
                },
            )
            .await;
        match result {
            Ok(_) => JobOutcome::Done,
            Err(consult_store::ExecuteError::Refused(_)) => JobOutcome::Done,
            Err(err) => JobOutcome::Retry(err.to_string()),
        }
    }
}

/// When the next instant a job is due, for tests and metrics.
pub fn due_at(job: &Job) -> DateTime<Utc> {
    instant(job.due_at_ms)
}
