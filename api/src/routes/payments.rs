//! The payment provider's webhook (`POST /v1/webhooks/payments`) and the admin's view of what
//! it received.
//!
//! Every delivery is checked against `Stripe-Signature` before anything is read: a bad, missing
//! or stale signature is a 400 and changes nothing. Each provider event id is then processed
//! once: it is claimed with an insert that the primary key of `payment_events` makes atomic, so
//! of two copies arriving together one processes it and the other waits for its outcome. A
//! claim whose processing failed is released (the provider retries); one left by a process that
//! died is taken over after 30 s.

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use chrono::{TimeZone as _, Utc};
use consult_domain::{Consultation, ConsultationCommand, ConsultationError};
use consult_store::{error_chain, ExecuteError, Metadata, PaymentEventClaim};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::extract::{QueryParams, RawBody};
use crate::AppState;

/// How long a second copy waits for the first to finish before asking for a retry.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(5);

/// The fields of a provider event this engine reads.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = PaymentProviderEvent)]
struct ProviderEvent {
    #[schema(examples("evt_1QkatTest0001"))]
    id: String,
    #[serde(rename = "type")]
    #[schema(examples("payment_intent.succeeded"))]
    kind: String,
    #[schema(inline)]
    data: EventData,
}

#[derive(Debug, Deserialize, ToSchema)]
struct EventData {
    #[schema(value_type = Object)]
    object: Value,
}

/// How one event was handled; stored with it and answered to the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The consultation took it (PaymentConfirmed, PaymentFailed, Refunded).
    Applied,
    /// Recorded as PaymentFlagged: amount or currency differs from the price.
    Flagged,
    /// The consultation already had this fact (paid already, refunded already).
    AlreadyRecorded,
    /// The consultation's state refuses it (a payment for a cancelled consultation): kept for
    /// an admin.
    Refused,
    /// Not about a consultation we know, or a type we do not handle.
    Ignored,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Flagged => "flagged",
            Self::AlreadyRecorded => "already_recorded",
            Self::Refused => "refused",
            Self::Ignored => "ignored",
        }
    }
}

/// A text this engine reads from an event, and may store. PostgreSQL's text and jsonb cannot
/// hold a NUL and no provider id, type, currency or consultation id has one, so a NUL in a field
/// that is read is refused (400) as the malformed event it is, before anything is stored.
/// Fields this engine does not read are not looked at: they are never stored.
fn readable<'a>(field: &str, text: &'a str) -> Result<&'a str, ApiError> {
    if text.contains('\0') {
        Err(ApiError::MalformedBody(format!(
            "{field} must not contain NUL characters"
        )))
    } else {
        Ok(text)
    }
}

