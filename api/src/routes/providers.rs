use axum::extract::State;
use axum::response::Response;
use axum::Json;
use consult_domain::{
    BoundedText, EmailAddress, Money, PhoneNumber, Provider, ProviderCommand, ProviderError,
    ProviderId, ProviderProfile, TimeZone,
};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::auth::{Caller, Role};
use crate::command::{idempotent, metadata, Reply};
use crate::error::ApiError;
use crate::extract::{parse_json, CommandContext, PathParam, RawBody};
use crate::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = RegisterProviderRequest)]
struct RegisterRequest {
    #[schema(value_type = crate::openapi::Identifier)]
    id: String,
    /// 1 to 200 characters after trimming, no control characters other than line breaks and tabs.
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    #[schema(value_type = crate::openapi::PhoneNumber)]
    phone: String,
    #[schema(value_type = crate::openapi::EmailAddress)]
    email: String,
    #[schema(value_type = crate::openapi::TimeZoneName)]
    timezone: String,
    /// The consultation fee; each booking records it as its price, and a payment must match it exactly to confirm.
    #[schema(value_type = crate::openapi::Money)]
    fee: FeeRequest,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeeRequest {
    amount_minor: i64,
    currency: String,
}

impl RegisterRequest {
    fn validate(&self) -> Result<ProviderProfile, ApiError> {
        Ok(ProviderProfile {
            id: ProviderId::parse(&self.id).map_err(|e| ApiError::validation("id", &e))?,
            name: BoundedText::parse(&self.name, 200)
                .map_err(|e| ApiError::validation("name", &e))?,
            phone: PhoneNumber::parse(&self.phone)
                .map_err(|e| ApiError::validation("phone", &e))?,
            email: EmailAddress::parse(&self.email)
                .map_err(|e| ApiError::validation("email", &e))?,
            timezone: TimeZone::parse(&self.timezone)
                .map_err(|e| ApiError::validation("timezone", &e))?,
            fee: Some(
                Money::parse(self.fee.amount_minor, &self.fee.currency).map_err(|e| {
                    let field = match e {
                        consult_domain::InvalidInput::Currency => "fee.currency",
                        _ => "fee.amount_minor",
                    };
                    ApiError::validation(field, &e)
                })?,
            ),
        })
    }
}

fn view(profile: &ProviderProfile, full: bool) -> Value {
    let mut body = json!({
        "id": profile.id.as_str(),
        "name": profile.name.as_str(),
        "timezone": profile.timezone.name(),
        "fee": profile.fee.as_ref().map(|fee| json!({
            "amount_minor": fee.amount_minor,
            "currency": fee.currency,
        })),
    });
    if full {
        body["phone"] = json!(profile.phone.as_str());
        body["email"] = json!(profile.email.as_str());
    }
    body
}

/// `POST /v1/providers` (admin).
#[utoipa::path(
    post,
    path = "/v1/providers",
    operation_id = "registerProvider",
    tag = "providers",
    summary = "Register a provider",
    description = "Admin only. Registers a clinician under an id chosen by the admin. 409 `already_exists` when the id is taken.",
    params(
        crate::openapi::CommandHeaders
    ),
    request_body(content = RegisterRequest, description = "The provider's profile."),
    responses(
        (status = 201, description = "Registered (or replayed under its Idempotency-Key).", body = crate::openapi::ProviderRegistered, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."), ("Location" = String, description = "Path of the created resource."), ("Idempotent-Replayed" = String, description = "`true` when this is the stored response to an earlier request with the same Idempotency-Key."))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 409, response = crate::openapi::Conflict),
        (status = 412, response = crate::openapi::PreconditionFailed),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    ctx: CommandContext,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    idempotent(&state, &caller, &ctx, &body, || async {
        let profile = parse_json::<RegisterRequest>(&body)?.validate()?;
        let command = ProviderCommand::Register {
            profile: profile.clone(),
            at: state.clock.now(),
        };
        let committed = state
            .store
            .execute::<Provider, ApiError, _>(
                profile.id.as_str(),
                &metadata(&caller, &ctx),
                ctx.if_match,
                |provider| {
                    provider.decide(command.clone()).map_err(|err| match err {
                        ProviderError::AlreadyRegistered => {
                            ApiError::AlreadyExists("a provider with this id is registered already")
                        }
                    })
                },
            )
            .await?;
        tracing::info!(provider_id = %profile.id, "provider registered");
        let mut body = view(&profile, true);
        body["status"] = json!("registered");
        body["version"] = json!(committed.version);
        body["position"] = json!(committed.position);
        Ok(Reply {
            status: 201,
            location: Some(format!("/v1/providers/{}", profile.id)),
            body,
        })
    })
    .await
}

/// `GET /v1/providers/{id}`: contact details for admins, auditors and the provider itself;
/// name and time zone for everyone signed in.
#[utoipa::path(
    get,
    path = "/v1/providers/{id}",
    operation_id = "getProvider",
    tag = "providers",
    summary = "Get a provider",
    description = "Any signed-in caller. `phone` and `email` are included only for admins, auditors and the provider itself; others get `id`, `name` and `timezone`.",
    params(
        ("id" = crate::openapi::Identifier, Path, description = "The provider's id. Anything that is not a valid provider id gives 404."),
        crate::openapi::RequestIdHeader
    ),
    responses(
        (status = 200, description = "The provider.", body = crate::openapi::Provider, headers(("X-Request-Id" = String, description = "The request's id: the client's `X-Request-Id` or a generated UUID."))),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::InternalError),
        (status = 503, response = crate::openapi::ServiceUnavailable)
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Json<Value>, ApiError> {
    let id = ProviderId::parse(&id).map_err(|_| ApiError::NotFound("no such provider"))?;
    let provider = state
        .store
        .load::<Provider>(id.as_str())
        .await?
        .and_then(|loaded| loaded.aggregate.profile)
        .ok_or(ApiError::NotFound("no such provider"))?;
    let full = matches!(caller.role, Role::Admin | Role::Auditor)
        || (caller.role == Role::Provider && caller.id == id.as_str());
    Ok(Json(view(&provider, full)))
}
