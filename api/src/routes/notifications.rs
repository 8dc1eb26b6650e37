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
#[utoipa::path(
    get,
    path = "/v1/consultations/{id}/notifications",
    operation_id = "listConsultationNotifications",
    tag = "notifications",
    summary = "A consultation's notification log",
    description = "Its patient, its provider, admins and auditors. Every notification queued about the consultation (new request, acceptance, reminders, …), to whom, through which channel and with what outcome: pending, sent, delivered (as Twilio reports it), failed or dead. Recipients are masked; message texts are not shown. Authorized against the consultation's own event stream, not the `consultations` read model, so it never waits for a projection and takes no `after`: a 404 means there is no such consultation, a 403 that it is not the caller's. Takes no query parameters (any are ignored).",
    params(
        ("id" = String, Path, description = "The consultation's id. Anything that is not a UUID gives 404.", format = Uuid),
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "The notification log.", body = crate::openapi::NotificationLog, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
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
#[utoipa::path(
    get,
    path = "/v1/admin/dead-letters",
    operation_id = "listDeadLetters",
    tag = "admin",
    summary = "Dead letters",
    description = "Admin only. Jobs that ran out of attempts (or failed permanently) and are no longer retried: notifications (`notify`), reminder timers and deadline timers, newest first, at most 500, with their last error. Job payloads, which hold contact details, are never shown; a `notify` job's notification is in its consultation's notification log under the same id. Re-queue one with `POST /v1/admin/dead-letters/{id}/retry`. Takes no query parameters (any are ignored).",
    params(
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "The dead letters.", body = crate::openapi::DeadLetterList, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
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
#[utoipa::path(
    post,
    path = "/v1/admin/dead-letters/{id}/retry",
    operation_id = "retryDeadLetter",
    tag = "admin",
    summary = "Retry a dead letter",
    description = "Admin only. Puts a dead job back in the queue, due at once, with a fresh set of attempts; for a `notify` job its notification goes back to `pending` (its `last_error` cleared). Answers 202 as soon as it is queued; follow a notification in its consultation's notification log. 404 `not_found` when no dead job has this id, which includes one already re-queued. Takes no request body (any body is ignored) and no `Idempotency-Key`.",
    params(
        ("id" = String, Path, description = "The dead letter's id: the `id` of an item of `GET /v1/admin/dead-letters`. An id that is not that of a dead job gives 404."),
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 202, description = "The job was re-queued.", body = crate::openapi::DeadLetterRequeued, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
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
#[utoipa::path(
    post,
    path = "/v1/webhooks/twilio/messages",
    operation_id = "twilioMessageStatus",
    tag = "webhooks",
    summary = "Twilio message status callback",
    description = "Called by Twilio, not by clients: the `StatusCallback` of every SMS and WhatsApp message the server sends, which points here (`PUBLIC_BASE_URL` + this path). No bearer token: the request must carry a valid `X-Twilio-Signature`; when it is missing or wrong, or Twilio is not configured, the answer is 403 `forbidden` and nothing changes. A signed request with a NUL character in a form or query parameter gives 400 `validation_failed`. The notification whose `provider_message_id` is `MessageSid` (or `SmsSid`) takes the status `MessageStatus` (or `SmsStatus`) maps to: `sent` → `sent`, `delivered` and `read` → `delivered`, `undelivered`, `failed` and `canceled` → `failed`; other statuses change nothing. A final status (`delivered`, `failed`) is never replaced by a later, out-of-order one. 204 for every signed callback that names a message and a status, including intermediate statuses and messages this server does not know, so that Twilio does not retry them; 422 `validation_failed` (`field: MessageSid`) when either is missing.",
    params(
        crate::openapi::RequestIdHeader
    ),
    request_body(content = crate::openapi::TwilioMessageStatus, description = "Twilio's status callback form.", content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 204, description = "Handled (or ignored: an intermediate status, an unknown message, a status older than the one recorded).", headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::BadSignature),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
    security(("twilioSignature" = [])),
)]
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