fn bad_request(field: &str, message: &str) -> ApiError {
    ApiError::Validation {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

/// `POST /v1/webhooks/payments`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/payments",
    operation_id = "paymentWebhook",
    tag = "webhooks",
    summary = "Payment provider webhook",
    description = "Called by the payment provider, not by clients. No bearer token: `Stripe-Signature` (`t=…,v1=…`, any `v1` may match) must be the HMAC-SHA256 of `t` + `.` + the raw body under `PAYMENT_WEBHOOK_SECRET` (the whole `whsec_…` string), and `t` at most `PAYMENT_WEBHOOK_TOLERANCE` (300 s) old; otherwise 400 `bad_signature` and nothing changes. `payment_intent.succeeded` → PaymentConfirmed (or PaymentFlagged when amount or currency is not the price); `payment_intent.payment_failed` → PaymentFailed; `charge.refunded` → Refunded. The consultation is `data.object.metadata.consultation_id`; an unknown one, or another event type, is acknowledged and recorded as ignored. Each provider event id is processed once (a primary key claims it): a repeat, also ten copies at once, answers 200 with `duplicate: true` and changes nothing. 503 `not_configured` without a secret.",
    params(
        crate::openapi::RequestIdHeader
    ),
    request_body(content = ProviderEvent),
    responses(
        (status = 200, description = "Processed, or a repeat of one processed already.", body = crate::openapi::PaymentEventAck, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
    security(("stripeSignature" = [])),
)]
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let Some(secret) = state.payments.secret.as_ref() else {
        return Err(ApiError::NotConfigured(
            "the payment webhook is not configured (PAYMENT_WEBHOOK_SECRET)".to_owned(),
        ));
    };
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    use secrecy::ExposeSecret as _;
    let now = state.clock.now();
    if let Err(err) = consult_reactors::payments::signature::verify(
        header,
        &body,
        secret.expose_secret(),
        now.timestamp(),
        state.payments.tolerance,
    ) {
        tracing::warn!(error = %err, "payment webhook with a bad signature refused");
        return Err(ApiError::BadSignature(err.to_string()));
    }
    let event: ProviderEvent = serde_json::from_slice(&body)
        .map_err(|_| ApiError::MalformedBody("not a payment provider event".to_owned()))?;
    if event.id.is_empty() || event.id.len() > 255 {
        return Err(bad_request("id", "must be the provider's event id"));
    }
    readable("id", &event.id)?;
    readable("type", &event.kind)?;
    let object = &event.data.object;
    let consultation_id = optional_text(object, "/metadata/consultation_id")?
        .unwrap_or("")
        .to_owned();

    let mut waited = Duration::ZERO;
    loop {
        let claim = state
            .store
            .claim_payment_event(
                &event.id,
                &event.kind,
                &consultation_id,
                now.timestamp_millis(),
            )
            .await?;
        match claim {
            PaymentEventClaim::Ours => break,
            PaymentEventClaim::Done(outcome) => {
                return Ok(Json(
                    json!({ "received": true, "duplicate": true, "outcome": outcome }),
                ))
            }
            PaymentEventClaim::Busy if waited < WAIT_FOR_FIRST => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                waited += Duration::from_millis(50);
            }
            PaymentEventClaim::Busy => return Err(ApiError::IdempotencyInProgress),
        }
    }
    let processed = process(&state, &event, &consultation_id).await;
    let (outcome, detail) = match processed {
        Ok(done) => done,
        Err(err) => {
            // Let the provider deliver it again.
            release(&state, &event.id).await;
            return Err(err);
        }
    };
    finish(&state, &event.id, outcome, detail.as_deref()).await?;
    tracing::info!(
        event_id = %event.id,
        event_type = %event.kind,
        consultation_id = %consultation_id,
        outcome = outcome.as_str(),
        "payment event"
    );
    Ok(Json(
        json!({ "received": true, "duplicate": false, "outcome": outcome.as_str() }),
    ))
}

async fn release(state: &AppState, event_id: &str) {
    if let Err(err) = state.store.release_payment_event(event_id).await {
        tracing::warn!(error = %error_chain(&err), "cannot release a payment event's claim; it is taken over after 30 s");
    }
}

async fn finish(
    state: &AppState,
    event_id: &str,
    outcome: Outcome,
    detail: Option<&str>,
) -> Result<(), ApiError> {
    let now = state.clock.now().timestamp_millis();
    state
        .store
        .finish_payment_event(event_id, outcome.as_str(), detail, now)
        .await?;
    Ok(())
}

/// A text field of an object, if it is there; every text read from an object comes through
/// here (see [`readable`]).
fn optional_text<'a>(object: &'a Value, pointer: &str) -> Result<Option<&'a str>, ApiError> {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(|text| readable(&format!("data.object{}", pointer.replace('/', ".")), text))
        .transpose()
}

/// The payment fields of an object, or a 422 naming the missing one.
fn text<'a>(object: &'a Value, pointer: &str) -> Result<&'a str, ApiError> {
    optional_text(object, pointer)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            bad_request(
                &format!("data.object{}", pointer.replace('/', ".")),
                "is required",
            )
        })
}

fn amount(object: &Value, pointer: &str) -> Result<i64, ApiError> {
    object
        .pointer(pointer)
        .and_then(Value::as_i64)
        .filter(|a| *a >= 0)
        .ok_or_else(|| {
            bad_request(
                &format!("data.object{}", pointer.replace('/', ".")),
                "must be a whole number of minor units",
            )
        })
}

