//! The consultation aggregate: its commands, events, states and the pure decision function.

use std::fmt;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{
    BoundedText, Contact, DurationMinutes, Money, PatientId, ProviderId, StartTime, TimeZone,
};

/// How the two parties meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Video,
    Voice,
    Messaging,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Video => "video",
            Self::Voice => "voice",
            Self::Messaging => "messaging",
        }
    }
}

/// Where a consultation is in its life. `Accepted` means accepted but not yet paid; a paid
/// request stays `Requested` until the provider accepts. Both together make it `Confirmed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Nothing was booked under this id.
    #[default]
    New,
    Requested,
    Accepted,
    Confirmed,
    InProgress,
    Completed,
    Declined,
    Cancelled,
    Expired,
    NoShow,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Requested => "requested",
            Self::Accepted => "accepted",
            Self::Confirmed => "confirmed",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Declined => "declined",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::NoShow => "no_show",
        }
    }

    /// Whether the consultation still lies ahead: it can be rescheduled or cancelled.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Requested | Self::Accepted | Self::Confirmed)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payment that runs alongside the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    #[default]
    Unpaid,
    Paid,
    Failed,
    RefundPending,
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unpaid => "unpaid",
            Self::Paid => "paid",
            Self::Failed => "failed",
            Self::RefundPending => "refund_pending",
            Self::Refunded => "refunded",
        }
    }
}

/// Who did something to a consultation, as far as the domain cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    Patient,
    Provider,
}

/// Who cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Canceller {
    Patient,
    Provider,
    Admin,
}

/// Why a consultation expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryCause {
    NotAcceptedInTime,
    UnpaidAtStart,
}

/// How a call was carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallChannel {
    Video,
    Voice,
}

/// What a booking fixes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booking {
    pub consultation_id: Uuid,
    pub patient_id: PatientId,
    pub provider_id: ProviderId,
    pub starts_at: StartTime,
    pub duration: DurationMinutes,
    pub mode: Mode,
    pub timezone: TimeZone,
    pub contact: Contact,
    /// Medical information: stored and shown to participants and auditors, never logged and
    /// never sent over SMS/WhatsApp or in an email subject.
    pub reason: Option<BoundedText>,
    /// The provider's fee when booked: a payment must match it to confirm the consultation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Money>,
}

/// What a cancellation does to the payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundDue {
    /// Nothing was paid (or, for a cancellation recorded before version 2.0, nothing was
    /// decided).
    NotDue,
    /// Refunded in full: cancelled by the provider or the clinic, or by the patient at least
    /// the notice period before the start.
    Full,
    /// Not refunded: the patient cancelled later than the notice period (a late cancellation).
    NoneLate,
}

/// A video room attached to the consultation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    /// Random and unguessable: knowing it is not enough to join (that takes a token).
    pub name: String,
    /// Which video adapter holds it (`twilio`, `console`).
    pub provider: String,
    /// The provider's own id for the room (Twilio `RM…`), when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The start the room was created for; a provider whose rooms close on their own gets a
    /// new one when the consultation moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_start: Option<DateTime<Utc>>,
}

/// Why a room was ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomEndReason {
    /// The consultation completed, was cancelled, or ended otherwise.
    ConsultationEnded,
    /// The consultation's end plus the grace period passed.
    TimeUp,
    /// The consultation moved and the provider's rooms do not wait that long.
    Rescheduled,
    /// The provider closed it (empty or unused too long).
    ClosedByProvider,
}

