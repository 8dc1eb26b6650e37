//! The consultation domain: aggregates, commands, events, the state machine and validated
//! inputs. Pure: no I/O, no clock, no randomness. Time and ids arrive inside commands.

pub mod consultation;
pub mod provider;
pub mod upcast;
pub mod values;

pub use consultation::{
    Action, Booking, CallChannel, Canceller, Consultation, ConsultationCommand, ConsultationError,
    ConsultationEvent, ExpiryCause, Mode, Party, PaymentStatus, RefundDue, Room, RoomEndReason,
    Rule, Status,
};
pub use provider::{Provider, ProviderCommand, ProviderError, ProviderEvent, ProviderProfile};
pub use values::{
    BoundedText, Contact, DurationMinutes, EmailAddress, InvalidInput, Money, PatientId,
    PhoneNumber, ProviderId, StartTime, TimeZone,
};
