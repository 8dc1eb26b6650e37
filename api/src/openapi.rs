//! The API's OpenAPI 3.1 description, generated from the code: the router registers each
//! handler with its `#[utoipa::path]` (see `crate::router`), the request and response shapes
//! below derive their schemas, and this module adds what every operation shares: the
//! problem+json error responses, the security schemes, the tags and the document's `info`.
//!
//! Most response shapes here are not the handlers' own types (the handlers answer with
//! `serde_json::json!`); the route tests and the API fuzzing check that the answers match them.

use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{
    AllOfBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{OpenApi, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoParams, Modify, ToResponse, ToSchema};

/// `application/problem+json` with a `Problem` narrowed to one status and some codes.
fn problem_response(
    description: &str,
    status: u16,
    codes: &[&str],
    headers: &[(&str, &str, Option<&str>)],
) -> RefOr<Response> {
    let narrowed = ObjectBuilder::new()
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([status])),
        )
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(codes.iter().copied())),
        );
    let schema = AllOfBuilder::new()
        .item(Ref::from_schema_name("Problem"))
        .item(narrowed);
    let mut response = ResponseBuilder::new().description(description).content(
        "application/problem+json",
        ContentBuilder::new()
            .schema(Some(Schema::AllOf(schema.build())))
            .build(),
    );
    for (name, description, value) in headers {
        response = response.header(*name, header(description, *value));
    }
    RefOr::T(response.build())
}

/// A string header, fixed to `value` when given.
fn header(description: &str, value: Option<&str>) -> utoipa::openapi::Header {
    let mut schema = ObjectBuilder::new().schema_type(Type::String);
    if let Some(value) = value {
        schema = schema.enum_values(Some([value]));
    }
    HeaderBuilder::new()
        .schema(schema)
        .description(Some(description))
        .build()
}

/// What the router's operations do not say themselves.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Consult API", version = env!("CARGO_PKG_VERSION"), license(name = "Apache-2.0", identifier = "Apache-2.0")),
    security(("bearerAuth" = [])),
    components(responses(
        BadRequest,
        BadQuery,
        Unauthorized,
        Forbidden,
        BadSignature,
        NotFound,
        Conflict,
        PreconditionFailed,
        PayloadTooLarge,
        TooManyRequests,
        UnprocessableEntity,
        InternalError,
        ServiceUnavailable
    ), schemas(Problem, ListConsultationsStatus, ListPaymentEventsOutcome, RebuildProjectionName)),
    modifiers(&Shared)
)]
pub struct ApiDoc;

/// Security schemes, tags and the description.
#[derive(Debug)]
struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut OpenApi) {
        openapi.info.description = Some(INFO_DESCRIPTION.to_owned());
        openapi.tags = Some(
            TAGS.iter()
                .map(|(name, description)| {
                    TagBuilder::new()
                        .name(*name)
                        .description(Some(*description))
                        .build()
                })
                .collect(),
        );
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(BEARER_DESCRIPTION))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "twilioSignature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Twilio-Signature",
                TWILIO_SIGNATURE_DESCRIPTION,
            ))),
        );
        components.add_security_scheme(
            "stripeSignature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Stripe-Signature",
                STRIPE_SIGNATURE_DESCRIPTION,
            ))),
        );
    }
}

/// The finished document as JSON: `info.summary` (which the model lacks) added, and the
/// open routes' `security(())` (one empty requirement) turned into `security: []`.
pub fn finish(mut openapi: OpenApi) -> Value {
    for item in openapi.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(security) = &mut operation.security {
                if security.len() == 1 && security[0] == Default::default() {
                    security.clear();
                }
            }
        }
    }
    let mut document = serde_json::to_value(&openapi).unwrap_or(Value::Null);
    if let Some(info) = document.get_mut("info").and_then(Value::as_object_mut) {
        info.insert("summary".to_owned(), Value::from(INFO_SUMMARY));
    }
    document
}

/// The shared `BadRequest` response.
#[derive(Debug)]
pub struct BadRequest;

impl<'s> ToResponse<'s> for BadRequest {
    fn response() -> (&'s str, RefOr<Response>) {
        (
            "BadRequest",
            problem_response(
                "The body is not JSON, is empty where one is required, lacks a required field or has a field of the wrong JSON type, or a signed webhook has a NUL character in a field the server reads (`validation_failed`). `bad_signature`: the payment webhook's `Stripe-Signature` is missing, wrong or too old.",
                400,
                &["validation_failed", "bad_signature"],
                &[X_REQUEST_ID],
            ),
        )
    }
}

/// The shared `BadQuery` response.
#[derive(Debug)]
pub struct BadQuery;

impl<'s> ToResponse<'s> for BadQuery {
    fn response() -> (&'s str, RefOr<Response>) {
        (
            "BadQuery",
            problem_response(
                "A query parameter is not one this route takes, is given more than once, or has a refused value (`validation_failed`); `field` names it (`query` when the query string cannot be decoded at all).",
                400,
                &["validation_failed"],
                &[X_REQUEST_ID],
            ),
        )
    }
}

/// The shared `Unauthorized` response.
#[derive(Debug)]
pub struct Unauthorized;

impl<'s> ToResponse<'s> for Unauthorized {
    fn response() -> (&'s str, RefOr<Response>) {
        (
            "Unauthorized",
            problem_response(
                "No bearer token, or it is malformed, badly signed or expired.",
                401,
                &["unauthorized"],
                &[X_REQUEST_ID, WWW_AUTHENTICATE],
            ),
        )
    }
}

/// The shared `Forbidden` response.
#[derive(Debug)]
pub struct Forbidden;

impl<'s> ToResponse<'s> for Forbidden {
    fn response() -> (&'s str, RefOr<Response>) {
        (
            "Forbidden",
            problem_response(
                "The caller's role may not do this, or the consultation is not theirs.",
                403,
                &["forbidden"],
                &[X_REQUEST_ID],
            ),
        )
    }
}

/// The shared `BadSignature` response.
#[derive(Debug)]
pub struct BadSignature;