/// Everything one can ask of a consultation. `at` is the caller's clock: decisions never read
/// the time themselves.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsultationCommand {
    Book {
        booking: Booking,
        at: DateTime<Utc>,
    },
    Accept {
        at: DateTime<Utc>,
    },
    Decline {
        reason: BoundedText,
        at: DateTime<Utc>,
    },
    ConfirmPayment {
        payment_id: String,
        amount_minor: i64,
        currency: String,
        at: DateTime<Utc>,
    },
    FailPayment {
        payment_id: String,
        at: DateTime<Utc>,
    },
    RecordRefund {
        payment_id: String,
        amount_minor: i64,
        at: DateTime<Utc>,
    },
    Reschedule {
        starts_at: StartTime,
        duration: Option<DurationMinutes>,
        by: Party,
        at: DateTime<Utc>,
    },
    Cancel {
        by: Canceller,
        reason: BoundedText,
        /// The cancellation policy: a patient cancelling less than this before the start is
        /// not refunded.
        refund_notice: chrono::Duration,
        at: DateTime<Utc>,
    },
    /// Records that the payment provider took a refund request.
    RecordRefundRequest {
        payment_id: String,
        refund_id: String,
        at: DateTime<Utc>,
    },
    Expire {
        cause: ExpiryCause,
        at: DateTime<Utc>,
    },
    ProvisionRoom {
        room: Room,
        at: DateTime<Utc>,
    },
    /// Records that the room called `name` has ended.
    EndRoom {
        name: String,
        reason: RoomEndReason,
        at: DateTime<Utc>,
    },
    /// A participant asks to be connected by phone to the other.
    RequestCall {
        call_id: Uuid,
        by: Party,
        at: DateTime<Utc>,
    },
    StartCall {
        via: CallChannel,
        at: DateTime<Utc>,
    },
    EndCall {
        duration_seconds: u32,
        at: DateTime<Utc>,
    },
    Complete {
        at: DateTime<Utc>,
    },
    RecordNoShow {
        party: Party,
        at: DateTime<Utc>,
    },
}

/// The action a command attempts, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Book,
    Accept,
    Decline,
    ConfirmPayment,
    FailPayment,
    RecordRefund,
    Reschedule,
    Cancel,
    RecordRefundRequest,
    Expire,
    ProvisionRoom,
    EndRoom,
    RequestCall,
    StartCall,
    EndCall,
    Complete,
    RecordNoShow,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Book => "book",
            Self::Accept => "accept",
            Self::Decline => "decline",
            Self::ConfirmPayment => "confirm payment of",
            Self::FailPayment => "record a failed payment of",
            Self::RecordRefund => "record a refund of",
            Self::Reschedule => "reschedule",
            Self::Cancel => "cancel",
            Self::RecordRefundRequest => "record a refund request for",
            Self::Expire => "expire",
            Self::ProvisionRoom => "provision a room for",
            Self::EndRoom => "end the room of",
            Self::RequestCall => "request a call for",
            Self::StartCall => "start the call of",
            Self::EndCall => "end the call of",
            Self::Complete => "complete",
            Self::RecordNoShow => "record a no-show of",
        })
    }
}

impl ConsultationCommand {
    pub fn action(&self) -> Action {
        match self {
            Self::Book { .. } => Action::Book,
            Self::Accept { .. } => Action::Accept,
            Self::Decline { .. } => Action::Decline,
            Self::ConfirmPayment { .. } => Action::ConfirmPayment,
            Self::FailPayment { .. } => Action::FailPayment,
            Self::RecordRefund { .. } => Action::RecordRefund,
            Self::Reschedule { .. } => Action::Reschedule,
            Self::Cancel { .. } => Action::Cancel,
            Self::RecordRefundRequest { .. } => Action::RecordRefundRequest,
            Self::Expire { .. } => Action::Expire,
            Self::ProvisionRoom { .. } => Action::ProvisionRoom,
            Self::EndRoom { .. } => Action::EndRoom,
            Self::RequestCall { .. } => Action::RequestCall,
            Self::StartCall { .. } => Action::StartCall,
            Self::EndCall { .. } => Action::EndCall,
            Self::Complete { .. } => Action::Complete,
            Self::RecordNoShow { .. } => Action::RecordNoShow,
        }
    }
}

