//! A Twilio Messages stand-in for `consult-bench`: accepts every message at once and notes when
//! each request arrived and to which number. Loopback only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

pub const ACCOUNT_SID: &str = "ACbench0000000000000000000000000";
pub const AUTH_TOKEN: &str = "bench-auth-token";

#[derive(Debug, Default)]
struct Seen {
    /// First arrival per `To`.
    by_number: HashMap<String, Instant>,
    /// Every arrival, in order.
    all: Vec<Instant>,
}

/// A running stand-in.
#[derive(Debug, Clone)]
pub struct TwilioStandIn {
    pub base_url: String,
    seen: Arc<Mutex<Seen>>,
}

impl TwilioStandIn {
    pub async fn start() -> std::io::Result<Self> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let recorder = Arc::clone(&seen);
        let app = Router::new().route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            post(move |body: Bytes| {
                let recorder = Arc::clone(&recorder);
                async move {
                    let at = Instant::now();
                    let to = form_urlencoded::parse(&body)
                        .find(|(k, _)| k == "To")
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default();
                    if let Ok(mut seen) = recorder.lock() {
                        seen.by_number.entry(to).or_insert(at);
                        seen.all.push(at);
                    }
                    let sid = format!("SM{:032x}", uuid::Uuid::new_v4().as_u128());
                    (
                        StatusCode::CREATED,
                        Json(json!({"sid": sid, "status": "queued"})),
                    )
                        .into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("bench: Twilio stand-in stopped: {err}");
            }
        });
        Ok(Self {
            base_url: format!("http://{address}"),
            seen,
        })
    }

    /// When the first message to `number` arrived.
    pub fn arrival(&self, number: &str) -> Option<Instant> {
        self.seen.lock().ok()?.by_number.get(number).copied()
    }

    /// Messages received so far.
    pub fn count(&self) -> usize {
        self.seen.lock().map_or(0, |s| s.all.len())
    }

    /// The first and last arrival after the first `skip` messages.
    pub fn span_since(&self, skip: usize) -> Option<(Instant, Instant)> {
        let seen = self.seen.lock().ok()?;
        let rest = seen.all.get(skip..)?;
        Some((*rest.first()?, *rest.last()?))
    }
}
