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
use consult_domain::{Consultation, ConsultationCommand, ConsultationError, ExpiryCause, Status};
use consult_store::{with_tx, Db, HandlerError, Metadata, Store, StoreError, Tx};
use tokio::sync::watch;

use crate::channels::{Channel, ChannelKind, Message};
use crate::jobs::{self, Job, JobKind};
use crate::media::{Media, MediaOutcome};
use crate::messages::{self, Facts, PaymentFacts, RefundNote, ReminderFacts};
use crate::reactor::{self, DeadlinePayload, NotifyPayload, ReactorConfig, ReminderPayload};
use crate::refunds::Refunds;

/// Runs `$body` with `$tx` bound to a new transaction of `$store`, and commits it; `?` in the
/// body returns early (and rolls back).
macro_rules! in_tx {
    ($store:expr, $tx:ident => $body:expr) => {{
        match $store.db() {
            Db::Postgres(pool) => {
                let mut transaction = consult_store::BeginWrite::begin_write(pool).await?;
                let value = {
                    let $tx = &mut Tx::Postgres(&mut transaction);
                    $body
                };
                transaction.commit().await?;
                value
            }
            Db::Sqlite(pool) => {
                let mut transaction = consult_store::BeginWrite::begin_write(pool).await?;
                let value = {
                    let $tx = &mut Tx::Sqlite(&mut transaction);
                    $body
                };
                transaction.commit().await?;
                value
            }
        }
    }};
}

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
        let window = reactor::parse_reminders(&format!("{}:email", window.trim()))
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
    config: ReactorConfig,
    options: DispatcherOptions,
    /// Room and call jobs; `None` dead-letters them.
    media: Option<Media>,
    /// Refund jobs; `None` dead-letters them.
    refunds: Option<Refunds>,
}

/// How one run of a job ended.
enum Outcome {
    Done,
    /// A notification went out, with the provider's id for it.
    Sent(Option<String>),
    Retry(String),
    Dead(String),
}

impl From<MediaOutcome> for Outcome {
    fn from(outcome: MediaOutcome) -> Self {
        match outcome {
            MediaOutcome::Done => Self::Done,
            MediaOutcome::Retry(error) => Self::Retry(error),
            MediaOutcome::Dead(error) => Self::Dead(error),
        }
    }
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
        config: ReactorConfig,
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