/// A rule that refused an action the state alone would allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The consultation's start has passed.
    StartPassed,
    /// The consultation has not started yet.
    NotStarted,
    /// Only video consultations get rooms.
    NotVideo,
    /// A room exists already.
    RoomExists,
    /// The consultation is paid already.
    AlreadyPaid,
    /// There is no payment to refund.
    NotPaid,
    /// The call has ended already.
    CallEnded,
    /// Only voice consultations get phone calls.
    NotVoice,
    /// It has no open room by that name.
    NoSuchRoom,
    /// No refund is due, or one was requested already.
    NoRefundDue,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::StartPassed => "its start has passed",
            Self::NotStarted => "it has not started yet",
            Self::NotVideo => "it is not a video consultation",
            Self::RoomExists => "it has a room already",
            Self::AlreadyPaid => "it is paid already",
            Self::NotPaid => "it has no payment to refund",
            Self::CallEnded => "its call has ended already",
            Self::NotVoice => "it is not a voice consultation",
            Self::NoSuchRoom => "it has no open room by that name",
            Self::NoRefundDue => "no refund is due or one was requested already",
        })
    }
}

/// Every refusal names the state the consultation is in and the action that was attempted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsultationError {
    #[error("cannot {action} a consultation that is {state}")]
    InvalidTransition { action: Action, state: Status },
    #[error("cannot {action} a consultation that is {state}: {rule}")]
    Refused {
        action: Action,
        state: Status,
        rule: Rule,
    },
}

/// What happened to a consultation. Persisted: change only through a new variant or an
/// upcaster, never by renaming or reshaping one in place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ConsultationEvent {
    Booked {
        booking: Booking,
        at: DateTime<Utc>,
    },
    /// Carries the provider and slot so that the database can keep the provider's calendar
    /// free of overlaps in the same transaction that stores this event.
    Accepted {
        provider_id: ProviderId,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    Declined {
        reason: BoundedText,
        at: DateTime<Utc>,
    },
    PaymentConfirmed {
        payment_id: String,
        amount_minor: i64,
        currency: String,
        at: DateTime<Utc>,
    },
    PaymentFailed {
        payment_id: String,
        at: DateTime<Utc>,
    },
    /// A payment whose amount or currency differs from the price: recorded, but it does not
    /// pay for the consultation; an admin must look at it.
    PaymentFlagged {
        payment_id: String,
        amount_minor: i64,
        currency: String,
        expected: Money,
        at: DateTime<Utc>,
    },
    /// The payment provider took a refund request (the refund itself is `Refunded`).
    RefundRequested {
        payment_id: String,
        refund_id: String,
        at: DateTime<Utc>,
    },
    Refunded {
        payment_id: String,
        amount_minor: i64,
        at: DateTime<Utc>,
    },
    Rescheduled {
        provider_id: ProviderId,
        previous_starts_at: DateTime<Utc>,
        starts_at: StartTime,
        ends_at: DateTime<Utc>,
        duration: DurationMinutes,
        by: Party,
        at: DateTime<Utc>,
    },
    Cancelled {
        by: Canceller,
        reason: BoundedText,
        /// What happens to the payment. Added in version 2.0 (see `upcast`).
        refund: RefundDue,
        at: DateTime<Utc>,
    },
    Expired {
        cause: ExpiryCause,
        at: DateTime<Utc>,
    },
    RoomProvisioned {
        room: Room,
        at: DateTime<Utc>,
    },
    RoomEnded {
        name: String,
        reason: RoomEndReason,
        at: DateTime<Utc>,
    },
    CallRequested {
        call_id: Uuid,
        by: Party,
        at: DateTime<Utc>,
    },
    CallStarted {
        via: CallChannel,
        at: DateTime<Utc>,
    },
    CallEnded {
        duration_seconds: u32,
        at: DateTime<Utc>,
    },
    Completed {
        at: DateTime<Utc>,
    },
    NoShowRecorded {
        party: Party,
        at: DateTime<Utc>,
    },
}

