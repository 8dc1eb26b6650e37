//! The HTTP API: routes, bearer auth, problem+json errors, idempotent commands.
//!
//! Only this crate knows HTTP and the JSON shapes of requests; it turns them into validated
//! domain commands and hands those to the store.

mod auth;
mod command;
mod error;
mod extract;
pub mod fhir;
// Most of its types only describe JSON that handlers build: never constructed.
#[allow(dead_code, clippy::enum_variant_names)]
mod openapi;
mod routes;
mod server;

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use consult_store::Store;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{Caller, Claims, Role, TokenError, TokenKey};
pub use error::{ApiError, Problem};
pub use server::{serve, HttpTimeouts};

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Where handlers read the time. Injected so tests could drive it.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The event store and its side tables.
    pub store: Store,
    /// Verifies bearer tokens.
    pub token_key: TokenKey,
    pub clock: Arc<dyn Clock>,
    /// Verifies Twilio's callbacks; `None` when Twilio is not configured (they are refused).
    pub twilio: Option<TwilioWebhook>,
    /// Video access tokens and voice calls.
    pub media: MediaSettings,
    /// The payment webhook and the cancellation policy.
    pub payments: PaymentSettings,
    /// `METRICS_TOKEN`: when set, `/metrics` answers only `Authorization: Bearer <token>`.
    pub metrics_token: Option<secrecy::SecretString>,
    /// `AUTH_MAX_TOKEN_LIFETIME`: bearer tokens meant to live longer than this are refused.
    pub max_token_lifetime: std::time::Duration,
    /// `BOOKING_LIMIT`: bookings one patient may make within a window.
    pub booking_limit: RateLimit,
}

/// At most `limit` requests of a kind per caller within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: u32,
    pub window: std::time::Duration,
}

/// The longest bearer-token lifetime accepted unless configured otherwise.
pub const DEFAULT_MAX_TOKEN_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

/// The payment webhook's secret and the cancellation policy.
#[derive(Clone)]
pub struct PaymentSettings {
    /// `whsec_…`; `None`: the webhook answers 503.
    pub secret: Option<secrecy::SecretString>,
    /// How old a signature's timestamp may be.
    pub tolerance: std::time::Duration,
    /// A patient cancelling less than this before the start is not refunded.
    pub refund_notice: std::time::Duration,
}

impl fmt::Debug for PaymentSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaymentSettings")
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("tolerance", &self.tolerance)
            .field("refund_notice", &self.refund_notice)
            .finish()
    }
}

/// What the video-token and voice-call routes need.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    /// Mints access tokens for the rooms it created.
    pub video: Arc<dyn consult_reactors::video::VideoProvider>,
    /// Our number, when voice calls are configured; the TwiML dials from it.
    pub voice_number: Option<String>,
    /// Participants may join this long before the start.
    pub join_before: std::time::Duration,
    /// ... and until this long after the end; tokens never outlive it.
    pub grace: std::time::Duration,
    /// The longest life of an access token.
    pub token_ttl: std::time::Duration,
    /// Base of the links people follow (`APP_URL`): the meeting link is
    /// `{app_url}/consultations/{id}/join`.
    pub app_url: String,
}

/// What checking an `X-Twilio-Signature` takes.
#[derive(Clone)]
pub struct TwilioWebhook {
    pub auth_token: secrecy::SecretString,
    /// The public base URL Twilio calls (`PUBLIC_BASE_URL`): the signature covers it.
    pub public_base_url: String,
}

impl std::fmt::Debug for TwilioWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioWebhook")
            .field("public_base_url", &self.public_base_url)
            .finish_non_exhaustive()
    }
}

/// The request id of the current request, from `X-Request-Id` or made up.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Every route of the API, each registered with its OpenAPI description: the router and the
/// document come from this one list.
fn api_routes() -> OpenApiRouter<AppState> {
    use routes::{
        admin, audit, consultations as c, docs, health, media as m, notifications as n,
        payments as pay, providers as p, reads,
    };
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(admin::metrics))
        .routes(routes!(p::register))
        .routes(routes!(p::get))
        .routes(routes!(reads::schedule))
        .routes(routes!(c::book, reads::list))
        .routes(routes!(reads::consultation))
        .routes(routes!(c::accept))
        .routes(routes!(c::decline))
        .routes(routes!(c::reschedule))
        .routes(routes!(c::cancel))
        .routes(routes!(c::complete))
        .routes(routes!(c::no_show))
        .routes(routes!(n::list))
        .routes(routes!(admin::subscriptions))
        .routes(routes!(admin::rebuild))
        .routes(routes!(n::dead_letters))
        .routes(routes!(n::retry))
        .routes(routes!(n::twilio_status))
        .routes(routes!(docs::openapi))
        .routes(routes!(docs::docs))
        .routes(routes!(m::video_token))
        .routes(routes!(m::voice_call))
        .routes(routes!(m::call_status))
        .routes(routes!(m::room_status))
        .routes(routes!(m::voice_twiml))
        .routes(routes!(pay::webhook))
        .routes(routes!(pay::events))
        .routes(routes!(audit::history))
        .routes(routes!(audit::fhir))
        .routes(routes!(audit::access_entries))
}

/// The API's OpenAPI 3.1 document, generated from `api_routes`; served at `/openapi.json`.
pub fn openapi_document() -> serde_json::Value {
    openapi::finish(api_routes().into_openapi())
}

/// All routes, with the body limit, request ids and request logging.
pub fn router(state: AppState) -> Router {
    use routes::audit;
    let (router, _) = api_routes().split_for_parts();
    router
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            audit::access_log,
        ))
        .layer(middleware::from_fn(request_context))
        .layer(middleware::from_fn(response_headers))
        .with_state(state)
}

/// What a process that does not serve the API still answers (a worker's `ADMIN_BIND`):
/// `/healthz`, `/readyz` and `/metrics`, with the same request log and headers.
pub fn admin_router(state: AppState) -> Router {
    use routes::{admin, health};
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(admin::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(request_context))
        .layer(middleware::from_fn(response_headers))
        .with_state(state)
}

/// Headers on every response: `X-Content-Type-Options: nosniff`, and `Cache-Control: no-store`
/// unless the handler chose otherwise (only the API's own description, `/openapi.json` and
/// `/docs`, may be cached). Responses carry consultations, contact details, histories and
/// logs; no cache, shared or private, should keep them.
async fn response_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Gives each request an id (the client's `X-Request-Id` when it is sane), echoes it in the
/// response, and logs one line per request: method, route template, status, time. Never the
/// query string or body, which may hold personal data.
async fn request_context(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_token(v))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    tracing::info!(
        %method,
        route,
        status,
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        request_id,
        "request"
    );
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// A short opaque token: letters, digits, `-`, `_`, `.`, `:`; at most 128 bytes.
pub(crate) fn is_token(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}
