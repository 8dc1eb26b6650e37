use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::AppState;

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    summary = "Liveness: the process is up",
    params(
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "The process is up.", body = crate::openapi::Health, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID.")))
    ),
    security(()),
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers and the schema is current.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    summary = "Readiness: the database answers and its schema is current",
    params(
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "Ready to serve.", body = crate::openapi::Readiness, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
    security(()),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match state.store.ready().await {
        Ok(true) => Ok(Json(
            json!({"status": "ready", "backend": state.store.backend()}),
        )),
        Ok(false) => Err(ApiError::Unavailable),
        // Unreachable, or never migrated (no migrations table): not ready either way.
        Err(err) => {
            if !err.is_unavailable() {
                tracing::warn!(error = %err, "readiness check failed");
            }
            Err(ApiError::Unavailable)
        }
    }
}