impl ConsultationEvent {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Booked { .. } => "Booked",
            Self::Accepted { .. } => "Accepted",
            Self::Declined { .. } => "Declined",
            Self::PaymentConfirmed { .. } => "PaymentConfirmed",
            Self::PaymentFailed { .. } => "PaymentFailed",
            Self::PaymentFlagged { .. } => "PaymentFlagged",
            Self::RefundRequested { .. } => "RefundRequested",
            Self::Refunded { .. } => "Refunded",
            Self::Rescheduled { .. } => "Rescheduled",
            Self::Cancelled { .. } => "Cancelled",
            Self::Expired { .. } => "Expired",
            Self::RoomProvisioned { .. } => "RoomProvisioned",
            Self::RoomEnded { .. } => "RoomEnded",
            Self::CallRequested { .. } => "CallRequested",
            Self::CallStarted { .. } => "CallStarted",
            Self::CallEnded { .. } => "CallEnded",
            Self::Completed { .. } => "Completed",
            Self::NoShowRecorded { .. } => "NoShowRecorded",
        }
    }

    /// When the fact happened, by the clock of whoever issued the command.
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Self::Booked { at, .. }
            | Self::Accepted { at, .. }
            | Self::Declined { at, .. }
            | Self::PaymentConfirmed { at, .. }
            | Self::PaymentFailed { at, .. }
            | Self::PaymentFlagged { at, .. }
            | Self::RefundRequested { at, .. }
            | Self::Refunded { at, .. }
            | Self::Rescheduled { at, .. }
            | Self::Cancelled { at, .. }
            | Self::Expired { at, .. }
            | Self::RoomProvisioned { at, .. }
            | Self::RoomEnded { at, .. }
            | Self::CallRequested { at, .. }
            | Self::CallStarted { at, .. }
            | Self::CallEnded { at, .. }
            | Self::Completed { at, .. }
            | Self::NoShowRecorded { at, .. } => *at,
        }
    }
}

impl DomainEvent for ConsultationEvent {
    fn event_type(&self) -> String {
        self.name().to_owned()
    }

    fn event_version(&self) -> String {
        crate::upcast::current_version(self.name()).to_owned()
    }
}

/// The consultation as its events make it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Consultation {
    pub booking: Option<Booking>,
    pub status: Status,
    pub payment: PaymentStatus,
    /// The provider's id of the payment that paid for it.
    #[serde(default)]
    pub payment_id: Option<String>,
    /// Whether a payment was flagged (amount or currency not the price).
    #[serde(default)]
    pub payment_flagged: bool,
    /// The provider's id of the refund requested, once it took the request.
    #[serde(default)]
    pub refund_id: Option<String>,
    pub room: Option<Room>,
    /// Whether `room` has ended (it stays for the record).
    #[serde(default)]
    pub room_ended: bool,
    pub call_started: bool,
    pub call_ended: bool,
    /// When the last event happened.
    pub updated_at: Option<DateTime<Utc>>,
    /// How many events the stream holds; the stream's last sequence number.
    pub version: u64,
}

impl Consultation {
    pub fn starts_at(&self) -> Option<DateTime<Utc>> {
        self.booking.as_ref().map(|b| b.starts_at.instant())
    }

    /// A consultation that ends paid but not held owes the payment back.
    fn refund_if_paid(&mut self) {
        if self.payment == PaymentStatus::Paid {
            self.payment = PaymentStatus::RefundPending;
        }
    }

    /// The room participants can join now, if any.
    pub fn open_room(&self) -> Option<&Room> {
        self.room.as_ref().filter(|_| !self.room_ended)
    }

    pub fn ends_at(&self) -> Option<DateTime<Utc>> {
        self.booking
            .as_ref()
            .map(|b| b.starts_at.instant() + b.duration.as_duration())
    }

