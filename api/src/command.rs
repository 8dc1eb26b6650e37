//! Runs a command once per `Idempotency-Key`: the first request with a key runs and its
//! response is stored; a repeat with the same body gets the stored response; a repeat with a
//! different body is refused.

use std::future::Future;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use consult_store::{IdempotencyClaim, Metadata, StoredResponse};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::CommandContext;
use crate::AppState;

/// A successful command's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub status: u16,
    pub location: Option<String>,
    pub body: serde_json::Value,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let mut response = (status, axum::Json(self.body)).into_response();
        if let Some(location) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

/// What is stored under a key: a reply, or a problem that was answered.
#[derive(Debug, Serialize, Deserialize)]
struct Remembered {
    reply: Reply,
    problem: bool,
}

pub fn metadata(caller: &Caller, ctx: &CommandContext) -> Metadata {
    Metadata {
        actor_id: caller.id.clone(),
        actor_role: caller.role.as_str().to_owned(),
        correlation_id: ctx.correlation_id.clone(),
        causation_id: ctx.request_id.clone(),
        request_id: ctx.request_id.clone(),
    }
}

/// Runs `run` under the request's idempotency key, if it has one.
pub async fn idempotent<F, Fut>(
    state: &AppState,
    caller: &Caller,
    ctx: &CommandContext,
    body: &[u8],
    run: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Reply, ApiError>>,
{
    let Some(key) = ctx.idempotency_key.as_deref() else {
        return run().await.map(IntoResponse::into_response);
    };
    let owner = format!("{}:{}", caller.role, caller.id);
    let mut hasher = Sha256::new();
    hasher.update(ctx.target.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    let fingerprint = format!("{:x}", hasher.finalize());
    let now_ms = state.clock.now().timestamp_millis();
    match state
        .store
        .claim_idempotency_key(&owner, key, &fingerprint, now_ms)
        .await?
    {
        IdempotencyClaim::Fresh => {}
        IdempotencyClaim::Mismatch => return Err(ApiError::IdempotencyMismatch),
        IdempotencyClaim::InProgress => return Err(ApiError::IdempotencyInProgress),
        IdempotencyClaim::Replay(stored) => return Ok(replay(&stored)),
    }
    let outcome = run().await;
    let remembered = match &outcome {
        Ok(reply) => Some(Remembered {
            reply: reply.clone(),
            problem: false,
        }),
        // A client error is the answer to this request and is kept; a server error or an
        // outage is not, so that a retry can succeed.
        Err(err) if err.status_code().is_client_error() => Some(Remembered {
            reply: Reply {
                status: err.status_code().as_u16(),
                location: None,
                body: serde_json::to_value(err.problem()).unwrap_or_default(),
            },
            problem: true,
        }),
        Err(_) => None,
    };
    match remembered {
        Some(remembered) => {
            let stored = StoredResponse {
                status: remembered.reply.status,
                response: serde_json::to_string(&remembered).unwrap_or_default(),
            };
            state
                .store
                .finish_idempotency_key(&owner, key, &stored)
                .await?;
        }
        None => state.store.release_idempotency_key(&owner, key).await?,
    }
    outcome.map(IntoResponse::into_response)
}

fn replay(stored: &StoredResponse) -> Response {
    let Ok(remembered) = serde_json::from_str::<Remembered>(&stored.response) else {
        return ApiError::Internal("unreadable stored idempotent response".into()).into_response();
    };
    let problem = remembered.problem;
    let mut response = remembered.reply.into_response();
    let headers = response.headers_mut();
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    if problem {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
    }
    response
}
