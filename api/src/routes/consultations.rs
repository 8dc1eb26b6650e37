use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use consult_domain::{
    Booking, BoundedText, Canceller, Consultation, ConsultationCommand, Contact, DurationMinutes,
    EmailAddress, Mode, Party, PatientId, PhoneNumber, Provider, ProviderId, StartTime, TimeZone,
};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{Caller, Role};
use crate::command::{idempotent, metadata, Reply};
use crate::error::ApiError;
use crate::extract::{parse_json, CommandContext, PathParam, RawBody};
use crate::AppState;

/// Longest free text we accept in a reason.
const REASON_MAX_CHARS: usize = 2000;

/// How to reach the patient: at least one of `phone` and `email`; `whatsapp` needs `phone`.
#[derive(Debug, Deserialize, ToSchema)]
struct ContactRequest {
    #[schema(value_type = Option<crate::openapi::PhoneNumber>, required = false)]
    phone: Option<String>,
    #[schema(value_type = Option<crate::openapi::EmailAddress>, required = false)]
    email: Option<String>,
    /// Opt in to WhatsApp messages on `phone`.
    #[serde(default)]
    #[schema(default = false)]
    whatsapp: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
struct BookRequest {
    #[schema(value_type = crate::openapi::Identifier)]
    provider_id: String,
    /// Must be in the future and before 9000-01-01T00:00:00Z (422 otherwise); truncated to whole seconds. A leap second (`…23:59:60Z`) is read as the second after it.
    #[schema(format = DateTime)]
    starts_at: String,
    #[schema(value_type = crate::openapi::DurationMinutes)]
    duration_minutes: i64,
    #[schema(value_type = crate::openapi::Mode)]
    mode: String,
    #[schema(value_type = crate::openapi::TimeZoneName)]
    timezone: String,
    contact: ContactRequest,
    #[schema(value_type = Option<crate::openapi::Reason>, required = false)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
struct ReasonRequest {
    #[schema(value_type = crate::openapi::Reason)]
    reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
struct RescheduleRequest {
    /// The new start; must be in the future and before 9000-01-01T00:00:00Z (422 otherwise). Truncated to whole seconds; a leap second (`…23:59:60Z`) is read as the second after it.
    #[schema(format = DateTime)]
    starts_at: String,
    /// The new duration; the current one when absent or null.
    #[schema(value_type = Option<crate::openapi::DurationMinutes>, required = false)]
    duration_minutes: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
struct NoShowRequest {
    #[schema(value_type = crate::openapi::NoShowRequestParty, inline)]
    party: String,
}

fn field<T, E: std::fmt::Display>(name: &str, result: Result<T, E>) -> Result<T, ApiError> {
    result.map_err(|err| ApiError::Validation {
        field: name.to_owned(),
        message: err.to_string(),
    })
}

fn parse_instant(name: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::Validation {
            field: name.to_owned(),
            message: "must be an RFC 3339 timestamp, e.g. 2030-01-31T14:00:00Z".to_owned(),
        })
}

fn parse_reason(text: &str) -> Result<BoundedText, ApiError> {
    field("reason", BoundedText::parse(text, REASON_MAX_CHARS))
}

impl BookRequest {
    fn validate(self, patient: &Caller, now: DateTime<Utc>) -> Result<Booking, ApiError> {
        let mode = match self.mode.as_str() {
            "video" => Mode::Video,
            "voice" => Mode::Voice,
            "messaging" => Mode::Messaging,
            _ => {
                return Err(ApiError::Validation {
                    field: "mode".to_owned(),
                    message: "must be one of video, voice, messaging".to_owned(),
                })
            }
        };
        let phone = self
            .contact
            .phone
            .as_deref()
            .map(PhoneNumber::parse)
            .transpose();
        let email = self
            .contact
            .email
            .as_deref()
            .map(EmailAddress::parse)
            .transpose();
        let contact = field(
            "contact",
            Contact::new(
                field("contact.phone", phone)?,
                field("contact.email", email)?,
                self.contact.whatsapp,
            ),
        )?;
        Ok(Booking {
            consultation_id: Uuid::nil(),
            patient_id: field("sub", PatientId::parse(&patient.id))?,
            provider_id: field("provider_id", ProviderId::parse(&self.provider_id))?,
            starts_at: field(
                "starts_at",
                StartTime::parse(parse_instant("starts_at", &self.starts_at)?, now),
            )?,
            duration: field(
                "duration_minutes",
                DurationMinutes::parse(self.duration_minutes),
            )?,
            mode,
            timezone: field("timezone", TimeZone::parse(&self.timezone))?,
            contact,
            reason: self.reason.as_deref().map(parse_reason).transpose()?,
            price: None,
        })
    }
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound("no such consultation"))
}

/// Whether `caller` is a party to the consultation in one of the roles allowed.
fn authorize(caller: &Caller, booking: &Booking, allowed: &[Role]) -> Result<(), ApiError> {
    let owns = caller.may_see(booking.patient_id.as_str(), booking.provider_id.as_str());
    if !allowed.contains(&caller.role) {
        Err(ApiError::Forbidden("your role may not do this"))
    } else if !owns {
        Err(ApiError::Forbidden("this consultation is not yours"))
    } else {
        Ok(())
    }
}

fn command_body(id: Uuid, committed: &consult_store::Committed<Consultation>) -> Value {
    json!({
        "id": id,
        "status": committed.aggregate.status.as_str(),
        "payment_status": committed.aggregate.payment.as_str(),
        "version": committed.version,
        "position": committed.position,
    })
}

/// The id of a new consultation: random, or with an `Idempotency-Key` derived from the caller
/// and the key, so that a retry whose first attempt committed but lost its answer (and its
/// stored response, in an outage) finds that consultation instead of booking a second one.
fn booking_id(caller: &Caller, idempotency_key: Option<&str>) -> Uuid {
    use sha2::{Digest, Sha256};
    let Some(key) = idempotency_key else {
        return Uuid::new_v4();
    };
    let digest = Sha256::new()
        .chain_update(b"consult booking\n")
        .chain_update(caller.role.as_str().as_bytes())
        .chain_update(b":")
        .chain_update(caller.id.as_bytes())
        .chain_update(b"\n")
        .chain_update(key.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// `POST /v1/consultations` (patient).
#[utoipa::path(
    post,
    path = "/v1/consultations",
    operation_id = "bookConsultation",
    tag = "consultations",
    summary = "Book a consultation",
    description = "Patient only; the patient is the token's `sub`. Creates a consultation in status `requested` under a new UUID. 422 with `field: provider_id` when no provider is registered under that id. `If-Match` is not used: a malformed value is still refused with 422, a well-formed one is ignored.",
    params(
        crate::openapi::BookHeaders
    ),
    request_body(content = BookRequest, description = "What to book."),
    responses(
        (status = 201, description = "Booked (or replayed under its Idempotency-Key).", body = crate::openapi::CommandResult, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."), ("Location" = String, description = "Path of the created resource."), ("Idempotent-Replayed" = String, description = "`true` when this is the stored response to an earlier request with the same Idempotency-Key."))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 429, response = crate::openapi::TooManyRequests),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn book(
    State(state): State<AppState>,
    caller: Caller,
    ctx: CommandContext,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Patient])?;
    idempotent(&state, &caller, &ctx, &body, || async {
        let now = state.clock.now();
        let mut booking = parse_json::<BookRequest>(&body)?.validate(&caller, now)?;
        let provider = state
            .store
            .load::<Provider>(booking.provider_id.as_str())
            .await?
            .and_then(|p| p.aggregate.profile);
        let Some(provider) = provider else {
            return Err(ApiError::Validation {
                field: "provider_id".to_owned(),
                message: "no provider is registered under this id".to_owned(),
            });
        };
        limit_bookings(&state, &caller, now).await?;
        // The fee as it is now is the price of this booking.
        booking.price = provider.fee;
        let id = booking_id(&caller, ctx.idempotency_key.as_deref());
        booking.consultation_id = id;
        let command = ConsultationCommand::Book { booking, at: now };
        let committed = state
            .store
            .execute::<Consultation, ApiError, _>(
                &id.to_string(),
                &metadata(&caller, &ctx),
                None,
                |c| match &c.booking {
                    // The same patient's retry of a booking whose answer was lost (its key's
                    // stored answer went with an outage): the booking stands, nothing to add.
                    Some(existing) if existing.patient_id.as_str() == caller.id => Ok(Vec::new()),
                    _ => c
                        .decide(command.clone())
                        .map_err(ApiError::InvalidTransition),
                },
            )
            .await?;
        tracing::info!(consultation_id = %id, version = committed.version, "consultation booked");
        Ok(Reply {
            status: 201,
            location: Some(format!("/v1/consultations/{id}")),
            body: command_body(id, &committed),
        })
    })
    .await
}

/// Counts a patient's booking against `BOOKING_LIMIT`: past the limit, 429 with the time left
/// in the window. One patient's bookings thus cannot flood a provider's inbox (the flood guard
/// would then drop messages) nor its calendar. Counted only for a booking that is otherwise
/// valid, so a client fixing its mistakes is not locked out.
async fn limit_bookings(
    state: &AppState,
    caller: &Caller,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), ApiError> {
    let limit = state.booking_limit;
    let now_ms = now.timestamp_millis();
    let counted = state
        .store
        .count_request(&format!("book:{}", caller.id), limit.window, now_ms)
        .await?;
    if counted.count <= i64::from(limit.limit) {
        return Ok(());
    }
    tracing::warn!(
        limit = limit.limit,
        "booking refused: the patient's booking limit is reached"
    );
    Err(ApiError::RateLimited {
        message: format!(
            "at most {} bookings per patient within {} minutes; retry after the time in Retry-After",
            limit.limit,
            limit.window.as_secs().div_ceil(60)
        ),
        retry_after: counted.remaining(limit.window, now_ms),
    })
}

/// Runs one command on an existing consultation for a caller allowed to give it.
async fn transition<F>(
    state: AppState,
    caller: Caller,
    ctx: CommandContext,
    id: String,
    body: &[u8],
    allowed: &'static [Role],
    build: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(&[u8], DateTime<Utc>) -> Result<ConsultationCommand, ApiError>,
{
    caller.require(allowed)?;
    let id = parse_id(&id)?;
    idempotent(&state, &caller, &ctx, body, || async {
        let command = build(body, state.clock.now())?;
        let action = command.action();
        let committed = state
            .store
            .execute::<Consultation, ApiError, _>(
                &id.to_string(),
                &metadata(&caller, &ctx),
                ctx.if_match,
                |c| {
                    let booking = c
                        .booking
                        .as_ref()
                        .ok_or(ApiError::NotFound("no such consultation"))?;
                    authorize(&caller, booking, allowed)?;
                    c.decide(command.clone())
                        .map_err(ApiError::InvalidTransition)
                },
            )
            .await?;
        tracing::info!(
            consultation_id = %id,
            action = ?action,
            version = committed.version,
            written = committed.written,
            "command accepted"
        );
        Ok(Reply {
            status: 200,
            location: None,
            body: command_body(id, &committed),
        })
    })
    .await
}

/// `POST /v1/consultations/{id}/accept` (its provider).
#[utoipa::path(
    post,
    path = "/v1/consultations/{id}/accept",
    operation_id = "acceptConsultation",
    tag = "consultations",
    summary = "Accept a requested consultation",
    description = "The provider accepts the request.\n\nAllowed: its provider. Commands are idempotent under `Idempotency-Key`; `If-Match` makes the command conditional on the consultation's current version. This command takes no request body; any body sent is ignored (it still counts towards the 64 KiB limit and the Idempotency-Key fingerprint).",
    params(
        ("id" = String, Path, description = "The consultation's id. Anything that is not a UUID gives 404.", format = Uuid),
        crate::openapi::CommandHeaders
    ),
    responses(
        (status = 200, description = "The command was accepted (or replayed under its Idempotency-Key).", body = crate::openapi::CommandResult, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."), ("Idempotent-Replayed" = String, description = "`true` when this is the stored response to an earlier request with the same Idempotency-Key."))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn accept(
    State(state): State<AppState>,
    caller: Caller,
    ctx: CommandContext,
    PathParam(id): PathParam,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    transition(state, caller, ctx, id, &body, &[Role::Provider], |_, at| {
        Ok(ConsultationCommand::Accept { at })
    })
    .await
}

/// `POST /v1/consultations/{id}/decline` (its provider).
#[utoipa::path(
    post,
    path = "/v1/consultations/{id}/decline",
    operation_id = "declineConsultation",
    tag = "consultations",
    summary = "Decline a requested consultation",
    description = "The provider declines the request, giving a reason.\n\nAllowed: its provider. Commands are idempotent under `Idempotency-Key`; `If-Match` makes the command conditional on the consultation's current version.",
    params(
        ("id" = String, Path, description = "The consultation's id. Anything that is not a UUID gives 404.", format = Uuid),
        crate::openapi::CommandHeaders
    ),
    request_body(content = ReasonRequest, description = "Why the request is declined."),
    responses(
        (status = 200, description = "The command was accepted (or replayed under its Idempotency-Key).", body = crate::openapi::CommandResult, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."), ("Idempotent-Replayed" = String, description = "`true` when this is the stored response to an earlier request with the same Idempotency-Key."))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn decline(
    State(state): State<AppState>,
    caller: Caller,
    ctx: CommandContext,
    PathParam(id): PathParam,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    transition(
        state,
        caller,
        ctx,
        id,
        &body,
        &[Role::Provider],
        |body, at| {
            let request: ReasonRequest = parse_json(body)?;
            Ok(ConsultationCommand::Decline {
                reason: parse_reason(&request.reason)?,
                at,
            })
        },
    )
    .await
}

/// `POST /v1/consultations/{id}/reschedule` (its patient or provider).
#[utoipa::path(
    post,
    path = "/v1/consultations/{id}/reschedule",
    operation_id = "rescheduleConsultation",
    tag = "consultations",
    summary = "Reschedule a consultation",
    description = "Moves an open consultation to a new start, optionally with a new duration.\n\nAllowed: its patient or its provider. Commands are idempotent under `Idempotency-Key`; `If-Match` makes the command conditional on the consultation's current version.",
    params(
        ("id" = String, Path, description = "The consultation's id. Anything that is not a UUID gives 404.", format = Uuid),
        crate::openapi::CommandHeaders
    ),
    request_body(content = RescheduleRequest, description = "The new start and, optionally, duration."),
    responses(
        (status = 200, description = "The command was accepted (or replayed under its Idempotency-Key).", body = crate::openapi::CommandResult, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."), ("Idempotent-Replayed" = String, description = "`true` when this is the stored response to an earlier request with the same Idempotency-Key."))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn reschedule(
    State(state): State<AppState>,
    caller: Caller,
    ctx: CommandContext,
    PathParam(id): PathParam,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let by = if caller.role == Role::Provider {
        Party::Provider
    } else {
        Party::Patient
    };
    let allowed = &[Role::Patient, Role::Provider];
    transition(state, caller, ctx, id, &body, allowed, |body, at| {
        let request: RescheduleRequest = parse_json(body)?;
        let starts_at = parse_instant("starts_at", &request.starts_at)?;
        Ok(ConsultationCommand::Reschedule {
            starts_at: field("starts_at", StartTime::parse(starts_at, at))?,
            duration: request
                .duration_minutes
                .map(|m| field("duration_minutes", DurationMinutes::parse(m)))
                .transpose()?,
            by,
            at,
        })
    })
    .await
}

/// `POST /v1/consultations/{id}/cancel` (its patient, its provider, admin).
#[utoipa::path(
    post,
    path = "/v1/consultations/{id}/cancel",
    operation_id = "cancelConsultation",
    tag = "consultations",
    summary = "Cancel a consultation",
    description = "Cancels an open consultation, giving a reason.\n\nAllowed: its patient, its provider, or an admin. Commands are idempotent under `Idempotency-Key`; `If-Match` makes the command conditional on the consultation's current version.",
    params(
        ("id" = String, Path, description = "The consultation's id. Anything that is not a UUID gives 404.", format = Uuid),
        crate::openapi::CommandHeaders
    ),
    request_body(content = ReasonRequest, description = "Why the consultation is cancelled."),
    responses(
        (status = 200, description = "The command was accepted (or replayed under its Idempotency-Key).", body = crate::openapi::CommandResult, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."), ("Idempotent-Replayed" = String, description = "`true` when this is the stored response to an earlier request with the same Idempotency-Key."))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ctx: CommandContext,
    PathParam(id): PathParam,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let by = match caller.role {
        Role::Provider => Canceller::Provider,
        Role::Admin => Canceller::Admin,
        _ => Canceller::Patient,
    };
    let allowed = &[Role::Patient, Role::Provider, Role::Admin];
    let refund_notice =
        chrono::Duration::from_std(state.payments.refund_notice).unwrap_or(chrono::Duration::MAX);
    transition(state, caller, ctx, id, &body, allowed, |body, at| {
        let request: ReasonRequest = parse_json(body)?;
        Ok(ConsultationCommand::Cancel {
            by,
            reason: parse_reason(&request.reason)?,
            refund_notice,
            at,
        })
    })
    .await
}

/// `POST /v1/consultations/{id}/complete` (its provider).
#[utoipa::path(
    post,
    path = "/v1/consultations/{id}/complete",
    operation_id = "completeConsultation",
    tag = "consultations",
    summary = "Complete a consultation",
    description = "The provider marks the consultation as held.\n\nAllowed: its provider. Commands are idempotent under `Idempotency-Key`; `If-Match` makes the command conditional on the consultation's current version. This command takes no request body; any body sent is ignored (it still counts towards the 64 KiB limit and the Idempotency-Key fingerprint).",
    params(
        ("id" = String, Path, description = "The consultation's id. Anything that is not a UUID gives 404.", format = Uuid),
        crate::openapi::CommandHeaders
    ),
    responses(
        (status = 200, description = "The command was accepted (or replayed under its Idempotency-Key).", body = crate::openapi::CommandResult, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."), ("Idempotent-Replayed" = String, description = "`true` when this is the stored response to an earlier request with the same Idempotency-Key."))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    ctx: CommandContext,
    PathParam(id): PathParam,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    transition(state, caller, ctx, id, &body, &[Role::Provider], |_, at| {
        Ok(ConsultationCommand::Complete { at })
    })
    .await
}

/// `POST /v1/consultations/{id}/no-show` (its provider, admin).
#[utoipa::path(
    post,
    path = "/v1/consultations/{id}/no-show",
    operation_id = "recordNoShow",
    tag = "consultations",
    summary = "Record a no-show",
    description = "Records that the patient or the provider did not show up.\n\nAllowed: its provider, or an admin. Commands are idempotent under `Idempotency-Key`; `If-Match` makes the command conditional on the consultation's current version.",
    params(
        ("id" = String, Path, description = "The consultation's id. Anything that is not a UUID gives 404.", format = Uuid),
        crate::openapi::CommandHeaders
    ),
    request_body(content = NoShowRequest, description = "Who did not show up."),
    responses(
        (status = 200, description = "The command was accepted (or replayed under its Idempotency-Key).", body = crate::openapi::CommandResult, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."), ("Idempotent-Replayed" = String, description = "`true` when this is the stored response to an earlier request with the same Idempotency-Key."))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn no_show(
    State(state): State<AppState>,
    caller: Caller,
    ctx: CommandContext,
    PathParam(id): PathParam,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let allowed = &[Role::Provider, Role::Admin];
    transition(state, caller, ctx, id, &body, allowed, |body, at| {
        let request: NoShowRequest = parse_json(body)?;
        let party = match request.party.as_str() {
            "patient" => Party::Patient,
            "provider" => Party::Provider,
            _ => {
                return Err(ApiError::Validation {
                    field: "party".to_owned(),
                    message: "must be patient or provider".to_owned(),
                })
            }
        };
        Ok(ConsultationCommand::RecordNoShow { party, at })
    })
    .await
}
