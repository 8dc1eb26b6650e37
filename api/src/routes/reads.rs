//! Reads served from the read models: one consultation, filtered lists, provider schedules.
//!
//! Every read takes `?after=<position>`: it first waits (at most [`AFTER_WAIT`]) until the
//! projection has handled that position of the global log, so a client that passes the
//! `position` of its last command reads its own write. When the wait runs out the read is
//! answered anyway, marked `X-Projection-Stale: true`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, TimeZone as _, Utc};
use consult_domain::{BoundedText, Provider, ProviderId};
use consult_projections::{Cursor, ListFilter, Summary, TimeWindow};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::extract::{PathParam, QueryParams};
use crate::AppState;

/// Longest a read waits for the projections to reach `?after`.
pub const AFTER_WAIT: Duration = Duration::from_secs(2);

/// Set on a read answered before the projections reached `?after`.
pub static STALE_HEADER: HeaderName = HeaderName::from_static("x-projection-stale");

const PROJECTION: &str = "consultations";
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;
const STATUSES: &[&str] = &[
    "requested",
    "accepted",
    "confirmed",
    "in_progress",
    "completed",
    "declined",
    "cancelled",
    "expired",
    "no_show",
];
/// Statuses that hold (or may soon hold) a provider's time.
const SCHEDULED: &[&str] = &[
    "requested",
    "accepted",
    "confirmed",
    "in_progress",
    "completed",
    "no_show",
];
const DEFAULT_SCHEDULE_DAYS: i64 = 7;
const MAX_SCHEDULE_DAYS: i64 = 92;

/// Waits for `?after`; returns whether the projection reached it (true without `?after`).
async fn caught_up(state: &AppState, params: &QueryParams) -> Result<bool, ApiError> {
    let Some(after) = params.parse("after", |text| {
        text.parse::<i64>()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| "must be a log position (a non-negative integer)".to_owned())
    })?
    else {
        return Ok(true);
    };
    if after == 0 {
        return Ok(true);
    }
    Ok(state
        .store
        .wait_for_subscriptions(&[PROJECTION], after, AFTER_WAIT)
        .await?)
}

fn respond(body: Result<Value, ApiError>, fresh: bool) -> Response {
    let mut response = match body {
        Ok(body) => Json(body).into_response(),
        Err(err) => err.into_response(),
    };
    if !fresh {
        response
            .headers_mut()
            .insert(STALE_HEADER.clone(), HeaderValue::from_static("true"));
    }
    response
}

