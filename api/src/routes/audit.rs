//! What auditors read: a consultation's full history (optionally as of an instant), and the
//! access log, which the [`access_log`] middleware writes for every read of a consultation,
//! its history, its notifications and its FHIR export.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, TimeZone as _, Utc};
use consult_domain::Consultation;
use consult_store::events;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::extract::{PathParam, QueryParams};
use crate::{AppState, RequestId};

fn instant(ms: i64) -> Option<String> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// What a consultation route reads, for the access log; `None` for routes that are not reads
/// of a consultation.
fn action_of(method: &axum::http::Method, path: &str) -> Option<(&'static str, String)> {
    // HEAD runs the GET handler (and tells whether the read was allowed): a read too.
    if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
        return None;
    }
    let rest = path.strip_prefix("/v1/consultations/")?;
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let action = match tail {
        "" => "read_consultation",
        "history" => "read_history",
        "notifications" => "read_notifications",
        "fhir" => "read_fhir",
        _ => return None,
    };
    Some((action, consultation_key(id)))
}

/// The consultation id as the handlers see it — percent-decoded, and in the canonical UUID
/// form when it is one (`Uuid::parse_str` also takes upper case, no hyphens, braces, URNs) —
/// so that a read under another spelling of the id is logged under the id itself. Control
/// characters become U+FFFD: PostgreSQL text cannot hold a NUL, and the log is read by people.
fn consultation_key(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(hi), Some(lo)) if hex(hi).is_some() && hex(lo).is_some() => {
                let value = hex(hi).unwrap_or(0) * 16 + hex(lo).unwrap_or(0);
                decoded.push(u8::try_from(value).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded);
    Uuid::parse_str(&decoded).map_or_else(
        |_| {
            decoded
                .chars()
                .take(64)
                .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
                .collect()
        },
        |id| id.to_string(),
    )
}

/// Records every read of a consultation (who, role, what, when, outcome, request id) before
/// the response leaves. A read that cannot be recorded is answered 503 instead: no unlogged
/// access.
pub async fn access_log(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some((action, consultation_id)) = action_of(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let (mut parts, body) = request.into_parts();
    let caller = {
        use axum::extract::FromRequestParts as _;
        Caller::from_request_parts(&mut parts, &state).await.ok()
    };
    // The handler reads the caller from here instead of verifying the token again.
    if let Some(caller) = &caller {
        parts.extensions.insert(caller.clone());
    }
    let response = next.run(Request::from_parts(parts, body)).await;
    let (actor_id, actor_role) = caller.map_or_else(
        || ("anonymous".to_owned(), "none".to_owned()),
        |c| (c.id, c.role.as_str().to_owned()),
    );
    let consultation_id: String = consultation_id.chars().take(64).collect();
    let written = state
        .store
        .record_access(&consult_store::AccessRecord {
            at_ms: state.clock.now().timestamp_millis(),
            actor_id: &actor_id,
            actor_role: &actor_role,
            action,
            consultation_id: &consultation_id,
            outcome: i32::from(response.status().as_u16()),
            request_id: &request_id,
        })
        .await;
    match written {
        Ok(()) => response,
        Err(err) => {
            tracing::error!(error = %consult_store::error_chain(&err), action, "cannot record an access; the read is refused");
            // 503 whatever the cause (not only when the database is unreachable): the read
            // itself was fine, it is the log that cannot take it now.
            ApiError::Unavailable.into_response()
        }
    }
}

/// `GET /v1/consultations/{id}/history?as_of=<RFC 3339>` (auditor, admin): every event of the
/// consultation in order, with its sequence, global position, type, version, recorded time,
/// actor, correlation and causation ids, payload and hashes; the state they produce; and the
/// side effects they caused (notifications, calls, jobs). With `as_of`, only what was recorded
/// up to that instant, and the state then.
#[utoipa::path(
    get,
    path = "/v1/consultations/{id}/history",
    operation_id = "consultationHistory",
    tag = "audit",
    summary = "A consultation's full history",
    description = "Allowed: auditor, admin (patients and providers get 403). Every event in order with its sequence, global position, type, version, recorded time, actor, correlation and causation ids, payload and hashes; the state those events produce; and the side effects they caused. With `as_of`, only what was recorded up to that instant and the state then. Every read (and refusal) is in the access log.",
    params(
        ("id" = String, Path, description = "The consultation's id. Anything that is not a UUID gives 404.", format = Uuid),
        ("as_of" = Option<String>, Query, format = DateTime, nullable = false),
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "The history.", body = crate::openapi::History, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 400, response = crate::openapi::BadQuery),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
    params: QueryParams,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Auditor, Role::Admin])?;
    params.only(&["as_of"])?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::NotFound("no such consultation"))?
        .to_string();
    let as_of: Option<DateTime<Utc>> = params.parse("as_of", |text| {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| "must be an RFC 3339 timestamp, e.g. 2030-01-31T14:00:00Z".to_owned())
    })?;
    consult_projections::history(&state.store, &id, as_of)
        .await
        .map_err(|err| match err {
            consult_projections::HistoryError::Store(err) => ApiError::from(err),
            unreadable => ApiError::Internal(Box::new(unreadable)),
        })?
        .map(Json)
        .ok_or(ApiError::NotFound("no such consultation"))
}

