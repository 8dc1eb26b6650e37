//! The API's one error type. Client mistakes map to precise 4xx codes; everything unexpected
//! becomes an opaque 500 whose cause is logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use consult_domain::{ConsultationError, InvalidInput};
use consult_store::{error_chain, ExecuteError, StoreError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field is present but its value is refused.
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    /// A query parameter is unknown or its value is refused.
    #[error("query parameter {param}: {message}")]
    BadQuery { param: String, message: String },
    /// The body is not JSON, or not the JSON this route takes.
    #[error("{0}")]
    MalformedBody(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    AlreadyExists(&'static str),
    #[error(transparent)]
    InvalidTransition(ConsultationError),
    #[error("the consultation kept changing under concurrent requests; retry")]
    ConcurrencyConflict,
    #[error("a request with this Idempotency-Key is still being processed; retry later")]
    IdempotencyInProgress,
    #[error("the provider has an accepted consultation overlapping this time")]
    SlotConflict,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    #[error("the consultation is at version {current}, not the one in If-Match")]
    PreconditionFailed { current: u64 },
    #[error("the request body is larger than 64 KiB")]
    PayloadTooLarge,
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    #[error("storage is unavailable; retry shortly")]
    Unavailable,
    /// The request is well-formed but cannot be done now (outside the joining window, room
    /// not ready): 409 with a specific code.
    #[error("{message}")]
    NotNow { code: &'static str, message: String },
    /// A webhook's signature is missing, wrong or stale: 400.
    #[error("{0}")]
    BadSignature(String),
    /// A capability this deployment has not configured (no video or voice provider): 503.
    #[error("{0}")]
    NotConfigured(String),
    /// The caller made too many requests of this kind: 429 with `Retry-After`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn validation(field: &str, err: &InvalidInput) -> Self {
        Self::Validation {
            field: field.to_owned(),
            message: err.to_string(),
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Validation { .. } | Self::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::MalformedBody(_) | Self::BadQuery { .. } | Self::BadSignature(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::AlreadyExists(_)
            | Self::InvalidTransition(_)
            | Self::ConcurrencyConflict
            | Self::IdempotencyInProgress
            | Self::SlotConflict => StatusCode::CONFLICT,
            Self::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable | Self::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotNow { .. } => StatusCode::CONFLICT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation { .. } | Self::MalformedBody(_) | Self::BadQuery { .. } => {
                "validation_failed"
            }
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::InvalidTransition(_) => "invalid_transition",
            Self::ConcurrencyConflict | Self::IdempotencyInProgress => "concurrency_conflict",
            Self::SlotConflict => "slot_conflict",
            Self::IdempotencyMismatch => "idempotency_mismatch",
            Self::PreconditionFailed { .. } => "precondition_failed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unavailable => "storage_unavailable",
            Self::NotNow { code, .. } => code,
            Self::NotConfigured(_) => "not_configured",
            Self::BadSignature(_) => "bad_signature",
            Self::RateLimited { .. } => "rate_limited",
            Self::Internal(_) => "internal",
        }
    }
}

/// RFC 9457 problem details, with our `code`.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// The problem document the client sees.
    pub fn problem(&self) -> Problem {
        let status = self.status_code();
        Problem {
            kind: format!("urn:consult:problem:{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
            code: self.code(),
            field: match self {
                Self::Validation { field, .. } => Some(field.clone()),
                Self::BadQuery { param, .. } => Some(param.clone()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if let Self::Internal(cause) = &self {
            tracing::error!(error = %error_chain(cause.as_ref()), "request failed unexpectedly");
        }
        let problem = self.problem();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable | Self::IdempotencyInProgress => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::RateLimited { retry_after, .. } => {
                // Whole seconds, rounded up: a client that waits this long is let through.
                let seconds = retry_after.as_millis().div_ceil(1000).max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds as u64));
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        if err.is_unavailable() {
            tracing::warn!(error = %error_chain(&err), "storage unavailable");
            Self::Unavailable
        } else {
            Self::Internal(Box::new(err))
        }
    }
}

impl From<ExecuteError<ApiError>> for ApiError {
    fn from(err: ExecuteError<ApiError>) -> Self {
        match err {
            ExecuteError::Refused(api) => api,
            ExecuteError::Conflict => Self::ConcurrencyConflict,
            ExecuteError::VersionMismatch { current } => Self::PreconditionFailed { current },
            ExecuteError::SlotConflict => Self::SlotConflict,
            ExecuteError::Store(store) => store.into(),
        }
    }
}
