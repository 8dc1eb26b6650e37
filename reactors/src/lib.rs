//! Side effects of consultation events, durable and visible: a reactor subscription turns events
//! into jobs (notifications, reminder and deadline timers, video rooms, phone calls, refunds) in the transaction that moves its
//! checkpoint, and a dispatcher runs due jobs with retries, backoff and a dead-letter state.

pub mod channels;
pub mod dispatch;
pub mod messages;
pub mod notifications;
pub mod outcome;
pub mod payments;
pub mod refunds;
pub mod room_jobs;
pub mod rooms;
pub mod twilio_signature;
pub mod video;
pub mod voice;

pub use dispatch::{Channels, Dispatcher, DispatcherOptions, FloodGuard};
pub use notifications::{parse_reminders, NotificationsConfig, NotificationsReactor, ReminderSpec};
pub use refunds::{Refunds, RefundsReactor};
pub use room_jobs::Media;
pub use rooms::{RoomsConfig, RoomsReactor};
