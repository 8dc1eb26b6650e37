//! The embedded default when no video provider is configured: rooms are "created" and
//! "ended" in the outbox file only, so the whole lifecycle (RoomProvisioned, RoomEnded) can be
//! watched without credentials. It cannot mint access tokens: nobody can join its rooms.

use std::time::Duration;

use consult_store::BoxFuture;

use super::{AccessGrant, CreatedRoom, RoomRequest, TokenUnavailable, VideoProvider};
use crate::channels::console::ConsoleSink;
use crate::channels::SendError;

/// Rooms written to the outbox file.
#[derive(Debug, Clone)]
pub struct ConsoleVideo {
    outbox: ConsoleSink,
}

impl ConsoleVideo {
    pub fn new(outbox: ConsoleSink) -> Self {
        Self { outbox }
    }
}

impl VideoProvider for ConsoleVideo {
    fn name(&self) -> &'static str {
        "console"
    }

    fn provision_lead(&self) -> Option<Duration> {
        None
    }

    fn create_room<'a>(
        &'a self,
        request: &'a RoomRequest,
    ) -> BoxFuture<'a, Result<CreatedRoom, SendError>> {
        Box::pin(async move {
            self.outbox
                .record(&serde_json::json!({
                    "video": "room created",
                    "room": request.name,
                }))
                .await?;
            Ok(CreatedRoom {
                name: request.name.clone(),
                sid: None,
            })
        })
    }

    fn end_room<'a>(
        &'a self,
        name: &'a str,
        _sid: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            self.outbox
                .record(&serde_json::json!({ "video": "room ended", "room": name }))
                .await
        })
    }

    fn access_token(&self, _grant: &AccessGrant) -> Result<String, TokenUnavailable> {
        Err(TokenUnavailable(
            "no video provider is configured (set TWILIO_API_KEY and TWILIO_API_SECRET)".into(),
        ))
    }
}