/// `GET /v1/admin/access-log?consultation_id=&actor_id=` (auditor, admin): who read what,
/// newest first, at most 500 entries.
#[utoipa::path(
    get,
    path = "/v1/admin/access-log",
    operation_id = "accessLog",
    tag = "audit",
    summary = "Who read which consultation",
    description = "Allowed: auditor, admin. Every read of a consultation, its history, its notifications and its FHIR export: who (id and role, `anonymous` without a valid token), what, when, the status answered and the request id. Newest first, at most 500.",
    params(
        ("consultation_id" = Option<String>, Query, nullable = false),
        ("actor_id" = Option<String>, Query, nullable = false),
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "The entries.", body = crate::openapi::AccessLog, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 400, response = crate::openapi::BadQuery),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn access_entries(
    State(state): State<AppState>,
    caller: Caller,
    params: QueryParams,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Auditor, Role::Admin])?;
    params.only(&["consultation_id", "actor_id"])?;
    let rows = state
        .store
        .access_entries(params.get("consultation_id"), params.get("actor_id"))
        .await?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "at": instant(r.at_ms),
                "actor": {"id": r.actor_id, "role": r.actor_role},
                "action": r.action,
                "consultation_id": r.consultation_id,
                "outcome": r.outcome,
                "request_id": r.request_id,
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/consultations/{id}/fhir` (its participants, admin, auditor): the consultation as a
/// FHIR R4 `Appointment` (`application/fhir+json`), read from its own events.
#[utoipa::path(
    get,
    path = "/v1/consultations/{id}/fhir",
    operation_id = "consultationFhir",
    tag = "audit",
    summary = "The consultation as a FHIR R4 Appointment",
    description = "Allowed: its patient and provider, admin, auditor. Status mapping: requested and accepted → `pending`, confirmed → `booked`, in progress → `arrived`, completed → `fulfilled`, cancelled, declined and expired → `cancelled` with a `cancelationReason` (appointment-cancellation-reason: `pat`, `prov` or `other`), no-show → `noshow` (with the party as `cancelationReason`). Participants `Patient/<id>` and `Practitioner/<id>` with their participation status; start and end; the meeting link as the extension `https://consult.example/fhir/StructureDefinition/meeting-link`. No contact details and no medical reason. Logged in the access log.",
    params(
        ("id" = String, Path, description = "The consultation's id. Anything that is not a UUID gives 404.", format = Uuid),
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "An R4 Appointment.", body = Object, content_type = "application/fhir+json", headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn fhir(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::NotFound("no such consultation"))?
        .to_string();
    let rows = events::consultation_stream(&state.store, &id).await?;
    let mut consultation = Consultation::default();
    let mut history = Vec::with_capacity(rows.len());
    for row in &rows {
        let event: consult_domain::ConsultationEvent =
            serde_json::from_str(&row.payload).map_err(|e| {
                ApiError::Internal(format!("event {} of {id}: {e}", row.sequence).into())
            })?;
        consultation.evolve(event.clone());
        history.push(event);
    }
    let Some(booking) = consultation.booking.as_ref() else {
        return Err(ApiError::NotFound("no such consultation"));
    };
    if !caller.may_see(booking.patient_id.as_str(), booking.provider_id.as_str()) {
        return Err(ApiError::Forbidden("this consultation is not yours"));
    }
    let provider = state
        .store
        .load::<consult_domain::Provider>(booking.provider_id.as_str())
        .await?
        .and_then(|p| p.aggregate.profile);
    let links = crate::fhir::FhirLinks {
        meeting_link: Some(format!(
            "{}/consultations/{id}/join",
            state.media.app_url.trim_end_matches('/')
        )),
        provider_display: provider.map(|p| p.name.as_str().to_owned()),
    };
    let appointment =
        crate::fhir::appointment(&id, &consultation, &history, &links).map_err(|e| match e {
            crate::fhir::FhirError::NotBooked => ApiError::NotFound("no such consultation"),
            other => ApiError::Internal(Box::new(other)),
        })?;
    let mut response = Json(appointment).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/fhir+json"),
    );
    Ok(response)
}