fn instant(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// The JSON of a read-model row. `reason` is medical information: only in the single read.
fn view(summary: &Summary, with_reason: bool) -> Value {
    let state = &summary.state.0;
    let booking = state.booking.as_ref();
    let mut body = json!({
        "id": summary.id,
        "status": summary.status,
        "payment_status": summary.payment_status,
        "patient_id": summary.patient_id,
        "provider_id": summary.provider_id,
        "starts_at": instant(summary.starts_at_ms),
        "ends_at": instant(summary.ends_at_ms),
        "duration_minutes": booking.map(|b| b.duration.minutes()),
        "timezone": booking.map(|b| b.timezone.name()),
        "mode": summary.mode,
        "room": state.room.as_ref().map(|r| {
            json!({"name": r.name, "provider": r.provider, "ended": state.room_ended})
        }),
        "version": summary.version,
        "position": summary.position,
        "updated_at": instant(summary.updated_at_ms),
    });
    if with_reason {
        body["price"] = json!(booking.and_then(|b| b.price.as_ref()).map(|p| json!({
            "amount_minor": p.amount_minor,
            "currency": p.currency,
        })));
        body["payment_flagged"] = json!(state.payment_flagged);
        body["refund_id"] = json!(state.refund_id);
    }
    if with_reason {
        body["reason"] = json!(booking.and_then(|b| b.reason.as_ref().map(BoundedText::as_str)));
    }
    body
}

fn may_read(caller: &Caller, summary: &Summary) -> bool {
    caller.may_see(&summary.patient_id, &summary.provider_id)
}

/// `GET /v1/consultations/{id}` (its participants, admin, auditor).
#[utoipa::path(
    get,
    path = "/v1/consultations/{id}",
    operation_id = "getConsultation",
    tag = "consultations",
    summary = "Get a consultation",
    description = "Its patient, its provider, admins and auditors. Served from the `consultations` read model: pass `after` (the `position` of your last command) to read your own write. When the read model has not reached `after` within 2 s the answer carries `X-Projection-Stale: true`; that goes for a 403 or 404 decided on the read model too, so a stale 404 may only mean the consultation has not been projected yet. `after` is the only query parameter; any other, or a repeated one, gives 400 `validation_failed`.",
    params(
        ("id" = String, Path, description = "The consultation's id. Anything that is not a UUID gives 404.", format = Uuid),
        ("after" = Option<i64>, Query, description = "A global log position, usually the `position` returned by your last command. The read first waits, at most 2 s, until the projections have handled the log up to it; if they have not by then, the read is answered anyway with `X-Projection-Stale: true`. Absent or `0`: no wait. Anything but a non-negative integer gives 400 with `field: after`.", minimum = 0, nullable = false),
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "The consultation.", body = crate::openapi::Consultation, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."), ("X-Projection-Stale" = String, description = "`true` when the read was answered before the projections reached the position in `after` (the 2 s wait ran out): the answer may not yet reflect that write. Absent otherwise."))),
        (status = 400, response = crate::openapi::BadQuery),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn consultation(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
    params: QueryParams,
) -> Result<Response, ApiError> {
    params.only(&["after"])?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("no such consultation"))?;
    let fresh = caught_up(&state, &params).await?;
    let body = match consult_projections::consultation(&state.store, &id.to_string()).await? {
        None => Err(ApiError::NotFound("no such consultation")),
        Some(summary) if !may_read(&caller, &summary) => {
            Err(ApiError::Forbidden("this consultation is not yours"))
        }
        Some(summary) => Ok(view(&summary, true)),
    };
    Ok(respond(body, fresh))
}

fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| "must be an RFC 3339 timestamp, e.g. 2030-01-31T14:00:00Z".to_owned())
}

fn parse_limit(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| format!("must be a whole number from 1 to {MAX_LIMIT}"))
}

fn parse_cursor(text: &str) -> Result<Cursor, String> {
    Cursor::decode(text).map_err(|err| err.to_string())
}

fn parse_statuses(text: &str) -> Result<Vec<String>, String> {
    text.split(',')
        .map(str::trim)
        .map(|status| {
            if STATUSES.contains(&status) {
                Ok(status.to_owned())
            } else {
                Err(format!("must be one or more of {}", STATUSES.join(", ")))
            }
        })
        .collect()
}

/// Narrows a party filter to the caller: patients and providers see only their own.
fn scoped(caller: &Caller, role: Role, asked: Option<String>) -> Result<Option<String>, ApiError> {
    if caller.role != role {
        return Ok(asked);
    }
    match asked {
        Some(other) if other != caller.id => Err(ApiError::Forbidden(
            "patients and providers may list only their own consultations",
        )),
        _ => Ok(Some(caller.id.clone())),
    }
}

fn page_body(page: &consult_projections::Page, item: impl Fn(&Summary) -> Value) -> Value {
    json!({
        "items": page.items.iter().map(item).collect::<Vec<_>>(),
        "next_cursor": page.next.as_ref().map(Cursor::encode),
    })
}