    /// The pure decision: which events a command produces in this state, or why it is refused.
    pub fn decide(
        &self,
        command: ConsultationCommand,
    ) -> Result<Vec<ConsultationEvent>, ConsultationError> {
        use ConsultationCommand as C;
        use ConsultationEvent as E;
        use Status as S;

        let action = command.action();
        let state = self.status;
        let invalid = || ConsultationError::InvalidTransition { action, state };
        let refused = |rule| ConsultationError::Refused {
            action,
            state,
            rule,
        };
        // Every command but Book needs a booking; Book needs none.
        let booking = match (&command, &self.booking) {
            (C::Book { booking, at }, None) => {
                return Ok(vec![E::Booked {
                    booking: booking.clone(),
                    at: *at,
                }]);
            }
            (C::Book { .. }, Some(_)) | (_, None) => return Err(invalid()),
            (_, Some(booking)) => booking,
        };
        let starts_at = booking.starts_at.instant();
        let ends_at = starts_at + booking.duration.as_duration();

        let event = match command {
            C::Book { .. } => return Err(invalid()),
            C::Accept { at } => match state {
                S::Requested if at >= starts_at => return Err(refused(Rule::StartPassed)),
                S::Requested => E::Accepted {
                    provider_id: booking.provider_id.clone(),
                    starts_at,
                    ends_at,
                    at,
                },
                _ => return Err(invalid()),
            },
            C::Decline { reason, at } => match state {
                S::Requested => E::Declined { reason, at },
                _ => return Err(invalid()),
            },
            C::ConfirmPayment {
                payment_id,
                amount_minor,
                currency,
                at,
            } => match (state, self.payment) {
                (S::Requested | S::Accepted, PaymentStatus::Unpaid | PaymentStatus::Failed) => {
                    match &booking.price {
                        Some(price) if !price.matches(amount_minor, &currency) => {
                            E::PaymentFlagged {
                                payment_id,
                                amount_minor,
                                currency,
                                expected: price.clone(),
                                at,
                            }
                        }
                        _ => E::PaymentConfirmed {
                            payment_id,
                            amount_minor,
                            currency,
                            at,
                        },
                    }
                }
                (S::Requested | S::Accepted, _) => return Err(refused(Rule::AlreadyPaid)),
                _ => return Err(invalid()),
            },
            C::FailPayment { payment_id, at } => match (state, self.payment) {
                (S::Requested | S::Accepted, PaymentStatus::Unpaid | PaymentStatus::Failed) => {
                    E::PaymentFailed { payment_id, at }
                }
                (S::Requested | S::Accepted, _) => return Err(refused(Rule::AlreadyPaid)),
                _ => return Err(invalid()),
            },
            C::RecordRefund {
                payment_id,
                amount_minor,
                at,
            } => match self.payment {
                PaymentStatus::Paid | PaymentStatus::RefundPending => E::Refunded {
                    payment_id,
                    amount_minor,
                    at,
                },
                _ => return Err(refused(Rule::NotPaid)),
            },
            C::Reschedule {
                starts_at: new_start,
                duration,
                by,
                at,
            } => {
                if !state.is_open() {
                    return Err(invalid());
                }
                if at >= starts_at {
                    return Err(refused(Rule::StartPassed));
                }
                let duration = duration.unwrap_or(booking.duration);
                if new_start == booking.starts_at && duration == booking.duration {
                    // Asking for the slot it already has changes nothing.
                    return Ok(Vec::new());
                }
                E::Rescheduled {
                    provider_id: booking.provider_id.clone(),
                    previous_starts_at: starts_at,
                    starts_at: new_start,
                    ends_at: new_start.instant() + duration.as_duration(),
                    duration,
                    by,
                    at,
                }
            }
            C::Cancel {
                by,
                reason,
                refund_notice,
                at,
            } if state.is_open() => {
                let refund = match by {
                    _ if self.payment != PaymentStatus::Paid => RefundDue::NotDue,
                    Canceller::Patient if at > starts_at - refund_notice => RefundDue::NoneLate,
                    _ => RefundDue::Full,
                };
                E::Cancelled {
                    by,
                    reason,
                    refund,
                    at,
                }
            }
            C::RecordRefundRequest {
                payment_id,
                refund_id,
                at,
            } => match self.payment {
                PaymentStatus::RefundPending if self.refund_id.is_none() => E::RefundRequested {
                    payment_id,
                    refund_id,
                    at,
                },
                _ => return Err(refused(Rule::NoRefundDue)),
            },
            C::Cancel { .. } => return Err(invalid()),
            C::Expire { cause, at } => match state {
                S::Requested | S::Accepted => E::Expired { cause, at },
                _ => return Err(invalid()),
            },
            C::ProvisionRoom { room, at } => match state {
                S::Confirmed | S::InProgress if booking.mode != Mode::Video => {
                    return Err(refused(Rule::NotVideo))
                }
                S::Confirmed | S::InProgress if self.open_room().is_some() => {
                    return Err(refused(Rule::RoomExists))
                }
                S::Confirmed | S::InProgress => E::RoomProvisioned { room, at },
                _ => return Err(invalid()),
            },
            // A room can end in any state: closing it is what follows a cancellation.
            C::EndRoom { name, reason, at } => match self.open_room() {
                Some(room) if room.name == name => E::RoomEnded { name, reason, at },
                _ => return Err(refused(Rule::NoSuchRoom)),
            },
            C::RequestCall { call_id, by, at } => match state {
                S::Confirmed | S::InProgress if booking.mode != Mode::Voice => {
                    return Err(refused(Rule::NotVoice))
                }
                S::Confirmed | S::InProgress => E::CallRequested { call_id, by, at },
                _ => return Err(invalid()),
            },
            C::StartCall { via, at } => match state {
                S::Confirmed => E::CallStarted { via, at },
                _ => return Err(invalid()),
            },
            C::EndCall {
                duration_seconds,
                at,
            } => match state {
                S::InProgress | S::Completed if self.call_ended => {
                    return Err(refused(Rule::CallEnded))
                }
                // The provider may complete the consultation before the call's end is reported.
                S::InProgress => E::CallEnded {
                    duration_seconds,
                    at,
                },
                S::Completed if self.call_started => E::CallEnded {
                    duration_seconds,
                    at,
                },
                _ => return Err(invalid()),
            },
            C::Complete { at } => match state {
                S::InProgress => E::Completed { at },
                S::Confirmed if at < starts_at => return Err(refused(Rule::NotStarted)),
                S::Confirmed => E::Completed { at },
                _ => return Err(invalid()),
            },
            C::RecordNoShow { party, at } => match state {
                S::Confirmed if at < starts_at => return Err(refused(Rule::NotStarted)),
                S::Confirmed => E::NoShowRecorded { party, at },
                _ => return Err(invalid()),
            },
        };
        Ok(vec![event])
    }

