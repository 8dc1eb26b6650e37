//! Refunds through Stripe's Refunds API.
//!
//! One refund is one `POST {api_base}/v1/refunds` with Bearer auth (the secret key), an
//! `Idempotency-Key` header (the request's idempotency key) and a form-encoded body of
//! `payment_intent`, `amount` (only for a partial refund) and `metadata[consultation_id]`.
//! Stripe answers `200 OK` with the refund object, whose `id` (`re_…`) and `status` become
//! [`RefundCreated`]. The API version is pinned with `Stripe-Version` so the answers' shape does
//! not change with the account's default version.
//!
//! Stripe keeps the result of a request for its idempotency key (24 hours at least): asking
//! again with the same key and parameters returns the same refund and refunds nothing twice.
//! That makes a retry after a lost answer safe, so failures are classified generously for the
//! dispatcher: timeouts, connection errors, `408`, `409` (another request with the same key is
//! still in progress), `429` and `5xx` are retryable; other `4xx` are not, and carry Stripe's
//! error type, code and message.
//!
//! A `400` with code `charge_already_refunded` means the payment has nothing left to refund:
//! an earlier attempt (whose answer was lost) or someone in the Dashboard did it. The refund is
//! done, so that is a success with refund id [`ALREADY_REFUNDED`].
//!
//! Nothing here logs or returns the secret key.

use std::fmt;
use std::time::Duration;

use consult_store::BoxFuture;
use reqwest::StatusCode;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use super::{PaymentProvider, RefundCreated, RefundRequest, ALREADY_REFUNDED};
use crate::channels::SendError;

/// Stripe's production API root.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";

/// A reasonable request timeout for [`StripePayments::new`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// The Stripe API version requests are made with (and webhook events are expected in).
pub const API_VERSION: &str = "2024-06-20";

/// Stripe's limit on an `Idempotency-Key`, in characters.
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// Stripe's error code for a refund of a payment that has nothing left to refund.
const CHARGE_ALREADY_REFUNDED: &str = "charge_already_refunded";

/// Credentials for Stripe.
#[derive(Clone)]
pub struct StripeConfig {
    /// API root without a trailing slash; [`DEFAULT_API_BASE`] in production, a local fake in
    /// tests.
    pub api_base: String,
    /// The secret (`sk_…`) or restricted (`rk_…`) API key, sent as the Bearer token.
    pub secret_key: SecretString,
}

impl StripeConfig {
    /// A configuration for the production API.
    pub fn new(secret_key: SecretString) -> Self {
        Self {
            api_base: DEFAULT_API_BASE.to_owned(),
            secret_key,
        }
    }
}

/// Hides the secret key.
impl fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeConfig")
            .field("api_base", &self.api_base)
            .field("secret_key", &"[redacted]")
            .finish()
    }
}

/// Refunds through Stripe.
#[derive(Debug, Clone)]
pub struct StripePayments {
    config: StripeConfig,
    endpoint: String,
    client: reqwest::Client,
}

impl StripePayments {
    /// Builds the provider with its own HTTP client; `timeout` bounds each request from
    /// connecting to reading the response ([`DEFAULT_TIMEOUT`] is a good value).
    ///
    /// Fails only if the HTTP client cannot be built (TLS backend initialisation).
    pub fn new(config: StripeConfig, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect would turn the POST into a GET; treat it as the error it is.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let endpoint = format!("{}/v1/refunds", config.api_base.trim_end_matches('/'));
        Ok(Self {
            config,
            endpoint,
            client,
        })
    }

    /// The configuration this provider was built with.
    pub fn config(&self) -> &StripeConfig {
        &self.config
    }

    async fn create_refund(&self, request: &RefundRequest) -> Result<RefundCreated, SendError> {
        check_request(request)?;
        let mut form = vec![("payment_intent", request.payment_id.clone())];
        if let Some(amount) = request.amount_minor {
            form.push(("amount", amount.to_string()));
        }
        form.push(("metadata[consultation_id]", request.consultation_id.clone()));

        let response = self
            .client
            .post(&self.endpoint)
            .bearer_auth(self.config.secret_key.expose_secret())
            .header("Idempotency-Key", &request.idempotency_key)
            .header("Stripe-Version", API_VERSION)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|error| request_error(&error))?;