impl<'s> ToResponse<'s> for BadSignature {
    fn response() -> (&'s str, RefOr<Response>) {
        (
            "BadSignature",
            problem_response(
                "`X-Twilio-Signature` is missing or does not match the request, or Twilio is not configured on this server (`forbidden`). Nothing is changed.",
                403,
                &["forbidden"],
                &[X_REQUEST_ID],
            ),
        )
    }
}

/// The shared `NotFound` response.
#[derive(Debug)]
pub struct NotFound;

impl<'s> ToResponse<'s> for NotFound {
    fn response() -> (&'s str, RefOr<Response>) {
        (
            "NotFound",
            problem_response("No such resource.", 404, &["not_found"], &[X_REQUEST_ID]),
        )
    }
}

/// The shared `Conflict` response.
#[derive(Debug)]
pub struct Conflict;

impl<'s> ToResponse<'s> for Conflict {
    fn response() -> (&'s str, RefOr<Response>) {
        (
            "Conflict",
            problem_response(
                "`invalid_transition`: the command is not allowed in the consultation's current state; `slot_conflict`: the provider has an accepted consultation overlapping this time; `already_exists`: a provider with this id is registered already; `concurrency_conflict`: the stream kept changing under concurrent requests, or a request with this Idempotency-Key is still running (then with `Retry-After`). Retry the latter two. For video tokens and voice calls: `not_joinable` (the consultation is not confirmed or in progress), `outside_window` (before `VIDEO_JOIN_BEFORE` ahead of the start, or after `VIDEO_GRACE` past the end), `room_not_ready` (the room is being created; retry in a minute), `not_video` / `not_voice` (wrong mode), `no_phone` (the booking has no phone number to ring).",
                409,
                &["invalid_transition", "slot_conflict", "already_exists", "concurrency_conflict", "not_joinable", "outside_window", "room_not_ready", "not_video", "not_voice", "no_phone"],
                &[X_REQUEST_ID, RETRY_AFTER],
            ),
        )
    }
}

/// The shared `PreconditionFailed` response.
#[derive(Debug)]
pub struct PreconditionFailed;

impl<'s> ToResponse<'s> for PreconditionFailed {
    fn response() -> (&'s str, RefOr<Response>) {
        (
            "PreconditionFailed",
            problem_response(
                "The stream is not at the version named in `If-Match`.",
                412,
                &["precondition_failed"],
                &[X_REQUEST_ID],
            ),
        )
    }
}

/// The shared `PayloadTooLarge` response.
#[derive(Debug)]
pub struct PayloadTooLarge;

impl<'s> ToResponse<'s> for PayloadTooLarge {
    fn response() -> (&'s str, RefOr<Response>) {
        (
            "PayloadTooLarge",
            problem_response(
                "The request body is larger than 64 KiB.",
                413,
                &["payload_too_large"],
                &[X_REQUEST_ID],
            ),
        )
    }
}

/// The shared `TooManyRequests` response.
#[derive(Debug)]
pub struct TooManyRequests;

impl<'s> ToResponse<'s> for TooManyRequests {
    fn response() -> (&'s str, RefOr<Response>) {
        (
            "TooManyRequests",
            problem_response(
                "Too many requests of this kind by this caller (`rate_limited`): a patient's bookings past `BOOKING_LIMIT` within its window. `Retry-After` says in how many seconds the window ends.",
                429,
                &["rate_limited"],
                &[X_REQUEST_ID, RETRY_AFTER],
            ),
        )
    }
}

/// The shared `UnprocessableEntity` response.
#[derive(Debug)]
pub struct UnprocessableEntity;

impl<'s> ToResponse<'s> for UnprocessableEntity {
    fn response() -> (&'s str, RefOr<Response>) {
        (
            "UnprocessableEntity",
            problem_response(
                "`validation_failed`: a value was refused, named in `field`; `idempotency_mismatch`: the Idempotency-Key was used with a different request.",
                422,
                &["validation_failed", "idempotency_mismatch"],
                &[X_REQUEST_ID],
            ),
        )
    }
}

/// The shared `InternalError` response.
#[derive(Debug)]
pub struct InternalError;

impl<'s> ToResponse<'s> for InternalError {
    fn response() -> (&'s str, RefOr<Response>) {
        (
            "InternalError",
            problem_response(
                "Something unexpected failed; the cause is logged, not sent.",
                500,
                &["internal"],
                &[X_REQUEST_ID],
            ),
        )
    }
}

/// The shared `ServiceUnavailable` response.
#[derive(Debug)]
pub struct ServiceUnavailable;

impl<'s> ToResponse<'s> for ServiceUnavailable {
    fn response() -> (&'s str, RefOr<Response>) {
        (
            "ServiceUnavailable",
            problem_response(
                "Storage is unavailable (or, for `/readyz`, not migrated); retry shortly. `not_configured`: the capability asked for (video access tokens, voice calls) has no provider configured on this server. The payment webhook answers it without `PAYMENT_WEBHOOK_SECRET`.",
                503,
                &["storage_unavailable", "not_configured"],
                &[X_REQUEST_ID, RETRY_AFTER],
            ),
        )
    }
}

const X_REQUEST_ID: (&str, &str, Option<&str>) = (
    "X-Request-Id",
    "The request's id: the client's `X-Request-Id` or a generated UUID.",
    None,
);
const WWW_AUTHENTICATE: (&str, &str, Option<&str>) = (
    "WWW-Authenticate",
    "The authentication scheme to use.",
    Some("Bearer"),
);
const RETRY_AFTER: (&str, &str, Option<&str>) =
    ("Retry-After", "Seconds to wait before retrying.", None);

const BEARER_DESCRIPTION: &str = "HS256 JWT signed with the server's secret. Claims: `sub` (the caller's id, 1 to 64 of letters, digits, `.`, `_`, `-`), `role` (`patient`, `provider`, `admin` or `auditor`), `exp` (seconds since the Unix epoch). Development tokens: `consult token --role provider --sub prov-1`.";
const TWILIO_SIGNATURE_DESCRIPTION: &str = "Twilio's request signature, checked with the account's Auth Token (`TWILIO_AUTH_TOKEN`): `base64(HMAC-SHA1(auth token, url + params))`, where `url` is `PUBLIC_BASE_URL` (without a trailing `/`) followed by the request's path and query, and `params` is every form parameter sorted by name, each as its name followed by its value, without separators. The URL is also accepted with its default port (`:443`, `:80`) added or removed. Compared in constant time.";
const STRIPE_SIGNATURE_DESCRIPTION: &str =
    "`t=<unix time>,v1=<hex HMAC-SHA256 of t.body under the whsec_ secret>`.";
