//! Voice calls behind one small trait: place an outbound call whose instructions (TwiML) the
//! provider fetches from our webhook. Twilio Programmable Voice is the implementation
//! (`twilio.rs`).

use std::fmt;

use consult_store::BoxFuture;

use crate::channels::SendError;

pub mod twilio;

/// A call to place.
#[derive(Clone, PartialEq, Eq)]
pub struct CallRequest {
    /// The number to ring (E.164): the participant who asked for the call.
    pub to: String,
    /// Where the provider fetches the call's instructions (our TwiML webhook, full URL).
    pub instructions_url: String,
    /// Where the provider reports the call's progress (full URL).
    pub status_callback: String,
}

/// Holds a phone number: `Debug` masks it.
impl fmt::Debug for CallRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallRequest")
            .field("to", &crate::channels::mask(&self.to))
            .field("instructions_url", &self.instructions_url)
            .field("status_callback", &self.status_callback)
            .finish()
    }
}

/// The call as the provider took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedCall {
    /// The provider's id (Twilio `CA…`).
    pub sid: String,
    /// The provider's status at creation (`queued`).
    pub status: String,
}

/// A voice provider.
pub trait VoiceProvider: Send + Sync + fmt::Debug + 'static {
    /// Our number, shown to both parties as the caller.
    fn caller_id(&self) -> &str;

    /// Places the call. Providers have no idempotency key for calls: a retry after a timeout
    /// may ring twice, so callers retry only errors where the provider surely took nothing.
    fn place_call<'a>(
        &'a self,
        request: &'a CallRequest,
    ) -> BoxFuture<'a, Result<PlacedCall, SendError>>;
}
