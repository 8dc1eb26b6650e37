//! The `notifications` reactor: turns consultation events into jobs, in the transaction that
//! moves its checkpoint. Who is told what:
//!
//! | event | told |
//! | --- | --- |
//! | Booked | provider: new request |
//! | Accepted | patient |
//! | Declined | patient, with what happens to the payment |
//! | PaymentConfirmed | patient: receipt |
//! | Rescheduled | both: new and previous time |
//! | Cancelled | both |
//! | Expired | patient |
//!
//! It also keeps the timers: reminders are scheduled when a consultation becomes confirmed,
//! moved on reschedule and cancelled when it ends; deadlines expire a request not accepted in
//! time and an accepted consultation still unpaid at its start.
//!
//! Every job's key is derived from the event that caused it, so a redelivered batch or a replay
//! of the log inserts nothing new and sends nothing twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use consult_domain::{
    Canceller, Consultation, ConsultationEvent, ExpiryCause, Mode, PaymentStatus, ProviderProfile,
    RefundDue, Status, TimeZone,
};
use consult_store::jobs::{self, JobKind, NewJob};
use consult_store::notification_log::{self, NewLogRow};
use consult_store::{events, BoxFuture, Handler, HandlerError, RecordedEvent, Tx};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::channels::{mask, ChannelKind};
use crate::messages::{NotificationKind, Recipient, RefundNote};

/// One reminder: how long before the start, and through which channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReminderSpec {
    pub offset: Duration,
    pub email: bool,
    /// SMS, or WhatsApp for a recipient who opted in.
    pub text: bool,
}

/// Parses `REMINDERS`, e.g. `24h:email,1h:sms,15m:sms+email`.
pub fn parse_reminders(text: &str) -> Result<Vec<ReminderSpec>, String> {
    let mut specs = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (offset, channels) = item
            .split_once(':')
            .ok_or_else(|| format!("reminder `{item}`: expected <offset>:<channels>"))?;
        let offset = parse_offset(offset).ok_or_else(|| {
            format!("reminder `{item}`: offset must be a number with s, m, h or d (e.g. 15m)")
        })?;
        let mut spec = ReminderSpec {
            offset,
            email: false,
            text: false,
        };
        for channel in channels.split('+') {
            match channel.trim() {
                "email" => spec.email = true,
                "sms" | "whatsapp" | "text" => spec.text = true,
                other => {
                    return Err(format!(
                        "reminder `{item}`: unknown channel `{other}` (email, sms)"
                    ))
                }
            }
        }
        specs.push(spec);
    }
    specs.sort_by_key(|s| std::cmp::Reverse(s.offset));
    specs.dedup_by(|a, b| a.offset == b.offset);
    Ok(specs)
}

fn parse_offset(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        "d" => number.checked_mul(86_400)?,
        _ => return None,
    };
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// What the reactor needs to know.
#[derive(Debug, Clone)]
pub struct NotificationsConfig {
    pub reminders: Vec<ReminderSpec>,
    /// A request not accepted this long after booking (or by its start) expires.
    pub accept_deadline: Duration,
    /// Attempts of a notification before it is dead-lettered.
    pub max_attempts: i32,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            reminders: parse_reminders("24h:email,1h:sms,15m:sms+email").unwrap_or_default(),
            accept_deadline: Duration::from_secs(24 * 3600),
            max_attempts: 8,
        }
    }
}

/// Everything a notification job needs to be rendered and sent, fixed when it is queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotifyPayload {
    pub recipient: Recipient,
    pub kind: NotificationKind,
    pub channel: ChannelKind,
    /// Phone number (E.164) or email address.
    pub to: String,
    /// The recipient's time zone (its IANA name in the payload).
    pub timezone: TimeZone,
    pub provider_name: String,
    pub mode: Mode,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub previous_starts_at: Option<DateTime<Utc>>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    /// What happens to the payment (declined, cancelled).
    pub refund: Option<RefundNote>,
    #[serde(default, deserialize_with = "legacy::canceller")]
    pub cancelled_by: Option<Canceller>,
    #[serde(default, deserialize_with = "legacy::expiry")]
    pub expiry: Option<ExpiryCause>,
    pub reminder_offset_secs: Option<u64>,
    pub reminder_is_final: bool,
    /// The other party of the consultation (the patient for a message to the provider, and
    /// the other way round), on whose account the message is sent: the flood guard counts per
    /// (sender, recipient). Empty in jobs queued before it existed.
    #[serde(default)]
    pub sender: String,
}