const INFO_SUMMARY: &str = "Event-sourced telehealth consultation engine: providers, the consultation lifecycle, notifications, read models and their operation.";
const INFO_DESCRIPTION: &str = "JSON over HTTP. Timestamps are RFC 3339 in UTC; consultation ids are UUIDs.\n\n**Auth**: every `/v1` route except Twilio's callback (`POST /v1/webhooks/twilio/messages`, which is signed instead) needs `Authorization: Bearer <JWT>` (HS256, claims `sub`, `role` = `patient` | `provider` | `admin` | `auditor`, `exp`). The scheme's case does not matter (`bearer` works). A missing, malformed, badly signed or expired token gives 401, and so does one made to live longer than the server accepts (`exp` − `iat`, or `exp` − now without `iat`, beyond `AUTH_MAX_TOKEN_LIFETIME`, 24 h by default); a role that may not use the route gives 403.\n\n**Errors** are `application/problem+json` (RFC 9457): `{type, title, status, detail, code}` plus `field` when a single input field was refused. A body that is not JSON, lacks a required field or has a field of the wrong JSON type gives 400; a well-formed value that is refused (range, format, state) gives 422.\n\n**Commands** (POST) accept `Idempotency-Key`: the same key with the same body returns the stored response (with `Idempotent-Replayed: true`); the same key with a different request gives 422 `idempotency_mismatch`; while the first request is still running, 409 `concurrency_conflict` with `Retry-After`. `If-Match: <version>` makes a command conditional: 412 when the stream is at another version. Request bodies are limited to 64 KiB (413).\n\n**Reads** of consultations (`GET /v1/consultations/{id}`, `GET /v1/consultations`, `GET /v1/providers/{id}/schedule`) are served from the `consultations` read model, which a projection brings up to date shortly after each command. To read your own write, pass `after=<position>` with the `position` your command returned: the read first waits, at most 2 s, until the projection has handled that position of the global log. When the wait runs out the read is answered anyway and marked `X-Projection-Stale: true`. Read routes refuse query parameters they do not take, and parameters given twice, with 400 `validation_failed` naming the parameter in `field`. Lists are pages: pass the `next_cursor` of one page as `cursor` to get the next; it is null on the last page.\n\nEvery response carries `X-Request-Id`: the client's own when it is a sane token, otherwise a generated UUID. Every response carries `X-Content-Type-Options: nosniff`, and every one but `/openapi.json` and `/docs` `Cache-Control: no-store`.";
const TAGS: &[(&str, &str)] = &[
    ("operations", "Liveness, readiness and Prometheus metrics."),
    ("providers", "The provider directory."),
    ("consultations", "Booking, the consultation lifecycle, lists and schedules."),
    ("notifications", "What the `notifications` reactor sent about a consultation, to whom, through which channel, and with what outcome."),
    ("admin", "Subscriptions (projections and reactors), projection rebuilds, and the dead letters of the notification jobs with their retry."),
    ("webhooks", "Callbacks from the messaging providers, authenticated by their signature instead of a bearer token."),
    ("documentation", "This document and a page that lists it."),
    ("audit", "History, tamper evidence, access log, FHIR export."),
];

/// The `X-Request-Id` header every route takes.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct RequestIdHeader {
    /// The client's id for this request, echoed in the response and logged when it is 1 to 128 letters, digits, `.`, `_`, `:`, `-`. Any other value is accepted and replaced, like an absent one, by a generated UUID.
    #[param(rename = "X-Request-Id", nullable = false)]
    request_id: Option<String>,
}

/// The headers of a command that creates a consultation: `If-Match` is not used.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct BookHeaders {
    /// Makes the command safe to retry: the same key with the same request replays the stored response; with a different request, 422 `idempotency_mismatch`. Keys are scoped to the caller. A key that is not 1 to 128 letters, digits, `-`, `_`, `.`, `:` gives 422 with `field: Idempotency-Key`.
    #[param(
        rename = "Idempotency-Key",
        pattern = "^[A-Za-z0-9._:-]{1,128}$",
        nullable = false
    )]
    idempotency_key: Option<String>,
    /// Recorded in the metadata of the events the command writes when it is 1 to 128 letters, digits, `.`, `_`, `:`, `-`. Any other value is accepted and replaced, like an absent one, by the request id.
    #[param(rename = "X-Correlation-Id", nullable = false)]
    correlation_id: Option<String>,
    /// The client's id for this request, echoed in the response and logged when it is 1 to 128 letters, digits, `.`, `_`, `:`, `-`. Any other value is accepted and replaced, like an absent one, by a generated UUID.
    #[param(rename = "X-Request-Id", nullable = false)]
    request_id: Option<String>,
}

/// The headers of a command on an existing stream.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct CommandHeaders {
    /// Makes the command safe to retry: the same key with the same request replays the stored response; with a different request, 422 `idempotency_mismatch`. Keys are scoped to the caller. A key that is not 1 to 128 letters, digits, `-`, `_`, `.`, `:` gives 422 with `field: Idempotency-Key`.
    #[param(
        rename = "Idempotency-Key",
        pattern = "^[A-Za-z0-9._:-]{1,128}$",
        nullable = false
    )]
    idempotency_key: Option<String>,
    /// The version the stream must be at for the command to run: `3`, `"3"` or `W/"3"`. 412 `precondition_failed` when it has moved on; 422 with `field: If-Match` when the value is not a version number.
    #[param(
        rename = "If-Match",
        pattern = "^(W/)?(\"[0-9]+\"|[0-9]+)$",
        nullable = false
    )]
    if_match: Option<String>,
    /// Recorded in the metadata of the events the command writes when it is 1 to 128 letters, digits, `.`, `_`, `:`, `-`. Any other value is accepted and replaced, like an absent one, by the request id.
    #[param(rename = "X-Correlation-Id", nullable = false)]
    correlation_id: Option<String>,
    /// The client's id for this request, echoed in the response and logged when it is 1 to 128 letters, digits, `.`, `_`, `:`, `-`. Any other value is accepted and replaced, like an absent one, by a generated UUID.
    #[param(rename = "X-Request-Id", nullable = false)]
    request_id: Option<String>,
}