/// `GET /v1/consultations?provider_id=&patient_id=&status=&from=&to=&limit=&cursor=&after=`:
/// in start order; patients and providers see their own, admins and auditors all.
#[utoipa::path(
    get,
    path = "/v1/consultations",
    operation_id = "listConsultations",
    tag = "consultations",
    summary = "List consultations",
    description = "Any role. Patients see only the consultations they are the patient of, providers only those they are the provider of: their own id is applied as `patient_id` (`provider_id`), and asking for another's gives 403 `forbidden`. Admins and auditors see all. Every given filter narrows the list. Served from the `consultations` read model (see `after`), ordered by `starts_at`, then `id`; items leave out `reason`. Unknown or repeated query parameters give 400 `validation_failed`.",
    params(
        ("provider_id" = Option<String>, Query, description = "Only this provider's consultations. A provider may name only themself (403 otherwise).", nullable = false),
        ("patient_id" = Option<String>, Query, description = "Only this patient's consultations. A patient may name only themself (403 otherwise).", nullable = false),
        ("status" = Option<Vec<crate::openapi::ListConsultationsStatus>>, Query, description = "Comma-separated statuses, e.g. `accepted,confirmed`: consultations in any of them. Absent: any status. An unknown status gives 400 with `field: status`.", min_items = 1, explode = false, style = Form, nullable = false),
        ("from" = Option<String>, Query, description = "Only consultations with `starts_at` at or after this instant. RFC 3339 with an offset, e.g. `2030-01-31T14:00:00Z` (percent-encode a `+` offset as `%2B`); anything else gives 400 with `field: from`.", format = DateTime, nullable = false),
        ("to" = Option<String>, Query, description = "Only consultations with `starts_at` before this instant; must be after `from` when both are given (400 with `field: to` otherwise). RFC 3339 with an offset, e.g. `2030-01-31T14:00:00Z` (percent-encode a `+` offset as `%2B`); anything else gives 400 with `field: to`.", format = DateTime, nullable = false),
        ("limit" = Option<i64>, Query, description = "Most items on the page, 1 to 200. Anything else gives 400 with `field: limit`.", minimum = 1, maximum = 200, nullable = false),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page: this page starts after that page's last item. Opaque; send the other parameters unchanged. A cursor this server did not hand out gives 400 with `field: cursor`.", min_length = 1, nullable = false),
        ("after" = Option<i64>, Query, description = "A global log position, usually the `position` returned by your last command. The read first waits, at most 2 s, until the projections have handled the log up to it; if they have not by then, the read is answered anyway with `X-Projection-Stale: true`. Absent or `0`: no wait. Anything but a non-negative integer gives 400 with `field: after`.", minimum = 0, nullable = false),
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "A page of consultations.", body = crate::openapi::ConsultationPage, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."), ("X-Projection-Stale" = String, description = "`true` when the read was answered before the projections reached the position in `after` (the 2 s wait ran out): the answer may not yet reflect that write. Absent otherwise."))),
        (status = 400, response = crate::openapi::BadQuery),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: QueryParams,
) -> Result<Response, ApiError> {
    params.only(&[
        "provider_id",
        "patient_id",
        "status",
        "from",
        "to",
        "limit",
        "cursor",
        "after",
    ])?;
    let own = |name: &str| params.get(name).map(str::to_owned);
    let filter = ListFilter {
        patient_id: scoped(&caller, Role::Patient, own("patient_id"))?,
        provider_id: scoped(&caller, Role::Provider, own("provider_id"))?,
        statuses: params.parse("status", parse_statuses)?.unwrap_or_default(),
        from: params.parse("from", parse_instant)?,
        to: params.parse("to", parse_instant)?,
        window: TimeWindow::Starts,
        after: params.parse("cursor", parse_cursor)?,
        limit: params.parse("limit", parse_limit)?.unwrap_or(DEFAULT_LIMIT),
    };
    if let (Some(from), Some(to)) = (filter.from, filter.to) {
        if from >= to {
            return Err(ApiError::BadQuery {
                param: "to".to_owned(),
                message: "must be after from".to_owned(),
            });
        }
    }
    let fresh = caught_up(&state, &params).await?;
    let page = consult_projections::consultations(&state.store, &filter).await?;
    Ok(respond(Ok(page_body(&page, |s| view(s, false))), fresh))
}

