//! Notifications: a consultation's notification log, the dead letters and their retry, and
//! Twilio's message status callbacks.

use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{TimeZone as _, Utc};
use consult_domain::Consultation;
use consult_store::{jobs, notification_log};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::extract::{PathParam, RawBody};
use crate::AppState;

fn instant(ms: Option<i64>) -> Value {
    ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .map_or(Value::Null, |t| json!(t))
}

/// `GET /v1/consultations/{id}/notifications` (its participants, admin, auditor): every
/// notification of the consultation with its outcome. Recipients are masked.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Json<Value>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("no such consultation"))?;
    let id = id.to_string();
    // Authorized on the consultation's own stream, so a notification log is never refused
    // because the read model has not caught up yet.
    let Some(loaded) = state.store.load::<Consultation>(&id).await? else {
        return Err(ApiError::NotFound("no such consultation"));
    };
    let Some(booking) = loaded.aggregate.booking.as_ref() else {
        return Err(ApiError::NotFound("no such consultation"));
    };
    if !caller.may_see(booking.patient_id.as_str(), booking.provider_id.as_str()) {
        return Err(ApiError::Forbidden("this consultation is not yours"));
    }
    let rows = notification_log::of_consultation(&state.store, &id).await?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "recipient_role": r.recipient_role,
                "channel": r.channel,
                "kind": r.kind,
                "recipient": r.recipient_masked,
                "status": r.status,
                "attempts": r.attempts,
                "provider_message_id": r.provider_message_id,
                "scheduled_for": instant(Some(r.scheduled_for_ms)),
                "sent_at": instant(r.sent_at_ms),
                "last_error": r.last_error,
                "updated_at": instant(Some(r.updated_at_ms)),
            })
        })
        .collect();
    Ok(Json(json!({ "consultation_id": id, "items": items })))
}

fn dead_letter(job: &jobs::Job) -> Value {
    json!({
        "id": job.id,
        "kind": job.kind,
        "consultation_id": job.consultation_id,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "last_error": job.last_error,
        "created_at": instant(Some(job.created_at_ms)),
        "failed_at": instant(Some(job.updated_at_ms)),
    })
}

/// `GET /v1/admin/dead-letters` (admin): jobs that ran out of attempts, newest first, with the
/// last error. Job payloads (which hold contact details) are not shown.
pub async fn dead_letters(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let dead = jobs::dead_letters(&state.store, 500).await?;
    Ok(Json(json!({
        "items": dead.iter().map(dead_letter).collect::<Vec<_>>(),
    })))
}

/// `POST /v1/admin/dead-letters/{id}/retry` (admin): queues a dead job again, due now, with a
/// fresh set of attempts.
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let now = state.clock.now().timestamp_millis();
    let Some(job) = jobs::retry_dead(&state.store, &id, now).await? else {
        return Err(ApiError::NotFound("no dead letter with this id"));
    };
    tracing::info!(job = %job.id, kind = %job.kind, "dead letter re-queued");
    let mut body = dead_letter(&job);
    body["state"] = json!("pending");
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Twilio's message statuses as the notification log names them; `None` for intermediate
/// ones that change nothing here.
fn log_status(twilio: &str) -> Option<&'static str> {
    match twilio {
        "sent" => Some("sent"),
        "delivered" | "read" => Some("delivered"),
        "undelivered" | "failed" | "canceled" => Some("failed"),
        _ => None,
    }
}

/// `POST /v1/webhooks/twilio/messages`: Twilio's status callback for a message we sent. The
/// `X-Twilio-Signature` must match `PUBLIC_BASE_URL` + the path and the form parameters;
/// otherwise 403 and nothing changes. A final status (delivered, failed) is never replaced by
/// a later, out-of-order intermediate one.
pub async fn twilio_status(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let params = super::media::verify_twilio(&state, &uri, &headers, &body)?;
    let field = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(sid), Some(status)) = (
        field("MessageSid").or(field("SmsSid")),
        field("MessageStatus").or(field("SmsStatus")),
    ) else {
        return Err(ApiError::Validation {
            field: "MessageSid".into(),
            message: "MessageSid and MessageStatus are required".into(),
        });
    };
    let Some(new_status) = log_status(status) else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let error = field("ErrorCode").map(|code| format!("Twilio error {code} ({status})"));
    let now = state.clock.now().timestamp_millis();
    // Final states stay final; `sent` only moves a message that was not further along.
    let updated = notification_log::apply_delivery_status(
        &state.store,
        sid,
        new_status,
        error.as_deref(),
        now,
    )
    .await?;
    if !updated {
        tracing::info!(
            status = new_status,
            "Twilio callback for an unknown message or an older status"
        );
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