// The shapes of requests and responses.

/// RFC 9457 problem details with a stable machine-readable `code`. Never contains a stack trace, SQL text or the offending input value.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// `urn:consult:problem:` followed by `code`.
    #[serde(rename = "type")]
    #[schema(
        pattern = "^urn:consult:problem:[a-z_]+$",
        examples("urn:consult:problem:validation_failed")
    )]
    pub kind: String,
    /// The HTTP status's reason phrase.
    #[schema(examples("Unprocessable Entity"))]
    pub title: String,
    #[schema(minimum = 400, maximum = 599)]
    pub status: i64,
    /// What went wrong, for people.
    pub detail: String,
    #[schema(inline)]
    pub code: ProblemCode,
    /// The input that was refused (`provider_id`, `contact.phone`, `Idempotency-Key`, …) on 422 `validation_failed`; on 400 `validation_failed` from a read route, the query parameter (`after`, `status`, `to`, …, or `query` when the query string cannot be decoded at all).
    #[schema(required = false, nullable = false)]
    pub field: Option<String>,
}

/// The answer to a consultation command.
#[derive(Serialize, ToSchema)]
pub struct CommandResult {
    #[schema(format = Uuid)]
    pub id: String,
    pub status: ConsultationStatus,
    pub payment_status: PaymentStatus,
    /// The stream's version (number of events) after the command; use it in `If-Match`.
    #[schema(minimum = 1)]
    pub version: i64,
    /// Global log position of the last event written (of the stream's last event when the command changed nothing).
    #[schema(minimum = 0)]
    pub position: i64,
}

/// A consultation as the `consultations` read model holds it. Lists leave out `reason` (medical information).
#[derive(Serialize, ToSchema)]
pub struct ConsultationSummary {
    #[schema(format = Uuid)]
    pub id: String,
    pub status: ConsultationStatus,
    pub payment_status: PaymentStatus,
    pub patient_id: Identifier,
    pub provider_id: Identifier,
    #[schema(format = DateTime)]
    pub starts_at: String,
    /// `starts_at` plus `duration_minutes`.
    #[schema(format = DateTime)]
    pub ends_at: String,
    pub duration_minutes: DurationMinutes,
    pub timezone: TimeZoneName,
    pub mode: Mode,
    /// The video room, once one is provisioned.
    #[schema(required = true)]
    pub room: Option<Room>,
    /// The stream's version (number of events) the read model has folded; use it in `If-Match`.
    #[schema(minimum = 1)]
    pub version: i64,
    /// Global log position of the consultation's last event folded into the read model. `after=<position>` on a later read waits at least for this state.
    #[schema(minimum = 1)]
    pub position: i64,
    /// When the last event folded into the read model happened.
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// A consultation as the `consultations` read model holds it, with the patient's reason.
#[derive(Serialize, ToSchema)]
pub struct Consultation {
    #[serde(flatten)]
    pub base: ConsultationSummary,
    /// The patient's reason for the consultation (medical information).
    #[schema(max_length = 2000, required = true)]
    pub reason: Option<String>,
    /// The provider's fee when booked.
    #[schema(required = true)]
    pub price: Option<Money>,
    /// A payment arrived whose amount or currency was not the price: it was recorded but did not pay; see `GET /v1/admin/payment-events?outcome=flagged`.
    pub payment_flagged: bool,
    /// The payment provider's id of the refund requested, once it took the request.
    #[schema(required = true)]
    pub refund_id: Option<String>,
}

/// One page of consultations, ordered by `starts_at`, then `id`.
#[derive(Serialize, ToSchema)]
pub struct ConsultationPage {
    pub items: Vec<ConsultationSummary>,
    /// Pass as `cursor` for the next page; null when there are no more items.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// A consultation that occupies part of the provider's time.
#[derive(Serialize, ToSchema)]
pub struct ScheduleEntry {
    #[schema(format = Uuid)]
    pub consultation_id: String,
    /// Declined, cancelled and expired consultations are not in a schedule.
    #[schema(inline)]
    pub status: ScheduleEntryStatus,
    #[schema(format = DateTime)]
    pub starts_at: String,
    #[schema(format = DateTime)]
    pub ends_at: String,
    pub mode: Mode,
    pub patient_id: Identifier,
}

/// One page of a provider's schedule, ordered by `starts_at`, then `consultation_id`.
#[derive(Serialize, ToSchema)]
pub struct Schedule {
    pub provider_id: Identifier,
    /// Start of the range (the query's `from`, or the time of the request), in UTC.
    #[schema(format = DateTime)]
    pub from: String,
    /// End of the range, exclusive (the query's `to`, or `from` plus 7 days), in UTC.
    #[schema(format = DateTime)]
    pub to: String,
    pub items: Vec<ScheduleEntry>,
    /// Pass as `cursor` for the next page; null when there are no more items.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Room {
    /// Random and unguessable (128 bits); joining also takes an access token.
    pub name: String,
    /// The video provider hosting the room.
    pub provider: String,
    /// Whether the room has ended (after the consultation, or closed by the provider); it stays on record.
    pub ended: bool,
}

/// 1 to 64 letters, digits, `.`, `_` or `-`, the first a letter or digit (so `.` and `..` are not ids).
#[derive(Debug, Serialize)]
pub struct Identifier(pub String);

impl utoipa::PartialSchema for Identifier {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("1 to 64 letters, digits, `.`, `_` or `-`, the first a letter or digit (so `.` and `..` are not ids)."))
            .pattern(Some("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"))
            .min_length(Some(1))
            .max_length(Some(64))
            .examples(["prov-1"])
            .into()
    }
}

impl ToSchema for Identifier {}