/// Spellings that notify jobs queued by earlier builds carry (`clinic` for the admin who
/// cancelled, `not_accepted` and `unpaid` for the expiry causes), read as the domain's own;
/// anything else is an unreadable job.
mod legacy {
    use consult_domain::{Canceller, ExpiryCause};
    use serde::de::{Deserialize, Deserializer, Error};

    pub fn canceller<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Canceller>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        match text.as_str() {
            "patient" => Ok(Some(Canceller::Patient)),
            "provider" => Ok(Some(Canceller::Provider)),
            "admin" | "clinic" => Ok(Some(Canceller::Admin)),
            other => Err(D::Error::custom(format!("unknown canceller `{other}`"))),
        }
    }

    pub fn expiry<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ExpiryCause>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        match text.as_str() {
            "not_accepted_in_time" | "not_accepted" => Ok(Some(ExpiryCause::NotAcceptedInTime)),
            "unpaid_at_start" | "unpaid" => Ok(Some(ExpiryCause::UnpaidAtStart)),
            other => Err(D::Error::custom(format!("unknown expiry cause `{other}`"))),
        }
    }
}

/// A reminder timer's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReminderPayload {
    pub offset_secs: u64,
    pub is_final: bool,
    pub email: bool,
    pub text: bool,
    /// The start the reminder was scheduled for; a moved consultation gets new timers.
    pub starts_at: DateTime<Utc>,
}

/// A deadline timer's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadlinePayload {
    pub cause: ExpiryCause,
    pub due_at: DateTime<Utc>,
}

/// The `notifications` reactor subscription.
#[derive(Debug, Clone)]
pub struct NotificationsReactor {
    config: NotificationsConfig,
    /// Wakes this process's dispatcher when jobs were queued.
    wake: tokio::sync::watch::Sender<u64>,
}

