//! A local sink used when a channel has no credentials (development, demos, tests).
//!
//! Every message is appended to a file as one JSON object per line:
//!
//! ```json
//! {"at":"2026-11-20T10:00:00+00:00","channel":"sms","to":"+15551234567","subject":null,"text":"…","html":null,"notification_id":"…"}
//! ```
//!
//! The file holds the full message (that is its purpose), so it must be treated like the
//! database: personal data. Tracing logs only get the channel, the masked address and the
//! notification id.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use consult_store::BoxFuture;
use serde::Serialize;
use tokio::sync::Mutex;

use super::{mask, Channel, ChannelKind, Message, SendError, Sent};

/// Appends messages as JSON lines to a local file; implements [`Channel`] for every
/// [`ChannelKind`]. Clones share the same file and lock.
#[derive(Debug, Clone)]
pub struct ConsoleSink {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

/// One line of the file.
#[derive(Serialize)]
struct Line<'a> {
    at: String,
    channel: ChannelKind,
    to: &'a str,
    subject: Option<&'a str>,
    text: &'a str,
    html: Option<&'a str>,
    notification_id: &'a str,
}

impl ConsoleSink {
    /// Opens (creating it and its parent directories if needed) the file at `path` for
    /// appending. A new file is readable by its owner only (0600, its new directories 0700),
    /// whatever the umask: it holds whole messages.
    pub fn new(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        consult_store::private_file(&path)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(Self {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// The file messages are written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event that is not a message (a video room created, say) as a JSON line
    /// with the time.
    pub async fn record(&self, event: &serde_json::Value) -> Result<(), SendError> {
        let mut line = serde_json::json!({ "at": chrono::Utc::now().to_rfc3339() });
        if let (Some(line), Some(event)) = (line.as_object_mut(), event.as_object()) {
            line.extend(event.clone());
        }
        let bytes = serde_json::to_vec(&line)
            .map_err(|error| SendError::permanent(format!("cannot encode event: {error}")))?;
        self.append(bytes).await
    }

    /// Appends one line: the lock keeps lines whole and in order; the blocking write runs off
    /// the runtime.
    async fn append(&self, mut bytes: Vec<u8>) -> Result<(), SendError> {
        bytes.push(b'\n');
        let mut file = Arc::clone(&self.file).lock_owned().await;
        let written = tokio::task::spawn_blocking(move || {
            file.write_all(&bytes)?;
            file.flush()
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(SendError::retryable(format!(
                "cannot write to the console sink file: {error}"
            ))),
            Err(_) => Err(SendError::retryable(
                "the console sink write was interrupted",
            )),
        }
    }

    async fn write(&self, message: &Message) -> Result<Sent, SendError> {
        let line = Line {
            at: chrono::Utc::now().to_rfc3339(),
            channel: message.channel,
            to: &message.to,
            subject: message.subject.as_deref(),
            text: &message.text,
            html: message.html.as_deref(),
            notification_id: &message.notification_id,
        };
        let bytes = serde_json::to_vec(&line)
            .map_err(|error| SendError::permanent(format!("cannot encode message: {error}")))?;
        self.append(bytes).await?;

        tracing::info!(
            channel = %message.channel,
            to = %mask(&message.to),
            notification_id = %message.notification_id,
            "message written to the console sink"
        );
        Ok(Sent {
            provider_message_id: Some(format!("console-{}", message.notification_id)),
        })
    }
}

impl Channel for ConsoleSink {
    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(self.write(message))
    }
}