/// `GET /v1/providers/{id}/schedule?from=&to=&limit=&cursor=&after=` (the provider itself,
/// admin): what occupies the provider's time in the range (default the next 7 days, at most
/// 92), cancelled, declined and expired consultations left out.
#[utoipa::path(
    get,
    path = "/v1/providers/{id}/schedule",
    operation_id = "getProviderSchedule",
    tag = "providers",
    summary = "A provider's schedule",
    description = "The provider itself or an admin; anyone else, auditors included, gets 403. What occupies the provider's time in the range from `from` to `to`: every consultation with `starts_at < to` and `ends_at > from`, so one that straddles an edge is included. Declined, cancelled and expired consultations are left out. 404 when no provider is registered under the id. Served from the `consultations` read model (see `after`), ordered by `starts_at`, then `consultation_id`. Unknown or repeated query parameters give 400 `validation_failed`.",
    params(
        ("id" = crate::openapi::Identifier, Path, description = "The provider's id. Anything that is not a valid provider id gives 404."),
        ("from" = Option<String>, Query, description = "Start of the range. Default: the time of the request. RFC 3339 with an offset, e.g. `2030-01-31T14:00:00Z` (percent-encode a `+` offset as `%2B`); anything else gives 400 with `field: from`.", format = DateTime, nullable = false),
        ("to" = Option<String>, Query, description = "End of the range, exclusive. Default: `from` plus 7 days. Must be after `from` and at most 92 days after it (400 with `field: to` otherwise). RFC 3339 with an offset, e.g. `2030-01-31T14:00:00Z` (percent-encode a `+` offset as `%2B`); anything else gives 400 with `field: to`.", format = DateTime, nullable = false),
        ("limit" = Option<i64>, Query, description = "Most items on the page, 1 to 200. Anything else gives 400 with `field: limit`.", minimum = 1, maximum = 200, nullable = false),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page: this page starts after that page's last item. Opaque; send the other parameters unchanged. A cursor this server did not hand out gives 400 with `field: cursor`.", min_length = 1, nullable = false),
        ("after" = Option<i64>, Query, description = "A global log position, usually the `position` returned by your last command. The read first waits, at most 2 s, until the projections have handled the log up to it; if they have not by then, the read is answered anyway with `X-Projection-Stale: true`. Absent or `0`: no wait. Anything but a non-negative integer gives 400 with `field: after`.", minimum = 0, nullable = false),
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "A page of the schedule.", body = crate::openapi::Schedule, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."), ("X-Projection-Stale" = String, description = "`true` when the read was answered before the projections reached the position in `after` (the 2 s wait ran out): the answer may not yet reflect that write. Absent otherwise."))),
        (status = 400, response = crate::openapi::BadQuery),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn schedule(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
    params: QueryParams,
) -> Result<Response, ApiError> {
    params.only(&["from", "to", "limit", "cursor", "after"])?;
    let own = caller.role == Role::Provider && caller.id == id;
    if !(own || caller.role == Role::Admin) {
        return Err(ApiError::Forbidden(
            "only the provider and admins may read a schedule",
        ));
    }
    let provider_id = ProviderId::parse(&id).map_err(|_| ApiError::NotFound("no such provider"))?;
    let from = params
        .parse("from", parse_instant)?
        .unwrap_or_else(|| state.clock.now());
    let to = params
        .parse("to", parse_instant)?
        .unwrap_or(from + chrono::Duration::days(DEFAULT_SCHEDULE_DAYS));
    if to <= from {
        return Err(ApiError::BadQuery {
            param: "to".to_owned(),
            message: "must be after from".to_owned(),
        });
    }
    if to - from > chrono::Duration::days(MAX_SCHEDULE_DAYS) {
        return Err(ApiError::BadQuery {
            param: "to".to_owned(),
            message: format!("the range may span at most {MAX_SCHEDULE_DAYS} days"),
        });
    }
    let registered = state
        .store
        .load::<Provider>(provider_id.as_str())
        .await?
        .is_some_and(|p| p.aggregate.profile.is_some());
    if !registered {
        return Err(ApiError::NotFound("no such provider"));
    }
    let filter = ListFilter {
        provider_id: Some(provider_id.as_str().to_owned()),
        statuses: SCHEDULED.iter().map(|s| (*s).to_owned()).collect(),
        from: Some(from),
        to: Some(to),
        window: TimeWindow::Overlaps,
        after: params.parse("cursor", parse_cursor)?,
        limit: params.parse("limit", parse_limit)?.unwrap_or(DEFAULT_LIMIT),
        ..ListFilter::default()
    };
    let fresh = caught_up(&state, &params).await?;
    let page = consult_projections::consultations(&state.store, &filter).await?;
    let mut body = page_body(&page, |s| {
        json!({
            "consultation_id": s.id,
            "status": s.status,
            "starts_at": instant(s.starts_at_ms),
            "ends_at": instant(s.ends_at_ms),
            "mode": s.mode,
            "patient_id": s.patient_id,
        })
    });
    body["provider_id"] = json!(provider_id.as_str());
    body["from"] = json!(from);
    body["to"] = json!(to);
    Ok(respond(Ok(body), fresh))
}