        let status = response.status();
        if status.is_success() {
            let created = response.json::<Refund>().await.map_err(|_| {
                // Stripe took the refund but the answer was cut short or garbled. Retrying
                // replays the stored answer for the idempotency key and refunds nothing twice.
                tracing::warn!(
                    consultation_id = %request.consultation_id,
                    http_status = status.as_u16(),
                    "Stripe accepted the refund but its answer could not be read"
                );
                SendError::retryable("Stripe accepted the refund but its answer could not be read")
            })?;
            tracing::info!(
                consultation_id = %request.consultation_id,
                payment_intent = %request.payment_id,
                refund_id = %created.id,
                status = %created.status,
                "refund created at Stripe"
            );
            return Ok(RefundCreated {
                refund_id: created.id,
                status: created.status,
            });
        }

        // An error body that cannot be read or parsed just leaves out Stripe's details.
        let details = response
            .bytes()
            .await
            .ok()
            .and_then(|body| serde_json::from_slice::<ErrorBody>(&body).ok())
            .map(|body| body.error);
        if status == StatusCode::BAD_REQUEST
            && details
                .as_ref()
                .and_then(|d| d.code.as_deref())
                .is_some_and(|code| code == CHARGE_ALREADY_REFUNDED)
        {
            tracing::info!(
                consultation_id = %request.consultation_id,
                payment_intent = %request.payment_id,
                "Stripe says the payment is already refunded"
            );
            return Ok(RefundCreated {
                refund_id: ALREADY_REFUNDED.to_owned(),
                status: "succeeded".to_owned(),
            });
        }
        let error = status_error(status, details.as_ref());
        tracing::warn!(
            consultation_id = %request.consultation_id,
            payment_intent = %request.payment_id,
            http_status = status.as_u16(),
            stripe_code = details.as_ref().and_then(|d| d.code.as_deref()).unwrap_or(""),
            retryable = error.retryable,
            "Stripe refused the refund"
        );
        Err(error)
    }
}

impl PaymentProvider for StripePayments {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn refund<'a>(
        &'a self,
        request: &'a RefundRequest,
    ) -> BoxFuture<'a, Result<RefundCreated, SendError>> {
        Box::pin(self.create_refund(request))
    }
}

/// The part of Stripe's refund object we use.
#[derive(Deserialize)]
struct Refund {
    id: String,
    status: String,
}

/// Stripe's error body: `{"error": {"type": "…", "code": "…", "message": "…", …}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: StripeError,
}

#[derive(Deserialize)]
struct StripeError {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
    message: Option<String>,
}