    /// Folds one event into the state: the write side and the read models share this.
    pub fn evolve(&mut self, event: ConsultationEvent) {
        use ConsultationEvent as E;
        use Status as S;

        self.updated_at = Some(event.at());
        self.version += 1;
        match event {
            E::Booked { booking, .. } => {
                self.booking = Some(booking);
                self.status = S::Requested;
            }
            E::Accepted { .. } => {
                self.status = if self.payment == PaymentStatus::Paid {
                    S::Confirmed
                } else {
                    S::Accepted
                };
            }
            E::Declined { .. } => {
                self.status = S::Declined;
                self.refund_if_paid();
            }
            E::PaymentConfirmed { payment_id, .. } => {
                self.payment = PaymentStatus::Paid;
                self.payment_id = Some(payment_id);
                if self.status == S::Accepted {
                    self.status = S::Confirmed;
                }
            }
            E::PaymentFailed { .. } => self.payment = PaymentStatus::Failed,
            E::PaymentFlagged { .. } => self.payment_flagged = true,
            E::RefundRequested { refund_id, .. } => self.refund_id = Some(refund_id),
            E::Refunded { .. } => self.payment = PaymentStatus::Refunded,
            E::Rescheduled {
                starts_at,
                duration,
                ..
            } => {
                if let Some(booking) = self.booking.as_mut() {
                    booking.starts_at = starts_at;
                    booking.duration = duration;
                }
            }
            E::Cancelled { refund, .. } => {
                self.status = S::Cancelled;
                if refund == RefundDue::Full {
                    self.refund_if_paid();
                }
            }
            E::Expired { .. } => {
                self.status = S::Expired;
                self.refund_if_paid();
            }
            E::RoomProvisioned { room, .. } => {
                self.room = Some(room);
                self.room_ended = false;
            }
            E::RoomEnded { .. } => self.room_ended = true,
            E::CallRequested { .. } => {}
            E::CallStarted { .. } => {
                self.call_started = true;
                self.status = S::InProgress;
            }
            E::CallEnded { .. } => self.call_ended = true,
            E::Completed { .. } => self.status = S::Completed,
            E::NoShowRecorded { .. } => self.status = S::NoShow,
        }
    }
}

impl Aggregate for Consultation {
    const TYPE: &'static str = "consultation";
    type Command = ConsultationCommand;
    type Event = ConsultationEvent;
    type Error = ConsultationError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.evolve(event);
    }
}