impl NotificationsReactor {
    pub fn new(config: NotificationsConfig, wake: tokio::sync::watch::Sender<u64>) -> Self {
        Self { config, wake }
    }
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// The hash the flood guard counts a recipient by.
pub fn recipient_key(to: &str) -> String {
    let digest = Sha256::digest(to.trim().to_lowercase().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash the flood guard counts a sender by (empty for jobs queued before senders were
/// recorded, which are then counted together).
pub fn sender_key(sender: &str) -> String {
    if sender.is_empty() {
        return String::new();
    }
    let digest = Sha256::digest(sender.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What one batch does to the jobs, in event order: one group of steps per event.
#[derive(Default)]
struct Plan {
    groups: Vec<Vec<Step>>,
}

enum Step {
    Queue(NewJob),
    /// Cancel a consultation's pending timers of a kind.
    Cancel(String, JobKind),
}

impl Step {
    fn queued_key(&self) -> Option<&str> {
        match self {
            Self::Queue(job) => Some(job.key.as_str()),
            Self::Cancel(..) => None,
        }
    }
}

impl Plan {
    /// Starts the steps of the next event.
    fn begin(&mut self) {
        self.groups.push(Vec::new());
    }

    fn push(&mut self, step: Step) {
        match self.groups.last_mut() {
            Some(group) => group.push(step),
            None => self.groups.push(vec![step]),
        }
    }

    fn queue(&mut self, job: NewJob) {
        self.push(Step::Queue(job));
    }

    fn cancel(&mut self, id: &str, kind: JobKind) {
        self.push(Step::Cancel(id.to_owned(), kind));
    }
}

struct Context<'a> {
    config: &'a NotificationsConfig,
    id: &'a str,
    sequence: i64,
    now: DateTime<Utc>,
}

impl Handler for NotificationsReactor {
    fn name(&self) -> &'static str {
        "notifications"
    }

    /// A notification may leave ten milliseconds later; under load one batch takes many commits.
    fn linger(&self) -> std::time::Duration {
        std::time::Duration::from_millis(10)
    }

    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let now = Utc::now();
            let events: Vec<&RecordedEvent> = events
                .iter()
                .filter(|e| e.aggregate_type == "consultation")
                .collect();
            let mut parsed = Vec::with_capacity(events.len());
            for event in &events {
                parsed.push(serde_json::from_str::<ConsultationEvent>(
                    &event.current_payload(),
                )?);
            }
            // Each stream's state before its first event in the batch, and the profiles of the
            // providers involved, each read once for the whole batch.
            let mut firsts: Vec<(&str, i64)> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for event in &events {
                if seen.insert(event.aggregate_id.as_str()) {
                    firsts.push((event.aggregate_id.as_str(), event.sequence));
                }
            }
            let mut states = events::consultations_before(tx, &firsts).await?;
            let mut provider_ids: Vec<String> = states
                .values()
                .filter_map(|c| c.booking.as_ref())
                .map(|b| b.provider_id.as_str().to_owned())
                .collect();
            provider_ids.extend(parsed.iter().filter_map(|e| match e {
                ConsultationEvent::Booked { booking, .. } => {
                    Some(booking.provider_id.as_str().to_owned())
                }
                _ => None,
            }));
            provider_ids.sort_unstable();
            provider_ids.dedup();
            let providers = events::provider_profiles(tx, &provider_ids).await?;
            let mut plan = Plan::default();
            for (event, parsed) in events.iter().zip(parsed) {
                let Some(state) = states.get_mut(&event.aggregate_id) else {
                    continue;
                };
                let before = state.clone();
                state.evolve(parsed.clone());
                let after = state.clone();
                let provider_id = after
                    .booking
                    .as_ref()
                    .map(|b| b.provider_id.as_str().to_owned())
                    .unwrap_or_default();
                // A booking's provider never changes, so every one was read above.
                let provider = providers.get(&provider_id).and_then(Option::as_ref);
                let context = Context {
                    config: &self.config,
                    id: &event.aggregate_id,
                    sequence: event.sequence,
                    now,
                };
                plan.begin();
                react(&context, &before, &after, &parsed, provider, &mut plan);
            }
            let queued = apply_plan(tx, &plan, millis(now)).await?;
            if queued > 0 {
                self.wake.send_modify(|n| *n = n.wrapping_add(1));
            }
            Ok(())
        })
    }

    /// Jobs are not a read model: a reset keeps them (and sends nothing again, as every key
    /// already exists).
    fn reset<'a>(&'a self, _tx: &'a mut Tx<'_>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Applies a batch's plan: each event's group of steps in order, as if one by one, in a few
/// statements. Returns how many jobs were queued.
///
/// A group that cancels timers and whose first job was queued before (a replay of the log) is
/// skipped whole: its jobs exist already, and cancelling now would drop timers that later
/// events queued. Jobs queued and then cancelled within the batch are written cancelled; the
/// cancels of the batch are applied to the rows that existed before it, then the new rows are
/// inserted (a key that exists already is left as it is).
///
/// On PostgreSQL each kind of statement runs once for the batch; on SQLite (one writer at a
/// time) the same steps run row by row.
async fn apply_plan(tx: &mut Tx<'_>, plan: &Plan, now_ms: i64) -> Result<usize, HandlerError> {
    let guards: Vec<String> = plan
        .groups
        .iter()
        .filter(|group| group.iter().any(|step| matches!(step, Step::Cancel(..))))
        .filter_map(|group| group.iter().find_map(Step::queued_key))
        .map(str::to_owned)
        .collect();
    let existing = jobs::existing_keys(tx, &guards).await?;
    let mut queued_keys = std::collections::HashSet::new();
    let mut planned: Vec<(&NewJob, bool)> = Vec::new();
    let mut cancels: Vec<(&str, JobKind)> = Vec::new();
    for group in &plan.groups {
        let cancels_timers = group.iter().any(|step| matches!(step, Step::Cancel(..)));
        if let (true, Some(first)) = (cancels_timers, group.iter().find_map(Step::queued_key)) {
            if existing.contains(first) || queued_keys.contains(first) {
                continue;
            }
        }
        for step in group {
            match step {
                Step::Cancel(id, kind) => {
                    cancels.push((id.as_str(), *kind));
                    for (job, cancelled) in &mut planned {
                        if job.consultation_id == *id && job.kind == *kind {
                            *cancelled = true;
                        }
                    }
                }
                Step::Queue(job) => {
                    if queued_keys.insert(job.key.as_str()) {
                        planned.push((job, false));
                    }
                }
            }
        }
    }
    jobs::cancel_timers_of(tx, &cancels, now_ms).await?;
    let inserted = jobs::insert_many(tx, &planned, now_ms).await?;
    let logs: Vec<&NewJob> = planned
        .iter()
        .map(|(job, _)| *job)
        .filter(|job| job.kind == JobKind::Notify && inserted.contains(&job.id))
        .collect();
    insert_logs(tx, &logs, now_ms).await?;
    Ok(inserted.len())
}

/// The notification log row of a queued notify job.
fn log_row(job: &NewJob) -> Result<NewLogRow, HandlerError> {
    let payload: NotifyPayload = serde_json::from_value(job.payload.clone())?;
    Ok(NewLogRow {
        id: job.id.clone(),
        consultation_id: job.consultation_id.clone(),
        recipient_role: payload.recipient.as_str().to_owned(),
        channel: payload.channel.as_str().to_owned(),
        kind: payload.kind.as_str().to_owned(),
        recipient_masked: mask(&payload.to),
        recipient_key: recipient_key(&payload.to),
        sender_key: sender_key(&payload.sender),
        scheduled_for_ms: job.due_at_ms,
    })
}

/// Writes the notification log rows of queued notify jobs, in one statement.
pub(crate) async fn insert_logs(
    tx: &mut Tx<'_>,
    jobs: &[&NewJob],
    now_ms: i64,
) -> Result<(), HandlerError> {
    let rows = jobs
        .iter()
        .map(|job| log_row(job))
        .collect::<Result<Vec<_>, _>>()?;
    notification_log::insert_many(tx, &rows, now_ms).await?;
    Ok(())
}

/// The jobs one event causes.
fn react(
    context: &Context<'_>,
    before: &Consultation,
    after: &Consultation,
    event: &ConsultationEvent,
    provider: Option<&ProviderProfile>,
    plan: &mut Plan,
) {
    use ConsultationEvent as E;
    let (Some(starts_at), Some(ends_at)) = (after.starts_at(), after.ends_at()) else {
        return;
    };
    let base = |kind: NotificationKind| Notice {
        kind,
        starts_at,
        ends_at,
        previous_starts_at: None,
        amount_minor: None,
        currency: None,
        refund: None,
        cancelled_by: None,
        expiry: None,
        reminder: None,
    };
    let id = context.id.to_owned();
    let key = |suffix: &str| format!("{}:{}:{suffix}", id, context.sequence);
    let notify = |to: Recipient, notice: Notice, plan: &mut Plan| {
        for job in notify_jobs(context, after, provider, to, &notice, &key("notify")) {
            plan.queue(job);
        }
    };
    match event {
        E::Booked { at, .. } => {
            notify(
                Recipient::Provider,
                base(NotificationKind::NewRequest),
                plan,
            );
            let due = (*at + chrono_duration(context.config.accept_deadline)).min(starts_at);
            plan.queue(deadline_job(context, ExpiryCause::NotAcceptedInTime, due));
        }
        E::Accepted { .. } => {
            notify(Recipient::Patient, base(NotificationKind::Accepted), plan);
            plan.cancel(&id, JobKind::Deadline);
            if after.payment != PaymentStatus::Paid && after.status == Status::Accepted {
                plan.queue(deadline_job(context, ExpiryCause::UnpaidAtStart, starts_at));
            }
        }
        E::Declined { .. } => {
            let mut notice = base(NotificationKind::Declined);
            notice.refund = Some(if before.payment == PaymentStatus::Paid {
                RefundNote::Full
            } else {
                RefundNote::NotPaid
            });
            notify(Recipient::Patient, notice, plan);
        }
        E::PaymentConfirmed {
            amount_minor,
            currency,
            ..
        } => {
            let mut notice = base(NotificationKind::PaymentReceipt);
            notice.amount_minor = Some(*amount_minor);
            notice.currency = Some(currency.clone());
            notify(Recipient::Patient, notice, plan);
        }
        E::Rescheduled {
            previous_starts_at, ..
        } => {
            let mut notice = base(NotificationKind::Rescheduled);
            notice.previous_starts_at = Some(*previous_starts_at);
            notify(Recipient::Patient, notice.clone(), plan);
            notify(Recipient::Provider, notice, plan);
            // Timers follow the new start: the old ones go, new ones come.
            plan.cancel(&id, JobKind::Reminder);
            plan.cancel(&id, JobKind::Deadline);
            match after.status {
                Status::Requested => {
                    let booked = before.updated_at.unwrap_or(context.now);
                    let due =
                        (booked + chrono_duration(context.config.accept_deadline)).min(starts_at);
                    plan.queue(deadline_job(context, ExpiryCause::NotAcceptedInTime, due));
                }
                Status::Accepted if after.payment != PaymentStatus::Paid => {
                    plan.queue(deadline_job(context, ExpiryCause::UnpaidAtStart, starts_at));
                }
                _ => {}
            }
        }
        E::Cancelled { by, refund, .. } => {
            let mut notice = base(NotificationKind::Cancelled);
            notice.refund = match refund {
                RefundDue::Full => Some(RefundNote::Full),
                RefundDue::NoneLate => Some(RefundNote::Late),
                RefundDue::NotDue if before.payment == PaymentStatus::Unpaid => {
                    Some(RefundNote::NotPaid)
                }
                RefundDue::NotDue => None,
            };
            notice.cancelled_by = Some(*by);
            notify(Recipient::Patient, notice.clone(), plan);
            notify(Recipient::Provider, notice, plan);
        }
        E::Expired { cause, .. } => {
            let mut notice = base(NotificationKind::Expired);
            notice.expiry = Some(*cause);
            notify(Recipient::Patient, notice, plan);
        }
        _ => {}
    }
    if matches!(
        after.status,
        Status::Declined | Status::Cancelled | Status::Expired
    ) && before.status != after.status
    {
        plan.cancel(&id, JobKind::Reminder);
        plan.cancel(&id, JobKind::Deadline);
    }
    let confirmed_now = after.status == Status::Confirmed
        && (before.status != Status::Confirmed || matches!(event, E::Rescheduled { .. }));
    if confirmed_now {
        plan.cancel(&id, JobKind::Deadline);
        reminder_jobs(context, starts_at, plan);
    }
}

pub(crate) fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// The event-specific facts of a notification.
#[derive(Debug, Clone)]
pub(crate) struct Notice {
    pub kind: NotificationKind,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub previous_starts_at: Option<DateTime<Utc>>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub refund: Option<RefundNote>,
    pub cancelled_by: Option<Canceller>,
    pub expiry: Option<ExpiryCause>,
    /// Offset, whether it is the last reminder, by email, by text.
    pub reminder: Option<(Duration, bool, bool, bool)>,
}

fn deadline_job(context: &Context<'_>, cause: ExpiryCause, due: DateTime<Utc>) -> NewJob {
    let tag = match cause {
        ExpiryCause::NotAcceptedInTime => "accept",
        ExpiryCause::UnpaidAtStart => "payment",
    };
    NewJob {
        id: uuid::Uuid::new_v4().to_string(),
        key: format!(
            "deadline:{}:{}:{tag}:{}",
            context.id,
            context.sequence,
            millis(due)
        ),
        kind: JobKind::Deadline,
        consultation_id: context.id.to_owned(),
        payload: serde_json::json!(DeadlinePayload { cause, due_at: due }),
        due_at_ms: millis(due),
        max_attempts: context.config.max_attempts,
    }
}

fn reminder_jobs(context: &Context<'_>, starts_at: DateTime<Utc>, plan: &mut Plan) {
    let last = context.config.reminders.iter().map(|r| r.offset).min();
    for spec in &context.config.reminders {
        let due = starts_at - chrono_duration(spec.offset);
        if due <= context.now {
            // Too late for this one already.
            continue;
        }
        let payload = ReminderPayload {
            offset_secs: spec.offset.as_secs(),
            is_final: Some(spec.offset) == last,
            email: spec.email,
            text: spec.text,
            starts_at,
        };
        plan.queue(NewJob {
            id: uuid::Uuid::new_v4().to_string(),
            key: format!(
                "reminder:{}:{}:{}:{}",
                context.id,
                context.sequence,
                spec.offset.as_secs(),
                millis(starts_at)
            ),
            kind: JobKind::Reminder,
            consultation_id: context.id.to_owned(),
            payload: serde_json::json!(payload),
            due_at_ms: millis(due),
            max_attempts: context.config.max_attempts,
        });
    }
}

/// One notify job per channel the recipient can be reached on.
fn notify_jobs(
    context: &Context<'_>,
    state: &Consultation,
    provider: Option<&ProviderProfile>,
    to: Recipient,
    notice: &Notice,
    key: &str,
) -> Vec<NewJob> {
    let Some(booking) = state.booking.as_ref() else {
        return Vec::new();
    };
    let provider_name = provider.map_or_else(String::new, |p| p.name.as_str().to_owned());
    // Where the recipient can be reached, and in which time zone.
    let (email, phone, whatsapp, timezone) = match to {
        Recipient::Patient => (
            booking
                .contact
                .email
                .as_ref()
                .map(|e| e.as_str().to_owned()),
            booking
                .contact
                .phone
                .as_ref()
                .map(|p| p.as_str().to_owned()),
            booking.contact.whatsapp,
            booking.timezone,
        ),
        Recipient::Provider => match provider {
            Some(p) => (
                Some(p.email.as_str().to_owned()),
                Some(p.phone.as_str().to_owned()),
                false,
                p.timezone,
            ),
            None => {
                tracing::warn!(consultation = context.id, "provider unknown: not notified");
                return Vec::new();
            }
        },
    };
    let (want_email, want_text) = match notice.reminder {
        Some((_, _, email, text)) => (email, text),
        None => (true, true),
    };
    let mut targets = Vec::new();
    if want_email {
        if let Some(email) = email {
            targets.push((ChannelKind::Email, email));
        }
    }
    if want_text {
        if let Some(phone) = phone {
            let channel = if whatsapp {
                ChannelKind::Whatsapp
            } else {
                ChannelKind::Sms
            };
            targets.push((channel, phone));
        }
    }
    targets
        .into_iter()
        .map(|(channel, address)| {
            let payload = NotifyPayload {
                recipient: to,
                kind: notice.kind,
                channel,
                to: address,
                timezone,
                provider_name: provider_name.clone(),
                mode: booking.mode,
                starts_at: notice.starts_at,
                ends_at: notice.ends_at,
                previous_starts_at: notice.previous_starts_at,
                amount_minor: notice.amount_minor,
                currency: notice.currency.clone(),
                refund: notice.refund,
                cancelled_by: notice.cancelled_by,
                expiry: notice.expiry,
                reminder_offset_secs: notice.reminder.map(|r| r.0.as_secs()),
                reminder_is_final: notice.reminder.is_some_and(|r| r.1),
                sender: match to {
                    Recipient::Patient => booking.provider_id.as_str().to_owned(),
                    Recipient::Provider => booking.patient_id.as_str().to_owned(),
                },
            };
            NewJob {
                id: uuid::Uuid::new_v4().to_string(),
                key: format!("{key}:{}:{}", to.as_str(), channel.as_str()),
                kind: JobKind::Notify,
                consultation_id: context.id.to_owned(),
                payload: serde_json::json!(payload),
                due_at_ms: millis(context.now),
                max_attempts: context.config.max_attempts,
            }
        })
        .collect()
}

/// The jobs a reminder timer queues when it fires: the reminder's sends to both parties.
pub(crate) fn reminder_sends(
    config: &NotificationsConfig,
    id: &str,
    state: &Consultation,
    provider: Option<&ProviderProfile>,
    reminder: &ReminderPayload,
    now: DateTime<Utc>,
) -> Vec<NewJob> {
    let (Some(starts_at), Some(ends_at)) = (state.starts_at(), state.ends_at()) else {
        return Vec::new();
    };
    let context = Context {
        config,
        id,
        sequence: 0,
        now,
    };
    let notice = Notice {
        kind: NotificationKind::Reminder,
        starts_at,
        ends_at,
        previous_starts_at: None,
        amount_minor: None,
        currency: None,
        refund: None,
        cancelled_by: None,
        expiry: None,
        reminder: Some((
            Duration::from_secs(reminder.offset_secs),
            reminder.is_final,
            reminder.email,
            reminder.text,
        )),
    };
    let key = format!(
        "{id}:reminder:{}:{}:notify",
        reminder.offset_secs,
        millis(reminder.starts_at)
    );
    let mut jobs = notify_jobs(&context, state, provider, Recipient::Patient, &notice, &key);
    jobs.extend(notify_jobs(
        &context,
        state,
        provider,
        Recipient::Provider,
        &notice,
        &key,
    ));
    jobs
}

/// Loads what a timer needs: the consultation now and its provider's profile.
pub(crate) async fn load_for_timer(
    tx: &mut Tx<'_>,
    id: &str,
) -> Result<(Consultation, Option<ProviderProfile>), HandlerError> {
    let state = events::consultation_before(tx, id, i64::MAX).await?;
    let provider_id = state
        .booking
        .as_ref()
        .map(|b| b.provider_id.as_str().to_owned())
        .unwrap_or_default();
    let provider = events::provider_profile(tx, &provider_id).await?;
    Ok((state, provider))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reminders_parse_with_channels_and_refuse_nonsense() {
        let specs = parse_reminders("24h:email,1h:sms,15m:sms+email").expect("default");
        assert_eq!(
            specs,
            vec![
                ReminderSpec {
                    offset: Duration::from_secs(86_400),
                    email: true,
                    text: false
                },
                ReminderSpec {
                    offset: Duration::from_secs(3600),
                    email: false,
                    text: true
                },
                ReminderSpec {
                    offset: Duration::from_secs(900),
                    email: true,
                    text: true
                },
            ]
        );
        assert_eq!(
            parse_reminders("5s:email").expect("seconds")[0].offset,
            Duration::from_secs(5)
        );
        assert!(parse_reminders("24x:email").is_err());
        assert!(parse_reminders("24h:pigeon").is_err());
        assert!(parse_reminders("24h").is_err());
        assert!(parse_reminders("0m:email").is_err());
    }

    #[test]
    fn recipient_keys_ignore_case_and_spaces() {
        assert_eq!(
            recipient_key("Jane@Example.org "),
            recipient_key("jane@example.org")
        );
        assert_ne!(
            recipient_key("a@example.org"),
            recipient_key("b@example.org")
        );
    }
}
