//! Video rooms behind one small trait. A provider creates a room, ends it, and mints the
//! access token a participant joins with. Twilio Video is the first implementation
//! (`twilio.rs`); a second provider is one more file implementing [`VideoProvider`] and one line
//! where the binary picks the provider (`VIDEO_PROVIDER`).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use consult_store::BoxFuture;

use crate::channels::SendError;

pub mod console;
pub mod token;
pub mod twilio;

/// A room to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRequest {
    /// Random and unguessable; fixed when the job is queued, so a retry asks for the same room.
    pub name: String,
    /// Where the provider reports room and participant events (a full URL), if it can.
    pub status_callback: Option<String>,
}

/// A room the provider holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedRoom {
    pub name: String,
    /// The provider's own id for it (Twilio `RM…`), when it has one.
    pub sid: Option<String>,
}

/// What a participant's access token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessGrant {
    /// The participant's id in this engine (patient or provider id); never a name or a phone.
    pub identity: String,
    /// The room's name.
    pub room: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A video provider.
pub trait VideoProvider: Send + Sync + fmt::Debug + 'static {
    /// Short name recorded with each room (`twilio`, `console`).
    fn name(&self) -> &'static str;

    /// How long before a consultation's start its room may be created; `None` if a room can
    /// be created at any time and lives until it is ended. Twilio closes a room nobody joined
    /// after at most 60 minutes, so its rooms are created shortly before the start.
    fn provision_lead(&self) -> Option<Duration>;

    /// Creates the room. Asking again for a room of the same name that is still open succeeds
    /// with that room (retries and redeliveries create nothing twice).
    fn create_room<'a>(
        &'a self,
        request: &'a RoomRequest,
    ) -> BoxFuture<'a, Result<CreatedRoom, SendError>>;

    /// Ends the room (by sid when known, else by name). A room that has ended already, or that
    /// the provider no longer knows, counts as ended.
    fn end_room<'a>(
        &'a self,
        name: &'a str,
        sid: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), SendError>>;

    /// A signed access token for one participant of one room; `Err` if this provider cannot
    /// mint tokens (no credentials).
    fn access_token(&self, grant: &AccessGrant) -> Result<String, TokenUnavailable>;
}

/// Why no token could be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenUnavailable(pub String);
