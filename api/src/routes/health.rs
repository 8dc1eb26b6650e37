use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::AppState;

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers and the schema is current.
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