async fn process(
    state: &AppState,
    event: &ProviderEvent,
    consultation_id: &str,
) -> Result<(Outcome, Option<String>), ApiError> {
    let object = &event.data.object;
    let now = state.clock.now();
    let command = match event.kind.as_str() {
        "payment_intent.succeeded" => {
            let received = object
                .get("amount_received")
                .and_then(Value::as_i64)
                .map_or_else(|| amount(object, "/amount"), Ok)?;
            ConsultationCommand::ConfirmPayment {
                payment_id: text(object, "/id")?.to_owned(),
                amount_minor: received,
                currency: text(object, "/currency")?.to_ascii_uppercase(),
                at: now,
            }
        }
        "payment_intent.payment_failed" => ConsultationCommand::FailPayment {
            payment_id: text(object, "/id")?.to_owned(),
            at: now,
        },
        "charge.refunded" => ConsultationCommand::RecordRefund {
            payment_id: text(object, "/payment_intent")?.to_owned(),
            amount_minor: amount(object, "/amount_refunded")?,
            at: now,
        },
        other => {
            return Ok((
                Outcome::Ignored,
                Some(format!("event type {other} is not handled")),
            ));
        }
    };
    let known = match Uuid::parse_str(consultation_id) {
        Ok(id) => state
            .store
            .load::<Consultation>(&id.to_string())
            .await?
            .is_some(),
        Err(_) => false,
    };
    if !known {
        tracing::warn!(event_id = %event.id, event_type = %event.kind, "payment event for no known consultation; recorded as ignored");
        return Ok((Outcome::Ignored, Some("no such consultation".to_owned())));
    }
    let metadata = Metadata {
        actor_id: "payments".to_owned(),
        actor_role: "system".to_owned(),
        correlation_id: consultation_id.to_owned(),
        causation_id: event.id.clone(),
        request_id: String::new(),
    };
    let result = state
        .store
        .execute::<Consultation, ConsultationError, _>(consultation_id, &metadata, None, |c| {
            c.decide(command.clone())
        })
        .await;
    match result {
        Ok(committed) => {
            // A confirmation that wrote an event but left the payment unpaid was flagged.
            let flagged = matches!(command, ConsultationCommand::ConfirmPayment { .. })
                && committed.written > 0
                && committed.aggregate.payment != consult_domain::PaymentStatus::Paid;
            if flagged {
                Ok((
                    Outcome::Flagged,
                    Some("amount or currency differs from the consultation's price".to_owned()),
                ))
            } else {
                Ok((Outcome::Applied, None))
            }
        }
        Err(ExecuteError::Refused(ConsultationError::Refused { rule, .. }))
            if matches!(
                rule,
                consult_domain::Rule::AlreadyPaid | consult_domain::Rule::NotPaid
            ) =>
        {
            Ok((Outcome::AlreadyRecorded, Some(rule.to_string())))
        }
        Err(ExecuteError::Refused(err)) => {
            tracing::warn!(event_id = %event.id, error = %err, "payment event refused by the consultation; kept for an admin");
            Ok((Outcome::Refused, Some(err.to_string())))
        }
        Err(ExecuteError::Store(err)) => Err(err.into()),
        Err(ExecuteError::Conflict) => Err(ApiError::ConcurrencyConflict),
        Err(other) => Err(ApiError::Internal(other.to_string().into())),
    }
}

/// `GET /v1/admin/payment-events?outcome=&consultation_id=` (admin, auditor): what the
/// payment webhook received and what became of it, newest first (at most 500). `flagged` and
/// `refused` are the ones an admin must look at.
#[utoipa::path(
    get,
    path = "/v1/admin/payment-events",
    operation_id = "listPaymentEvents",
    tag = "admin",
    summary = "What the payment webhook received",
    description = "Allowed: admin, auditor. Newest first, at most 500. `outcome=flagged` (amount or currency not the price) and `outcome=refused` (the consultation's state refused it, e.g. a payment for a cancelled consultation) need an admin's attention.",
    params(
        ("outcome" = Option<crate::openapi::ListPaymentEventsOutcome>, Query, nullable = false),
        ("consultation_id" = Option<String>, Query, nullable = false),
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "The events.", body = crate::openapi::PaymentEventList, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 400, response = crate::openapi::BadQuery),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    params: QueryParams,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    params.only(&["outcome", "consultation_id"])?;
    const OUTCOMES: [&str; 5] = [
        "applied",
        "flagged",
        "already_recorded",
        "refused",
        "ignored",
    ];
    if let Some(outcome) = params.get("outcome") {
        if !OUTCOMES.contains(&outcome) {
            return Err(ApiError::BadQuery {
                param: "outcome".into(),
                message: format!("must be one of {}", OUTCOMES.join(", ")),
            });
        }
    }
    let rows = state
        .store
        .payment_events(params.get("outcome"), params.get("consultation_id"))
        .await?;
    let at = |ms: i64| {
        Utc.timestamp_millis_opt(ms)
            .single()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    let items: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "event_id": r.event_id,
                "event_type": r.event_type,
                "consultation_id": (!r.consultation_id.is_empty()).then_some(r.consultation_id),
                "outcome": r.outcome,
                "detail": r.detail,
                "received_at": at(r.received_at_ms),
                "finished_at": r.finished_at_ms.and_then(at),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}