/// E.164: `+`, then 8 to 15 digits not starting with 0.
#[derive(Debug, Serialize)]
pub struct PhoneNumber(pub String);

impl utoipa::PartialSchema for PhoneNumber {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("E.164: `+`, then 8 to 15 digits not starting with 0."))
            .pattern(Some("^\\+[1-9][0-9]{7,14}$"))
            .examples(["+14155550123"])
            .into()
    }
}

impl ToSchema for PhoneNumber {}

/// An address the server's mailer can send to: `local@domain`, at most 254 bytes. The local part is 1 to 64 bytes of dot-separated, non-empty atoms of letters, digits (any script) and ``!#$%&'*+-/=?^_`{|}~``; the domain has at least two dot-separated labels of 1 to 63 bytes of letters, digits (any script) and `-`, each starting and ending with a letter or digit. Quoted local parts (`"a b"@x.org`), IP literals (`a@[127.0.0.1]`), display names (`Pat <pat@x.org>`) and lists (`a,b@x.org`) give 422.
#[derive(Debug, Serialize)]
pub struct EmailAddress(pub String);

impl utoipa::PartialSchema for EmailAddress {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("An address the server's mailer can send to: `local@domain`, at most 254 bytes. The local part is 1 to 64 bytes of dot-separated, non-empty atoms of letters, digits (any script) and ``!#$%&'*+-/=?^_`{|}~``; the domain has at least two dot-separated labels of 1 to 63 bytes of letters, digits (any script) and `-`, each starting and ending with a letter or digit. Quoted local parts (`\"a b\"@x.org`), IP literals (`a@[127.0.0.1]`), display names (`Pat <pat@x.org>`) and lists (`a,b@x.org`) give 422."))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
            .max_length(Some(254))
            .examples(["name@example.org"])
            .into()
    }
}

impl ToSchema for EmailAddress {}

/// An IANA time zone name.
#[derive(Debug, Serialize)]
pub struct TimeZoneName(pub String);

impl utoipa::PartialSchema for TimeZoneName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("An IANA time zone name."))
            .min_length(Some(1))
            .examples(["Europe/Paris"])
            .into()
    }
}

impl ToSchema for TimeZoneName {}

#[derive(Debug, Serialize)]
pub struct DurationMinutes(pub i64);

impl utoipa::PartialSchema for DurationMinutes {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(5))
            .maximum(Some(240))
            .into()
    }
}

impl ToSchema for DurationMinutes {}

/// Free text, 1 to 2000 characters after trimming, no control characters other than line breaks and tabs. Medical information: shown to participants and auditors, never logged or sent over SMS/WhatsApp.
#[derive(Debug, Serialize)]
pub struct Reason(pub String);

impl utoipa::PartialSchema for Reason {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("Free text, 1 to 2000 characters after trimming, no control characters other than line breaks and tabs. Medical information: shown to participants and auditors, never logged or sent over SMS/WhatsApp."))
            .min_length(Some(1))
            .max_length(Some(2000))
            .into()
    }
}

impl ToSchema for Reason {}

/// A provider. `phone` and `email` only for admins, auditors and the provider itself.
#[derive(Serialize, ToSchema)]
pub struct Provider {
    pub id: Identifier,
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    pub timezone: TimeZoneName,
    #[schema(required = false, nullable = false)]
    pub phone: Option<PhoneNumber>,
    #[schema(required = false, nullable = false)]
    pub email: Option<EmailAddress>,
    /// The consultation fee (null for providers registered before fees existed).
    #[schema(required = true)]
    pub fee: Option<Money>,
}

/// The registered provider with its contact details.
#[derive(Serialize, ToSchema)]
pub struct ProviderRegistered {
    #[serde(flatten)]
    pub base: Provider,
    #[schema(inline)]
    pub status: ProviderRegisteredStatus,
    #[schema(minimum = 1)]
    pub version: i64,
    #[schema(minimum = 0)]
    pub position: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(inline)]
    pub status: HealthStatus,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    #[schema(inline)]
    pub status: ReadinessStatus,
    #[schema(inline)]
    pub backend: ReadinessBackend,
}