/// Refuses, before any request, what Stripe would refuse anyway or what would make the retry
/// unsafe (no idempotency key).
fn check_request(request: &RefundRequest) -> Result<(), SendError> {
    if !request.payment_id.starts_with("pi_") {
        return Err(SendError::permanent(
            "payment id is not a Stripe PaymentIntent id (pi_…)",
        ));
    }
    if request.amount_minor.is_some_and(|amount| amount <= 0) {
        return Err(SendError::permanent("refund amount must be positive"));
    }
    let key_chars = request.idempotency_key.chars().count();
    if request.idempotency_key.trim().is_empty() || key_chars > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(SendError::permanent(format!(
            "idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )));
    }
    Ok(())
}

/// A failure before any HTTP status arrived. Retrying is safe thanks to the idempotency key,
/// even when Stripe may have taken the request.
fn request_error(error: &reqwest::Error) -> SendError {
    if error.is_builder() {
        SendError::permanent(
            "invalid Stripe request (check api_base, the secret key and the idempotency key)",
        )
    } else if error.is_timeout() {
        SendError::retryable("Stripe request timed out")
    } else if error.is_connect() {
        SendError::retryable("could not connect to Stripe")
    } else {
        SendError::retryable("Stripe request failed before a response arrived")
    }
}

/// A non-success HTTP status, with Stripe's error type, code and message if present.
fn status_error(status: StatusCode, details: Option<&StripeError>) -> SendError {
    const MAX_MESSAGE_CHARS: usize = 300;
    let mut text = format!("Stripe answered {}", status.as_u16());
    let kind = details.and_then(|d| d.kind.as_deref());
    let code = details.and_then(|d| d.code.as_deref());
    match (kind, code) {
        (Some(kind), Some(code)) => text.push_str(&format!(" ({kind}, code {code})")),
        (Some(kind), None) => text.push_str(&format!(" ({kind})")),
        (None, Some(code)) => text.push_str(&format!(" (code {code})")),
        (None, None) => {}
    }
    let auth_failure = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    if auth_failure {
        // Stripe's text quotes the end of the key it was given: leave it out.
        text.push_str(": check the Stripe secret key");
    } else if let Some(message) = details.and_then(|d| d.message.as_deref()) {
        text.push_str(": ");
        text.extend(message.chars().take(MAX_MESSAGE_CHARS));
    }
    let retryable = status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::CONFLICT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    if retryable {
        SendError::retryable(text)
    } else {
        SendError::permanent(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(kind: &str, code: Option<&str>, message: &str) -> StripeError {
        StripeError {
            kind: Some(kind.to_owned()),
            code: code.map(str::to_owned),
            message: Some(message.to_owned()),
        }
    }

    fn request() -> RefundRequest {
        RefundRequest {
            payment_id: "pi_3QkatTest0001".to_owned(),
            amount_minor: None,
            idempotency_key: "refund-c-1".to_owned(),
            consultation_id: "c-1".to_owned(),
        }
    }

    #[test]
    fn classifies_statuses() {
        assert!(status_error(StatusCode::INTERNAL_SERVER_ERROR, None).retryable);
        assert!(status_error(StatusCode::SERVICE_UNAVAILABLE, None).retryable);
        assert!(status_error(StatusCode::TOO_MANY_REQUESTS, None).retryable);
        assert!(status_error(StatusCode::CONFLICT, None).retryable);
        assert!(!status_error(StatusCode::BAD_REQUEST, None).retryable);
        assert!(!status_error(StatusCode::UNAUTHORIZED, None).retryable);
        assert!(!status_error(StatusCode::PAYMENT_REQUIRED, None).retryable);
        assert!(!status_error(StatusCode::NOT_FOUND, None).retryable);
        assert!(!status_error(StatusCode::FOUND, None).retryable);
    }

    #[test]
    fn error_text_has_stripes_type_code_and_message() {
        let details = details(
            "invalid_request_error",
            Some("amount_too_large"),
            "Refund amount (€60.00) is greater than unrefunded amount on charge (€50.00)",
        );
        assert_eq!(
            status_error(StatusCode::BAD_REQUEST, Some(&details)).message,
            "Stripe answered 400 (invalid_request_error, code amount_too_large): Refund amount \
             (€60.00) is greater than unrefunded amount on charge (€50.00)"
        );
    }

    #[test]
    fn authentication_errors_leave_out_stripes_message() {
        let details = details(
            "invalid_request_error",
            None,
            "Invalid API Key provided: sk_test_********************9xYz",
        );
        let error = status_error(StatusCode::UNAUTHORIZED, Some(&details));
        assert!(!error.retryable);
        assert!(!error.message.contains("9xYz"), "{}", error.message);
    }

    #[test]
    fn refuses_requests_stripe_would_refuse_before_sending() {
        let mut bad = request();
        bad.payment_id = "ch_123".to_owned();
        assert!(!check_request(&bad).expect_err("not a pi_").retryable);
        let mut bad = request();
        bad.amount_minor = Some(0);
        assert!(!check_request(&bad).expect_err("zero amount").retryable);
        let mut bad = request();
        bad.idempotency_key = String::new();
        assert!(!check_request(&bad).expect_err("no key").retryable);
        let mut bad = request();
        bad.idempotency_key = "k".repeat(256);
        assert!(!check_request(&bad).expect_err("long key").retryable);
        assert!(check_request(&request()).is_ok());
    }

    #[test]
    fn debug_hides_the_secret_key() {
        let config = StripeConfig::new(SecretString::from("sk_test_very_secret_key"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("sk_test_very_secret_key"), "{shown}");
        assert!(shown.contains(DEFAULT_API_BASE), "{shown}");
        let provider = StripePayments::new(config, DEFAULT_TIMEOUT).expect("build client");
        let shown = format!("{provider:?}");
        assert!(!shown.contains("sk_test_very_secret_key"), "{shown}");
    }
}