    async fn run_job(&self, job: &Job, allowed: bool) -> (Option<JobKind>, Outcome) {
        let kind = JobKind::parse(&job.kind);
        let outcome = match kind {
            Some(JobKind::Notify) if !allowed => Outcome::Dead(format!(
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
                None => Outcome::Dead("no payment provider in this worker".into()),
                Some(refunds) => refunds.run(&self.store, job).await.into(),
            },
            Some(JobKind::Room) => match &self.media {
                None => Outcome::Dead("no video provider in this worker".into()),
                Some(media) => media.run_room(&self.store, job).await.into(),
            },
            Some(JobKind::Call) => match &self.media {
                None => Outcome::Dead("no voice provider in this worker".into()),
                Some(media) => media.run_call(&self.store, job).await.into(),
            },
            None => Outcome::Dead(format!("unknown job kind {}", job.kind)),
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
                            reactor::recipient_key(&p.to),
                            reactor::sender_key(&p.sender),
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
            let rows: Vec<(String, String, i64)> = match self.store.db() {
                Db::Postgres(pool) => {
                    // Counted up to the limit only: what matters is whether it is reached,
                    // and a recipient with many messages in the window costs no more.
                    let (recipients, senders): (Vec<String>, Vec<String>) =
                        wanted.iter().cloned().unzip();
                    sqlx::query_as(
                        "SELECT r, s, (SELECT count(*) FROM (SELECT 1 FROM notification_log \
                                     WHERE recipient_key = r AND sender_key = s \
                                       AND sent_at_ms >= $3 LIMIT $4) AS recent) \
                           FROM unnest($1::text[], $2::text[]) AS k(r, s)",
                    )
                    .bind(&recipients)
                    .bind(&senders)
                    .bind(since)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
                }
                Db::Sqlite(pool) => {
                    let mut rows = Vec::new();
                    for (recipient, sender) in &wanted {
                        let count: i64 = sqlx::query_scalar(
                            "SELECT count(*) FROM (SELECT 1 FROM notification_log \
                              WHERE recipient_key = $1 AND sender_key = $2 \
                                AND sent_at_ms >= $3 LIMIT $4)",
                        )
                        .bind(recipient)
                        .bind(sender)
                        .bind(since)
                        .bind(limit)
                        .fetch_one(pool)
                        .await?;
                        rows.push((recipient.clone(), sender.clone(), count));
                    }
                    rows
                }
            };
            counts.extend(rows.into_iter().map(|(r, s, count)| ((r, s), count)));
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
    fn settle(&self, job: &Job, kind: Option<JobKind>, outcome: Outcome, now: i64) -> Settled {
        let notify = kind == Some(JobKind::Notify);
        let (status, due_at, error) = match outcome {
            Outcome::Done => ("done", None, None),
            Outcome::Sent(provider_message_id) => {
                return Settled {
                    id: job.id.clone(),
                    status: "done",
                    due_at: None,
                    error: None,
                    log: Some(("sent", provider_message_id)),
                    attempts: job.attempts,
                };
            }
            Outcome::Retry(error) if job.attempts < job.max_attempts => {
                let delay = i64::try_from(self.backoff(job.attempts).as_millis()).unwrap_or(0);
                tracing::info!(job = %job.id, kind = %job.kind, attempts = job.attempts, error = %error, "job failed; will retry");
                ("pending", Some(now + delay), Some(error))
            }
            Outcome::Retry(error) | Outcome::Dead(error) => {
                tracing::warn!(job = %job.id, kind = %job.kind, attempts = job.attempts, error = %error, "job dead-lettered");
                ("dead", None, Some(error))
            }
        };
        let log_status = if status == "dead" { "dead" } else { "failed" };
        Settled {
            id: job.id.clone(),
            status,
            due_at,
            error,
            log: (notify && status != "done").then_some((log_status, None)),
            attempts: job.attempts,
        }
    }

    /// Records every outcome of a batch: in one transaction (on PostgreSQL two statements
    /// whatever the batch's size) and, if that fails for any reason but an outage, narrowed to
    /// the job at fault by halving, as the subscriptions narrow a failing batch. A job whose
    /// outcome cannot be recorded alone is dead-lettered with the reason, never run again by
    /// itself: its lock running out would otherwise send it again, and again, every `lease`.
    async fn record_all(&self, claimed: &[Job], outcomes: Vec<(Option<JobKind>, Outcome)>) {
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
        in_tx!(self.store, tx => {
            match tx {
                Tx::Postgres(conn) => record_pg(conn, &self.owner, settled, now).await?,
                Tx::Sqlite(_) => {
                    for one in settled {
                        record_one(tx, &self.owner, one, now).await?;
                    }
                }
            }
        });
        Ok(())
    }

    /// A job whose outcome cannot be recorded: dead-lettered with the reason (and what became
    /// of it: a message that went out says so), so that it is never run again unasked. Its
    /// notification log row follows if it can; an admin sees both.
    async fn record_unrecordable(&self, one: &Settled, error: &str, now: i64) {
        let sent = matches!(one.log, Some(("sent", _)));
        let reason = if sent {
            format!("sent, but its outcome could not be recorded: {error}")
        } else {
            format!(
                "its outcome ({}) could not be recorded: {error}",
                one.status
            )
        };
        tracing::error!(job = %one.id, error = %reason, "job dead-lettered");
        let result: Result<(), HandlerError> = async {
            in_tx!(self.store, tx => {
                jobs::fail(tx, &one.id, &self.owner, &reason, None, now).await?
            });
            Ok(())
        }
        .await;
        if let Err(err) = result {
            tracing::error!(job = %one.id, error = %consult_store::error_chain(err.as_ref()), "cannot dead-letter a job whose outcome could not be recorded");
            return;
        }
        if one.log.is_none() {
            return;
        }
        let log = Settled {
            id: one.id.clone(),
            status: "dead",
            due_at: None,
            error: Some(reason),
            log: Some((if sent { "sent" } else { "dead" }, None)),
            attempts: one.attempts,
        };
        let result: Result<(), HandlerError> = async {
            in_tx!(self.store, tx => update_log(tx, &log, now).await?);
            Ok(())
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(job = %one.id, error = %consult_store::error_chain(err.as_ref()), "cannot update the notification log of a job whose outcome could not be recorded");
        }
    }

    async fn notify(&self, job: &Job) -> Outcome {
        let payload: NotifyPayload = match serde_json::from_str(&job.payload) {
            Ok(payload) => payload,
            Err(err) => return Outcome::Dead(format!("unreadable job: {err}")),
        };
        let message = match self.render(job, &payload) {
            Ok(message) => message,
            Err(err) => return Outcome::Dead(format!("cannot render: {err}")),
        };
        let sent = match self.channels.of(payload.channel).send(&message).await {
            Ok(sent) => sent,
            Err(err) if err.retryable => return Outcome::Retry(err.message),
            Err(err) => return Outcome::Dead(err.message),
        };
        tracing::info!(job = %job.id, consultation = %job.consultation_id, channel = %payload.channel, kind = payload.kind.as_str(), "notification sent");
        Outcome::Sent(sent.provider_message_id)
    }

    fn render(&self, job: &Job, payload: &NotifyPayload) -> Result<Message, String> {
        let timezone: chrono_tz::Tz = payload
            .timezone
            .parse()
            .map_err(|_| format!("unknown time zone {}", payload.timezone))?;
        let base = self.options.app_url.trim_end_matches('/');
        let id = &job.consultation_id;
        let payment = match (payload.amount_minor, &payload.currency) {
            (Some(amount_minor), Some(currency)) => Some(PaymentFacts {
                amount_minor,
                currency: currency.clone(),
                refund: RefundNote::None,
            }),
            _ => payload.refund.as_deref().map(|refund| PaymentFacts {
                amount_minor: 0,
                currency: String::new(),
                refund: match refund {
                    "full" => RefundNote::Full,
                    "late" => RefundNote::Late,
                    _ => RefundNote::NotPaid,
                },
            }),
        };
        let facts = Facts {
            consultation_id: id.clone(),
            starts_at: payload.starts_at,
            ends_at: payload.ends_at,
            previous_starts_at: payload.previous_starts_at,
            timezone,
            mode: payload.mode.clone(),
            provider_name: payload.provider_name.clone(),
            meeting_link: (payload.mode != "in_person")
                .then(|| format!("{base}/consultations/{id}/join")),
            manage_link: Some(format!("{base}/consultations/{id}")),
            payment,
            cancelled_by: payload.cancelled_by.clone(),
            expiry: payload.expiry.clone(),
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
    async fn reminder(&self, job: &Job) -> Outcome {
        let reminder: ReminderPayload = match serde_json::from_str(&job.payload) {
            Ok(payload) => payload,
            Err(err) => return Outcome::Dead(format!("unreadable job: {err}")),
        };
        match self.fire_reminder(job, &reminder).await {
            Ok(_) => Outcome::Done,
            Err(err) => Outcome::Retry(consult_store::error_chain(err.as_ref())),
        }
    }

    /// Queues a reminder's sends if it is still due; returns how many.
    async fn fire_reminder(
        &self,
        job: &Job,
        reminder: &ReminderPayload,
    ) -> Result<usize, HandlerError> {
        let id = &job.consultation_id;
        let queued = in_tx!(self.store, tx => {
            let (state, provider) = reactor::load_for_timer(tx, id).await?;
            let now = Utc::now();
            let current = state.status == Status::Confirmed
                && state.starts_at() == Some(reminder.starts_at)
                && now < reminder.starts_at;
            let mut queued = 0;
            if current {
                let sends = reactor::reminder_sends(
                    &self.config,
                    id,
                    &state,
                    provider.as_ref(),
                    reminder,
                    now,
                );
                for send in &sends {
                    if jobs::insert(tx, send, now.timestamp_millis()).await? {
                        reactor::insert_log(tx, send, now.timestamp_millis()).await?;
                        queued += 1;
                    }
                }
            } else {
                tracing::info!(job = %job.id, consultation = %id, "reminder no longer due; skipped");
            }
            queued
        });
        Ok(queued)
    }

    /// A deadline timer: expires the consultation if it is still in the state the deadline
    /// was set for.
    async fn deadline(&self, job: &Job) -> Outcome {
        let deadline: DeadlinePayload = match serde_json::from_str(&job.payload) {
            Ok(payload) => payload,
            Err(err) => return Outcome::Dead(format!("unreadable job: {err}")),
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
            Ok(_) => Outcome::Done,
            Err(consult_store::ExecuteError::Refused(_)) => Outcome::Done,
            Err(err) => Outcome::Retry(err.to_string()),
        }
    }
}

/// A job's outcome as it is written.
struct Settled {
    id: String,
    /// done | pending (a retry) | dead.
    status: &'static str,
    due_at: Option<i64>,
    error: Option<String>,
    /// The notification's new status and provider id, for notify jobs.
    log: Option<(&'static str, Option<String>)>,
    attempts: i32,
}

/// PostgreSQL: the jobs this process still holds move in one statement, and their
/// notifications in another. A sent notification is recorded even if the lock was lost
/// meanwhile: it did go out.
async fn record_pg(
    conn: &mut sqlx::PgConnection,
    owner: &str,
    settled: &[Settled],
    now: i64,
) -> Result<(), HandlerError> {
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *conn)
        .await?;
    let held: Vec<String> = sqlx::query_scalar(
        "UPDATE jobs SET status = u.status, due_at_ms = COALESCE(u.due_at, jobs.due_at_ms), \
                locked_by = NULL, last_error = u.error, updated_at_ms = $6, \
                finished_at_ms = CASE WHEN u.status = 'pending' THEN NULL ELSE $6 END \
           FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[]) \
                AS u(id, status, due_at, error) \
          WHERE jobs.id = u.id AND jobs.locked_by = $5 AND jobs.status = 'running' \
         RETURNING jobs.id",
    )
    .bind(settled.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
    .bind(settled.iter().map(|s| s.status).collect::<Vec<_>>())
    .bind(settled.iter().map(|s| s.due_at).collect::<Vec<_>>())
    .bind(
        settled
            .iter()
            .map(|s| s.error.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(owner)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let logged: Vec<&Settled> = settled
        .iter()
        .filter(|s| match s.log {
            Some(("sent", _)) => true,
            Some(_) => held.contains(&s.id),
            None => false,
        })
        .collect();
    if logged.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE notification_log SET status = u.status, attempts = u.attempts, \
                provider_message_id = COALESCE(u.provider_id, notification_log.provider_message_id), \
                sent_at_ms = CASE WHEN u.status = 'sent' THEN $6 ELSE notification_log.sent_at_ms END, \
                last_error = u.error, updated_at_ms = $6 \
           FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::text[]) \
                AS u(id, status, attempts, provider_id, error) \
          WHERE notification_log.id = u.id",
    )
    .bind(logged.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
    .bind(logged.iter().map(|s| s.log.as_ref().map_or("", |l| l.0)).collect::<Vec<_>>())
    .bind(logged.iter().map(|s| s.attempts).collect::<Vec<_>>())
    .bind(
        logged
            .iter()
            .map(|s| s.log.as_ref().and_then(|l| l.1.as_deref()))
            .collect::<Vec<_>>(),
    )
    .bind(logged.iter().map(|s| s.error.as_deref()).collect::<Vec<_>>())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The portable path (SQLite): one job at a time, in the batch's transaction.
async fn record_one(
    tx: &mut Tx<'_>,
    owner: &str,
    one: &Settled,
    now: i64,
) -> Result<(), HandlerError> {
    let held = match one.status {
        "done" => jobs::complete(tx, &one.id, owner, now).await?,
        _ => {
            let error = one.error.as_deref().unwrap_or("");
            jobs::fail(tx, &one.id, owner, error, one.due_at, now).await?
        }
    };
    match &one.log {
        Some((status, _)) if *status == "sent" || held => update_log(tx, one, now).await,
        _ => Ok(()),
    }
}

/// Moves a notification's log row to `one`'s outcome.
async fn update_log(tx: &mut Tx<'_>, one: &Settled, now: i64) -> Result<(), HandlerError> {
    let Some((status, provider_message_id)) = &one.log else {
        return Ok(());
    };
    const SQL: &str = "UPDATE notification_log SET status = $2, attempts = $3, \
                       provider_message_id = COALESCE($4, provider_message_id), \
                       sent_at_ms = CASE WHEN $2 = 'sent' THEN $5 ELSE sent_at_ms END, \
                       last_error = $6, updated_at_ms = $5 WHERE id = $1";
    with_tx!(tx, conn => {
        sqlx::query(SQL)
            .bind(&one.id)
            .bind(*status)
            .bind(one.attempts)
            .bind(provider_message_id.as_deref())
            .bind(now)
            .bind(one.error.as_deref())
            .execute(conn)
            .await
            .map(|_| ())?
    });
    Ok(())
}

/// When the next instant a job is due, for tests and metrics.
pub fn due_at(job: &Job) -> DateTime<Utc> {
    instant(job.due_at_ms)
}