/// A subscription: a named handler fed the global log in order, with a durable checkpoint and a lease held by the process that runs it.
#[derive(Serialize, ToSchema)]
pub struct SubscriptionStatus {
    #[schema(examples("consultations"))]
    pub name: String,
    /// `projection`: keeps a read model and can be rebuilt; `reactor`: acts on events (notifications, …).
    #[schema(inline)]
    pub kind: SubscriptionStatusKind,
    /// In this order of precedence: `reset_requested`: a rebuild was asked for and its owner has not started it yet; `failing`: the current batch failed and is being retried (see `failures`, `last_error`); `stopped`: no process holds an unexpired lease; `replaying`: rebuilding after a reset, not caught up and put in place yet; `catching_up`: running, with events not yet handled; `live`: running and caught up.
    #[schema(inline)]
    pub state: SubscriptionStatusState,
    /// Global log position of the last event handled (the checkpoint); 0 before the first.
    #[schema(minimum = 0)]
    pub position: i64,
    /// The writing transaction of that event, the other half of the checkpoint (PostgreSQL); always 0 on SQLite.
    #[schema(minimum = 0)]
    pub transaction_id: i64,
    /// Events handled since the last reset (or since the subscription started).
    #[schema(minimum = 0)]
    pub applied_since_reset: i64,
    /// Events after the checkpoint, counted up to 100000.
    #[schema(minimum = 0, maximum = 100000)]
    pub lag_events: i64,
    /// `true` when `lag_events` reached the cap of 100000: the real lag may be larger.
    pub lag_events_capped: bool,
    /// How long the oldest event not yet handled has been waiting, in seconds (millisecond precision); 0 when caught up.
    #[schema(minimum = 0)]
    pub lag_seconds: f64,
    /// The process holding (or last holding, if its lease has run out) the lease; null when none does.
    #[schema(required = true)]
    pub owner: Option<String>,
    /// When the owner's lease runs out unless renewed; `1970-01-01T00:00:00Z` when the lease was released.
    #[schema(format = DateTime)]
    pub lease_expires_at: String,
    /// When the last rebuild started; null if never.
    #[schema(format = DateTime, required = true)]
    pub last_reset_at: Option<String>,
    /// `true` from a reset until the replay has caught up with the log and its result is in place; reads are not reported fresh (`after`) meanwhile.
    pub replaying: bool,
    /// When the checkpoint last moved (or the subscription was reset).
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Consecutive failed attempts at the current batch; 0 when healthy.
    #[schema(minimum = 0)]
    pub failures: i64,
    /// When the current run of failures began; null when healthy.
    #[schema(format = DateTime, required = true)]
    pub failing_since: Option<String>,
    /// The error of the last failed attempt (ids only, never personal data); null when healthy.
    #[schema(required = true)]
    pub last_error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Subscriptions {
    /// Highest position written to the global log (0 when it is empty). A subscription whose `position` equals it has handled everything.
    #[schema(minimum = 0)]
    pub head_position: i64,
    /// Ordered by name.
    pub subscriptions: Vec<SubscriptionStatus>,
}

#[derive(Serialize, ToSchema)]
pub struct RebuildAccepted {
    #[schema(examples("consultations"))]
    pub name: String,
    #[schema(inline)]
    pub state: RebuildAcceptedState,
    /// Where to follow the rebuild.
    #[schema(inline)]
    pub status_url: RebuildAcceptedStatusUrl,
}

/// One notification: one message of one kind to one recipient through one channel, as the `notifications` reactor queued it and the dispatcher handled it. The message's text is never stored or shown.
#[derive(Serialize, ToSchema)]
pub struct NotificationEntry {
    /// The notification's id, which is also the id of the `notify` job that sends it (and of its dead letter, if it becomes one).
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(inline)]
    pub recipient_role: NotificationEntryRecipientRole,
    /// `email` when the recipient has an email address; text messages go by `sms`, or by `whatsapp` to a patient who opted in. Reminders use the channels configured for them (`REMINDERS`).
    #[schema(inline)]
    pub channel: NotificationEntryChannel,
    /// `new_request`: the provider, on booking; `accepted`, `declined` (with what happens to the payment), `payment_receipt`, `expired`: the patient; `rescheduled` (new and previous time), `cancelled`: both; `reminder`: both, before a confirmed consultation's start, as configured in `REMINDERS`.
    #[schema(inline)]
    pub kind: NotificationEntryKind,
    /// The address, masked: an email's first letter and domain, a phone number's first five and last two characters.
    #[schema(examples("j***@example.org", "+4479******89"))]
    pub recipient: String,
    /// `pending`: queued, not sent yet (also after an admin re-queued its dead letter); `sent`: the channel (Twilio, the SMTP server) accepted it; `delivered`: Twilio reported it delivered (or read); `failed`: an attempt failed and another is scheduled, or Twilio reported it undelivered, failed or canceled after it was sent (final); `dead`: it ran out of attempts or failed permanently, and is a dead letter.
    #[schema(inline)]
    pub status: NotificationEntryStatus,
    /// Send attempts made so far.
    #[schema(minimum = 0)]
    pub attempts: i64,
    /// The channel's id for the message: Twilio's message SID for SMS and WhatsApp, the `Message-ID` for email; null until sent.
    #[schema(required = true)]
    pub provider_message_id: Option<String>,
    /// When the notification was due to go out (when it was queued).
    #[schema(format = DateTime)]
    pub scheduled_for: String,
    /// When the channel accepted it; null until then.
    #[schema(format = DateTime, required = true)]
    pub sent_at: Option<String>,
    /// The error of the last failed attempt, or the error Twilio reported (`Twilio error <ErrorCode> (<status>)`); null when there is none.
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// When the entry last changed.
    #[schema(format = DateTime)]
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct NotificationLog {
    #[schema(format = Uuid)]
    pub consultation_id: String,
    /// Every notification of the consultation, ordered by `scheduled_for`, then `kind`, `recipient_role`, `channel` and `id`. Empty when none was queued yet.
    pub items: Vec<NotificationEntry>,
}

/// A job that ran out of attempts (or failed permanently) and is no longer retried. Its payload, which holds contact details, is not shown.
#[derive(Serialize, ToSchema)]
pub struct DeadLetter {
    /// The job's id; for a `notify` job, also the id of its notification in the consultation's notification log.
    #[schema(format = Uuid)]
    pub id: String,
    /// `notify`: sends one notification; `reminder`: a reminder timer that, when due, re-checks the consultation and queues the reminder's notifications; `deadline`: a deadline timer that, when due, expires the consultation if it is still due (a request not accepted in time, or an accepted consultation unpaid at its start).
    #[schema(inline)]
    pub kind: DeadLetterKind,
    #[schema(format = Uuid)]
    pub consultation_id: String,
    /// Attempts made: `max_attempts`, or fewer when a permanent failure dead-lettered the job at once.
    #[schema(minimum = 0)]
    pub attempts: i64,
    /// Attempts the job was allowed.
    #[schema(minimum = 1)]
    pub max_attempts: i64,
    /// The error of the last attempt.
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// When the job was queued.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the job was dead-lettered.
    #[schema(format = DateTime)]
    pub failed_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterList {
    /// Newest first (by `failed_at`), at most 500.
    #[schema(max_items = 500)]
    pub items: Vec<DeadLetter>,
}

/// A dead letter put back in the queue. As returned by the retry: `attempts` is 0, `failed_at` is the time of the retry and `last_error` is still the error that dead-lettered it.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterRequeued {
    #[serde(flatten)]
    pub base: DeadLetter,
    #[schema(inline)]
    pub state: DeadLetterRequeuedState,
}

/// The form Twilio posts to a message's `StatusCallback`. Only the fields below are read; every field Twilio sends, these and the others (`AccountSid`, `From`, `To`, `ApiVersion`, …), is covered by the signature.
#[derive(Serialize, ToSchema)]
pub struct TwilioMessageStatus {
    /// The message's SID, as Twilio answered when it was sent (`provider_message_id` in the notification log).
    #[serde(rename = "MessageSid")]
    #[schema(
        examples("SM0123456789abcdef0123456789abcdef"),
        required = false,
        nullable = false
    )]
    pub message_sid: Option<String>,
    /// Older name of `MessageSid`, read when `MessageSid` is absent.
    #[serde(rename = "SmsSid")]
    #[schema(required = false, nullable = false)]
    pub sms_sid: Option<String>,
    /// The message's status at Twilio. Recorded: `sent` as `sent`; `delivered` and `read` as `delivered`; `undelivered`, `failed` and `canceled` as `failed`. Any other (`queued`, `sending`, `accepted`, …) changes nothing.
    #[serde(rename = "MessageStatus")]
    #[schema(examples("delivered"), required = false, nullable = false)]
    pub message_status: Option<String>,
    /// Older name of `MessageStatus`, read when `MessageStatus` is absent.
    #[serde(rename = "SmsStatus")]
    #[schema(required = false, nullable = false)]
    pub sms_status: Option<String>,
    /// Twilio's error code, sent with failures. With a recorded status it becomes the notification's `last_error`: `Twilio error <ErrorCode> (<MessageStatus>)`.
    #[serde(rename = "ErrorCode")]
    #[schema(examples("30003"), required = false, nullable = false)]
    pub error_code: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VideoToken {
    /// The provider's access token. For Twilio: a JWT (HS256, header `cty: twilio-fpa;v=1`) with `jti`, `iss` (API key SID), `sub` (account SID), `nbf`, `exp` and `grants: {identity, video: {room}}`, signed with the API key secret.
    pub token: String,
    /// The room's name.
    pub room: String,
    #[schema(examples("twilio"))]
    pub provider: String,
    /// The caller's id: the patient's or provider's id, never a name or phone number.
    pub identity: String,
    /// At most `VIDEO_TOKEN_TTL` (1 h) from now and never after the end plus `VIDEO_GRACE`.
    #[schema(format = DateTime)]
    pub expires_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct CallRequested {
    #[schema(format = Uuid)]
    pub call_id: String,
    /// The call is placed by a worker; its progress arrives through Twilio's callbacks.
    #[schema(inline)]
    pub status: CallRequestedStatus,
    #[schema(format = Uuid)]
    pub consultation_id: String,
    /// Global log position of the CallRequested event.
    pub position: i64,
}

/// The form Twilio posts to a call's `StatusCallback`. Only the fields below are read; all are covered by the signature.
#[derive(Serialize, ToSchema)]
pub struct TwilioCallStatus {
    #[serde(rename = "CallSid")]
    #[schema(
        examples("CA0123456789abcdef0123456789abcdef"),
        required = false,
        nullable = false
    )]
    pub call_sid: Option<String>,
    /// `in-progress` records CallStarted; `completed` with a `CallDuration` above 0 records CallEnded (and CallStarted first if it was not recorded). `busy`, `failed`, `no-answer`, `canceled` are kept on the call's row only.
    #[serde(rename = "CallStatus")]
    #[schema(examples("in-progress"))]
    pub call_status: String,
    /// Twilio's order of the call's callbacks; one not newer than the last recorded changes nothing.
    #[serde(rename = "SequenceNumber")]
    #[schema(required = false, nullable = false)]
    pub sequence_number: Option<String>,
    /// Seconds, on `completed`.
    #[serde(rename = "CallDuration")]
    #[schema(required = false, nullable = false)]
    pub call_duration: Option<String>,
}

