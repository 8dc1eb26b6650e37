//! Operations: subscription status, projection rebuilds, Prometheus metrics.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{TimeZone as _, Utc};
use consult_store::SubscriptionStatus;
use secrecy::ExposeSecret as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::extract::PathParam;
use crate::AppState;

/// Whether two secrets are equal, in time that depends on neither: their SHA-256 digests (of
/// fixed length, whatever the inputs' lengths) are compared without stopping at a difference.
fn same_secret(presented: &str, expected: &str) -> bool {
    let (a, b) = (
        Sha256::digest(presented.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    let difference = a
        .iter()
        .zip(b.iter())
        .fold(0_u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

fn instant(ms: i64) -> Option<chrono::DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// What a subscription is doing, in one word.
fn activity(status: &SubscriptionStatus, now_ms: i64) -> &'static str {
    if status.reset_pending {
        "reset_requested"
    } else if status.failing_since_ms.is_some() {
        "failing"
    } else if status.owner.is_none() || status.lease_until_ms < now_ms {
        "stopped"
    } else if status.replaying {
        "replaying"
    } else if status.lag_events > 0 {
        "catching_up"
    } else {
        "live"
    }
}

fn view(status: &SubscriptionStatus, now_ms: i64) -> Value {
    let projection = consult_projections::by_name(&status.name).is_some();
    json!({
        "name": status.name,
        "kind": if projection { "projection" } else { "reactor" },
        "state": activity(status, now_ms),
        "position": status.position,
        "transaction_id": status.transaction_id,
        "applied_since_reset": status.applied,
        "lag_events": status.lag_events,
        "lag_events_capped": status.lag_events >= consult_store::LAG_COUNT_CAP,
        "lag_seconds": status.lag_ms as f64 / 1000.0,
        "owner": status.owner,
        "lease_expires_at": instant(status.lease_until_ms),
        "last_reset_at": status.reset_at_ms.and_then(instant),
        "replaying": status.replaying,
        "updated_at": instant(status.updated_at_ms),
        "failures": status.failures,
        "failing_since": status.failing_since_ms.and_then(instant),
        "last_error": status.last_error,
    })
}

/// `GET /v1/admin/subscriptions` (admin): every subscription's checkpoint, owner and lag.
#[utoipa::path(
    get,
    path = "/v1/admin/subscriptions",
    operation_id = "listSubscriptions",
    tag = "admin",
    summary = "Subscription status",
    description = "Admin only. Every subscription, projections and reactors, with its checkpoint, lease, lag and failures, and the head of the global log.",
    params(
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "The subscriptions.", body = crate::openapi::Subscriptions, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn subscriptions(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let statuses = state.store.subscription_statuses().await?;
    let head = state.store.head_position().await?;
    let now_ms = state.clock.now().timestamp_millis();
    Ok(Json(json!({
        "head_position": head,
        "subscriptions": statuses.iter().map(|s| view(s, now_ms)).collect::<Vec<_>>(),
    })))
}

/// `POST /v1/admin/projections/{name}/rebuild` (admin): asks the projection's owner to empty
/// it and replay the log from position 0. Answers 202 at once; progress shows on
/// `GET /v1/admin/subscriptions`. Reads keep being served meanwhile, from the partly rebuilt
/// model.
#[utoipa::path(
    post,
    path = "/v1/admin/projections/{name}/rebuild",
    operation_id = "rebuildProjection",
    tag = "admin",
    summary = "Rebuild a projection",
    description = "Admin only. Asks the process that owns the projection to empty its read model and replay the global log from position 0. Answers 202 at once; follow the rebuild on `GET /v1/admin/subscriptions` (`reset_requested`, then `replaying`, then `live`). Reads keep being served meanwhile: on PostgreSQL from the previous read model (complete but not updated until the replay has caught up and takes its place; reads with `after` answer `X-Projection-Stale: true`), on SQLite from the partly rebuilt one. Asking again while a rebuild runs starts it over. Takes no request body (any body is ignored) and no `Idempotency-Key`.",
    params(
        ("name" = crate::openapi::RebuildProjectionName, Path, description = "The projection's name. Currently the only projection is `consultations`; any other name (reactors included) gives 404."),
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 202, description = "The rebuild was requested.", body = crate::openapi::RebuildAccepted, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn rebuild(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let Some(projection) = consult_projections::by_name(&name) else {
        return Err(ApiError::NotFound("no such projection"));
    };
    state.store.request_reset(projection.name()).await?;
    tracing::info!(projection = projection.name(), "rebuild requested");
    let body = json!({
        "name": projection.name(),
        "state": "reset_requested",
        "status_url": "/v1/admin/subscriptions",
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// A metric family: name, help text, and how a subscription's value is written.
type Family = (
    &'static str,
    &'static str,
    fn(&SubscriptionStatus) -> String,
);

/// `GET /metrics`: Prometheus text format. Subscription figures are read from the database,
/// so any process reports every subscription. No personal data. With `METRICS_TOKEN` set, only
/// `Authorization: Bearer <METRICS_TOKEN>` is answered (401 otherwise).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "No auth, unless the server sets `METRICS_TOKEN`: then only `Authorization: Bearer <METRICS_TOKEN>` is answered, anything else gets 401 `unauthorized`. Prometheus text exposition format 0.0.4 (`Content-Type: text/plain; version=0.0.4; charset=utf-8`). All gauges: `consult_log_head_position`, and per subscription (label `subscription`) `consult_subscription_position`, `consult_subscription_lag_events` (capped at 100000), `consult_subscription_lag_seconds` and `consult_subscription_failures`. Read from the database, so every process reports every subscription. No personal data.",
    params(
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "The metrics.", body = String, content_type = "text/plain; version=0.0.4", headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
    security(()),
)]
pub async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.metrics_token {
        let presented = crate::auth::bearer_token(&headers)?;
        if !same_secret(presented, expected.expose_secret()) {
            return Err(ApiError::Unauthorized("the metrics token is not valid"));
        }
    }
    let statuses = state.store.subscription_statuses().await?;
    let head = state.store.head_position().await?;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# HELP consult_log_head_position Highest global log position written."
    );
    let _ = writeln!(text, "# TYPE consult_log_head_position gauge");
    let _ = writeln!(text, "consult_log_head_position {head}");
    let families: [Family; 4] = [
        (
            "consult_subscription_position",
            "Position of the last event the subscription handled.",
            |s| s.position.to_string(),
        ),
        (
            "consult_subscription_lag_events",
            "Events written but not yet handled (capped).",
            |s| s.lag_events.to_string(),
        ),
        (
            "consult_subscription_lag_seconds",
            "Age of the oldest event not yet handled.",
            |s| format!("{:.3}", s.lag_ms as f64 / 1000.0),
        ),
        (
            "consult_subscription_failures",
            "Consecutive failed attempts of the current batch.",
            |s| s.failures.to_string(),
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} gauge");
        for status in &statuses {
            let _ = writeln!(
                text,
                "{name}{{subscription=\"{}\"}} {}",
                status.name,
                value(status)
            );
        }
    }
    let _ = writeln!(
        text,
        "# HELP consult_jobs Jobs (notifications, reminders, deadlines) by kind and status."
    );
    let _ = writeln!(text, "# TYPE consult_jobs gauge");
    for (kind, status, count) in consult_store::jobs::counts(&state.store).await? {
        let _ = writeln!(
            text,
            "consult_jobs{{kind=\"{kind}\",status=\"{status}\"}} {count}"
        );
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret("s3cret-token", "s3cret-token"));
        assert!(!same_secret("s3cret-tokeN", "s3cret-token"));
        assert!(!same_secret("s3cret", "s3cret-token"));
        assert!(!same_secret("", "s3cret-token"));
    }
}