/// The form Twilio Video posts to a room's `StatusCallback`. Only the fields below are read; all are covered by the signature.
#[derive(Serialize, ToSchema)]
pub struct TwilioRoomStatus {
    /// `participant-connected` records CallStarted (once); `room-ended` records CallEnded (if the call started) and RoomEnded. Other events change nothing.
    #[serde(rename = "StatusCallbackEvent")]
    #[schema(examples("participant-connected"))]
    pub status_callback_event: String,
    /// Must be the consultation's room; others change nothing.
    #[serde(rename = "RoomName")]
    pub room_name: String,
    #[serde(rename = "RoomSid")]
    #[schema(required = false, nullable = false)]
    pub room_sid: Option<String>,
    /// Seconds, on `room-ended`.
    #[serde(rename = "RoomDuration")]
    #[schema(required = false, nullable = false)]
    pub room_duration: Option<String>,
    #[serde(rename = "SequenceNumber")]
    #[schema(required = false, nullable = false)]
    pub sequence_number: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Money {
    /// Minor units (cents).
    #[schema(minimum = 1, maximum = 100000000)]
    pub amount_minor: i64,
    /// An active ISO 4217 currency code, in any case; stored upper-case. Codes that are not money a fee is paid in (XAG, XAU, XPD, XPT, XBA to XBD, XDR, XSU, XUA, XTS, XXX) and codes that are not in ISO 4217 (`ZZZ`) give 422.
    #[schema(pattern = "^[A-Za-z]{3}$", examples("EUR"))]
    pub currency: String,
}

#[derive(Serialize, ToSchema)]
pub struct PaymentEventAck {
    pub received: bool,
    /// This provider event id was processed before; nothing changed.
    pub duplicate: bool,
    #[schema(inline)]
    pub outcome: PaymentEventAckOutcome,
}

#[derive(Serialize, ToSchema)]
pub struct PaymentEvent {
    pub event_id: String,
    pub event_type: String,
    #[schema(required = true)]
    pub consultation_id: Option<String>,
    /// null while it is being processed.
    #[schema(inline, required = true)]
    pub outcome: Option<PaymentEventOutcome>,
    #[schema(required = true)]
    pub detail: Option<String>,
    #[schema(format = DateTime)]
    pub received_at: String,
    #[schema(format = DateTime, required = true)]
    pub finished_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PaymentEventList {
    #[schema(max_items = 500)]
    pub items: Vec<PaymentEvent>,
}

#[derive(Serialize, ToSchema)]
pub struct HistoryEvent {
    pub sequence: i64,
    /// Global log position.
    pub position: i64,
    #[serde(rename = "type")]
    pub kind: String,
    /// The version the event was written at (read through the upcasters).
    pub version: String,
    #[schema(format = DateTime, required = true)]
    pub recorded_at: Option<String>,
    #[schema(inline)]
    pub actor: HistoryEventActor,
    #[schema(value_type = Value, required = false, nullable = false)]
    pub correlation_id: Option<Value>,
    #[schema(value_type = Value, required = false, nullable = false)]
    pub causation_id: Option<Value>,
    #[schema(value_type = Value, required = false, nullable = false)]
    pub request_id: Option<Value>,
    /// The event as stored.
    #[schema(value_type = Value)]
    pub payload: Value,
    /// The previous event's hash (64 zeros for the first); null until sealed.
    #[schema(required = true)]
    pub prev_hash: Option<String>,
    /// SHA-256 over the canonical encoding of the event and prev_hash; null until sealed (shortly after commit).
    #[schema(required = true)]
    pub hash: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct History {
    pub consultation_id: String,
    #[schema(format = DateTime, required = true)]
    pub as_of: Option<String>,
    /// What the listed events produce.
    #[schema(inline)]
    pub state: HistoryState,
    pub events: Vec<HistoryEvent>,
    /// Notifications, calls and jobs (rooms, timers, refunds) the events caused, as recorded up to `as_of`.
    #[schema(inline)]
    pub side_effects: HistorySideEffects,
}

#[derive(Serialize, ToSchema)]
pub struct AccessLog {
    #[schema(max_items = 500, inline)]
    pub items: Vec<AccessLogItemsItem>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    ValidationFailed,
    Unauthorized,
    Forbidden,
    NotFound,
    AlreadyExists,
    InvalidTransition,
    ConcurrencyConflict,
    SlotConflict,
    IdempotencyMismatch,
    PreconditionFailed,
    PayloadTooLarge,
    MethodNotAllowed,
    StorageUnavailable,
    Internal,
    NotJoinable,
    OutsideWindow,
    RoomNotReady,
    NotVideo,
    NotVoice,
    NoPhone,
    NotConfigured,
    BadSignature,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleEntryStatus {
    Requested,
    Accepted,
    Confirmed,
    InProgress,
    Completed,
    NoShow,
}

/// `accepted` is accepted but unpaid; a paid request stays `requested` until accepted; both together make it `confirmed`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsultationStatus {
    New,
    Requested,
    Accepted,
    Confirmed,
    InProgress,
    Completed,
    Declined,
    Cancelled,
    Expired,
    NoShow,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Unpaid,
    Paid,
    Failed,
    RefundPending,
    Refunded,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Video,
    Voice,
    Messaging,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderRegisteredStatus {
    Registered,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoShowRequestParty {
    Patient,
    Provider,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessStatus {
    Ready,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessBackend {
    Postgres,
    Sqlite,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatusKind {
    Projection,
    Reactor,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatusState {
    ResetRequested,
    Failing,
    Stopped,
    Replaying,
    CatchingUp,
    Live,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RebuildAcceptedState {
    ResetRequested,
}

#[derive(Serialize, ToSchema)]
pub enum RebuildAcceptedStatusUrl {
    #[serde(rename = "/v1/admin/subscriptions")]
    V1AdminSubscriptions,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationEntryRecipientRole {
    Patient,
    Provider,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationEntryChannel {
    Sms,
    Whatsapp,
    Email,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationEntryKind {
    NewRequest,
    Accepted,
    Declined,
    PaymentReceipt,
    Rescheduled,
    Cancelled,
    Expired,
    Reminder,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationEntryStatus {
    Pending,
    Sent,
    Delivered,
    Failed,
    Dead,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterKind {
    Notify,
    Reminder,
    Deadline,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterRequeuedState {
    Pending,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallRequestedStatus {
    Queued,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentEventAckOutcome {
    Applied,
    Flagged,
    AlreadyRecorded,
    Refused,
    Ignored,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentEventOutcome {
    Applied,
    Flagged,
    AlreadyRecorded,
    Refused,
    Ignored,
}

#[derive(Serialize, ToSchema)]
pub struct HistoryEventActor {
    #[schema(value_type = Value, required = false, nullable = false)]
    pub id: Option<Value>,
    #[schema(value_type = Value, required = false, nullable = false)]
    pub role: Option<Value>,
}

/// What the listed events produce.
#[derive(Serialize, ToSchema)]
pub struct HistoryState {
    #[schema(required = false, nullable = false)]
    pub status: Option<String>,
    #[schema(required = false, nullable = false)]
    pub payment_status: Option<String>,
    #[schema(required = false, nullable = false)]
    pub version: Option<i64>,
    #[schema(value_type = Object, required = false, nullable = false)]
    pub detail: Option<Value>,
}

/// Notifications, calls and jobs (rooms, timers, refunds) the events caused, as recorded up to `as_of`.
#[derive(Serialize, ToSchema)]
pub struct HistorySideEffects {
    #[schema(required = false, nullable = false)]
    pub notifications: Option<Vec<Value>>,
    #[schema(required = false, nullable = false)]
    pub calls: Option<Vec<Value>>,
    #[schema(required = false, nullable = false)]
    pub jobs: Option<Vec<Value>>,
}

#[derive(Serialize, ToSchema)]
pub struct AccessLogItemsItemActor {
    #[schema(required = false, nullable = false)]
    pub id: Option<String>,
    #[schema(required = false, nullable = false)]
    pub role: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogItemsItemAction {
    ReadConsultation,
    ReadHistory,
    ReadNotifications,
    ReadFhir,
}

#[derive(Serialize, ToSchema)]
pub struct AccessLogItemsItem {
    pub id: i64,
    #[schema(format = DateTime)]
    pub at: String,
    #[schema(inline)]
    pub actor: AccessLogItemsItemActor,
    #[schema(inline)]
    pub action: AccessLogItemsItemAction,
    pub consultation_id: String,
    /// The HTTP status answered.
    pub outcome: i64,
    pub request_id: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListConsultationsStatus {
    Requested,
    Accepted,
    Confirmed,
    InProgress,
    Completed,
    Declined,
    Cancelled,
    Expired,
    NoShow,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RebuildProjectionName {
    Consultations,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListPaymentEventsOutcome {
    Applied,
    Flagged,
    AlreadyRecorded,
    Refused,
    Ignored,
}
