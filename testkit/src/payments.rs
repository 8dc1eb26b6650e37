//! A strict stand-in for Stripe's Refunds API on 127.0.0.1, and builders for Stripe webhook
//! payloads.
//!
//! `POST /v1/refunds` is checked the way Stripe does, in this order: Bearer auth with the
//! expected secret key (`401` otherwise), an `Idempotency-Key` header of at most 255 characters
//! (Stripe makes it optional; the fake requires it, because our client must always send one),
//! the form content type, then the parameters: only `payment_intent`, `amount`, `reason` and
//! `metadata[…]`, each at most once; `payment_intent` present and a `pi_…` id; `amount` a
//! positive integer. Refusals are Stripe error bodies,
//! `{"error": {"type", "code", "message", "param", "doc_url"}}`.
//!
//! A valid request is executed like Stripe does. Each payment intent holds an amount (register
//! one with [`PaymentsFake::set_payment_intent`]; any other `pi_…` id counts as a captured
//! payment of [`DEFAULT_PAYMENT_AMOUNT`]). A refund without `amount` refunds what is left; more
//! than is left is `400` `amount_too_large`; nothing left is `400` `charge_already_refunded`.
//! The result (success or one of those two errors) is stored under the idempotency key: the
//! same key with the same parameters replays it (same refund id, `Idempotent-Replayed: true`,
//! nothing created), the same key with other parameters is `400` `idempotency_error`.
//! Validation failures are not stored, as on Stripe.
//!
//! Every request is recorded, valid or not. [`PaymentsBehavior`] makes the fake misbehave for
//! requests that pass validation: `Fail` answers an error without executing (a failure in front
//! of the API, so nothing is stored for the key); `Hang` executes the refund, then waits before
//! answering, like a Stripe whose answer never reaches a client that timed out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use consult_reactors::payments::signature;
use consult_reactors::payments::stripe::{StripeConfig, API_VERSION};
use secrecy::SecretString;
use serde_json::{json, Map, Value};

use super::twilio::{is_form, parse_form};

/// Secret key the fake expects unless started with [`PaymentsFake::start_with`].
pub const SECRET_KEY: &str = "sk_test_fake_51Qk0000000000000000000000000";
/// Webhook endpoint secret for payloads signed with [`signature_header`].
pub const WEBHOOK_SECRET: &str = "whsec_fake_0123456789abcdef0123456789abcdef";
/// What a payment intent the fake was not told about has captured, in cents.
pub const DEFAULT_PAYMENT_AMOUNT: i64 = 4_500;
/// The currency of every payment intent at the fake.
pub const CURRENCY: &str = "eur";
/// The parameters `POST /v1/refunds` accepts besides `metadata[…]` (Stripe knows a few more
/// that our client never sends; they are refused as unknown).
pub const REFUND_PARAMS: [&str; 3] = ["payment_intent", "amount", "reason"];
/// Stripe's refund reasons.
pub const REFUND_REASONS: [&str; 3] = ["duplicate", "fraudulent", "requested_by_customer"];
/// Stripe's limit on an `Idempotency-Key`, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// How the fake answers requests that pass validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentsBehavior {
    /// Execute the refund and answer (the default).
    Accept,
    /// Answer with this status and a Stripe error body, executing nothing (e.g. 500, 503, 429,
    /// 409).
    Fail(u16),
    /// Execute the refund, then wait this long before answering (to outlast the client's
    /// timeout).
    Hang(Duration),
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub method: String,
    /// The request path, e.g. `/v1/refunds`.
    pub path: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// Whether the `Authorization` header was `Bearer <expected secret key>`.
    pub auth_ok: bool,
    /// The `Idempotency-Key` header, if any.
    pub idempotency_key: Option<String>,
    /// The `Stripe-Version` header, if any.
    pub stripe_version: Option<String>,
    /// The decoded form fields, in the order they were sent.
    pub form: Vec<(String, String)>,
    /// The HTTP status the fake answered (or was about to, when the client gave up during a
    /// [`PaymentsBehavior::Hang`]).
    pub status: u16,
    /// The refund id in the answer, for successful refunds (new or replayed).
    pub refund_id: Option<String>,
    /// Whether the answer was a replay of an earlier result for the same idempotency key.
    pub replayed: bool,
}

impl ReceivedRequest {
    /// The first value of form field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A refund the fake actually created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRefund {
    /// `re_` + 24 alphanumerics.
    pub id: String,
    pub payment_intent: String,
    /// The amount refunded, in cents.
    pub amount: i64,
    /// The `metadata[…]` parameters, without the brackets.
    pub metadata: Vec<(String, String)>,
    /// The idempotency key it was created under.
    pub idempotency_key: String,
}

impl FakeRefund {
    /// The metadata value under `key`.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// A stored answer for an idempotency key.
#[derive(Debug, Clone)]
struct StoredResult {
    /// The request's parameters, sorted: what "the same parameters" means.
    fingerprint: Vec<(String, String)>,
    status: u16,
    body: Value,
    refund_id: Option<String>,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Captured amount per payment intent registered by the test.
    payment_intents: HashMap<String, i64>,
    /// Refunded amount so far per payment intent.
    refunded: HashMap<String, i64>,
    refunds: Vec<FakeRefund>,
    idempotency: HashMap<String, StoredResult>,
}

#[derive(Debug)]
struct Shared {
    secret_key: String,
    behavior: Mutex<PaymentsBehavior>,
    requests: Mutex<Vec<ReceivedRequest>>,
    /// Payment intents, refunds and idempotency results, changed together under one lock.
    ledger: Mutex<Ledger>,
}

/// A running fake; the server stops when the test's runtime ends.
#[derive(Debug, Clone)]
pub struct PaymentsFake {
    /// `http://127.0.0.1:<port>`, to use as `api_base`.
    pub base_url: String,
    shared: Arc<Shared>,
}

impl PaymentsFake {
    /// Starts a fake expecting [`SECRET_KEY`].
    pub async fn start() -> Self {
        Self::start_with(SECRET_KEY).await
    }

    /// Starts a fake expecting the given secret key.
    pub async fn start_with(secret_key: &str) -> Self {
        let shared = Arc::new(Shared {
            secret_key: secret_key.to_owned(),
            behavior: Mutex::new(PaymentsBehavior::Accept),
            requests: Mutex::new(Vec::new()),
            ledger: Mutex::new(Ledger::default()),
        });
        let app = Router::new()
            .route("/v1/refunds", any(refunds))
            .fallback(unknown)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the payments fake");
        let address = listener.local_addr().expect("fake's local address");
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("payments fake server");
        });
        Self {
            base_url: format!("http://{address}"),
            shared,
        }
    }

    /// A Stripe configuration pointing at this fake, with the key it expects.
    pub fn config(&self) -> StripeConfig {
        StripeConfig {
            api_base: self.base_url.clone(),
            secret_key: SecretString::from(self.shared.secret_key.clone()),
        }
    }

    /// Registers a captured payment of `amount` cents under `id` (`pi_…`).
    pub fn set_payment_intent(&self, id: &str, amount: i64) {
        self.shared
            .ledger
            .lock()
            .expect("ledger lock")
            .payment_intents
            .insert(id.to_owned(), amount);
    }

    /// Changes how subsequent valid requests are answered.
    pub fn set_behavior(&self, behavior: PaymentsBehavior) {
        *self.shared.behavior.lock().expect("behavior lock") = behavior;
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    /// The refunds actually created (replays create none), oldest first.
    pub fn refunds(&self) -> Vec<FakeRefund> {
        self.shared
            .ledger
            .lock()
            .expect("ledger lock")
            .refunds
            .clone()
    }

    /// How much of payment intent `id` has been refunded, in cents.
    pub fn refunded(&self, id: &str) -> i64 {
        self.shared
            .ledger
            .lock()
            .expect("ledger lock")
            .refunded
            .get(id)
            .copied()
            .unwrap_or(0)
    }
}

/// Why the fake refuses a request: HTTP status, Stripe error type, code, message, param.
#[derive(Debug)]
struct Refusal {
    status: u16,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
    param: Option<String>,
}

fn refuse(status: u16, code: Option<&'static str>, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        kind: "invalid_request_error",
        code,
        message: message.into(),
        param: None,
    }
}

impl Refusal {
    fn param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    fn kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    fn body(&self) -> Value {
        stripe_error_body(self.kind, self.code, &self.message, self.param.as_deref())
    }
}

/// Stripe's error body.
pub fn stripe_error_body(
    kind: &str,
    code: Option<&str>,
    message: &str,
    param: Option<&str>,
) -> Value {
    let mut error = Map::new();
    error.insert("type".into(), json!(kind));
    error.insert("message".into(), json!(message));
    if let Some(code) = code {
        error.insert("code".into(), json!(code));
        error.insert(
            "doc_url".into(),
            json!(format!(
                "https://stripe.com/docs/error-codes/{}",
                code.replace('_', "-")
            )),
        );
    }
    if let Some(param) = param {
        error.insert("param".into(), json!(param));
    }
    error.insert(
        "request_log_url".into(),
        json!("https://dashboard.stripe.com/test/logs/req_fake"),
    );
    json!({ "error": error })
}

/// The validated parameters of a refund.
#[derive(Debug)]
struct Params {
    payment_intent: String,
    amount: Option<i64>,
    metadata: Vec<(String, String)>,
    fingerprint: Vec<(String, String)>,
}

async fn unknown(
    State(shared): State<Arc<Shared>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut received = received(&shared, &method, uri.path(), &headers, &body);
    let refusal = refuse(
        404,
        None,
        format!("Unrecognized request URL ({method}: {}).", uri.path()),
    );
    received.status = refusal.status;
    record(&shared, received);
    answer(refusal.status, &refusal.body(), None, false)
}

async fn refunds(
    State(shared): State<Arc<Shared>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut received = received(&shared, &method, uri.path(), &headers, &body);
    let key = received.idempotency_key.clone();

    let params = match check(&shared, &method, &headers, &received) {
        Ok(params) => params,
        Err(refusal) => {
            received.status = refusal.status;
            record(&shared, received);
            return answer(refusal.status, &refusal.body(), key.as_deref(), false);
        }
    };
    // `check` refused requests without one.
    let key = key.unwrap_or_default();

    let behavior = shared.behavior.lock().expect("behavior lock").clone();
    if let PaymentsBehavior::Fail(status) = behavior {
        let refusal = failure(status);
        received.status = refusal.status;
        record(&shared, received);
        return answer(refusal.status, &refusal.body(), Some(&key), false);
    }

    let (result, replayed) = execute(&shared, &key, params);
    received.status = result.status;
    received.refund_id = result.refund_id.clone();
    received.replayed = replayed;
    // Recorded before any hang: a client that gives up still shows up here.
    record(&shared, received);
    if let PaymentsBehavior::Hang(delay) = behavior {
        tokio::time::sleep(delay).await;
    }
    answer(result.status, &result.body, Some(&key), replayed)
}

fn received(
    shared: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> ReceivedRequest {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let expected = format!("Bearer {}", shared.secret_key);
    ReceivedRequest {
        method: method.to_string(),
        path: path.to_owned(),
        content_type: text(header::CONTENT_TYPE.as_str()),
        auth_ok: text(header::AUTHORIZATION.as_str()).is_some_and(|value| value == expected),
        idempotency_key: text("idempotency-key"),
        stripe_version: text("stripe-version"),
        form: std::str::from_utf8(body)
            .ok()
            .and_then(parse_form)
            .unwrap_or_default(),
        status: 0,
        refund_id: None,
        replayed: false,
    }
}

fn record(shared: &Shared, received: ReceivedRequest) {
    shared
        .requests
        .lock()
        .expect("requests lock")
        .push(received);
}

/// Stripe's checks, in Stripe's order, plus the fake's insistence on an idempotency key.
fn check(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    received: &ReceivedRequest,
) -> Result<Params, Refusal> {
    if *method != Method::POST {
        return Err(refuse(
            404,
            None,
            format!(
                "Unrecognized request URL ({method}: {}). The fake serves only POST.",
                received.path
            ),
        ));
    }
    check_auth(shared, headers)?;
    match received.idempotency_key.as_deref() {
        None | Some("") => {
            return Err(refuse(
                400,
                None,
                "The payments fake requires an Idempotency-Key header on every refund.",
            )
            .kind("idempotency_error"))
        }
        Some(key) if key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS => {
            return Err(refuse(
                400,
                None,
                format!(
                    "Invalid Idempotency-Key: it must be at most {MAX_IDEMPOTENCY_KEY_CHARS} \
                     characters long."
                ),
            )
            .kind("idempotency_error"))
        }
        Some(_) => {}
    }
    if !is_form(received.content_type.as_deref()) {
        return Err(refuse(
            400,
            None,
            format!(
                "Invalid request: unsupported Content-Type {}. If error persists and you need \
                 assistance, please contact support@stripe.com.",
                received.content_type.as_deref().unwrap_or("(none)")
            ),
        ));
    }
    check_params(&received.form)
}

fn check_auth(shared: &Shared, headers: &HeaderMap) -> Result<(), Refusal> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let Some(key) = value.and_then(|value| value.strip_prefix("Bearer ")) else {
        return Err(refuse(
            401,
            None,
            "You did not provide an API key. You need to provide your API key in the \
             Authorization header, using Bearer auth (e.g. 'Authorization: Bearer \
             YOUR_SECRET_KEY').",
        ));
    };
    if key != shared.secret_key {
        // Like Stripe: the message quotes the key's start and last four characters.
        let shown: String = key.chars().take(8).collect();
        let tail: String = key
            .chars()
            .skip(key.chars().count().saturating_sub(4))
            .collect();
        return Err(refuse(
            401,
            None,
            format!("Invalid API Key provided: {shown}********************{tail}"),
        ));
    }
    Ok(())
}

fn check_params(form: &[(String, String)]) -> Result<Params, Refusal> {
    let mut metadata = Vec::new();
    for (index, (name, value)) in form.iter().enumerate() {
        if form[..index].iter().any(|(earlier, _)| earlier == name) {
            return Err(refuse(
                400,
                Some("parameter_invalid_string"),
                format!("Received duplicate parameter: {name}"),
            )
            .param(name));
        }
        if let Some(key) = name
            .strip_prefix("metadata[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            if key.is_empty() || key.chars().count() > 40 || value.chars().count() > 500 {
                return Err(refuse(
                    400,
                    Some("parameter_invalid_string"),
                    "Metadata keys must be 1 to 40 characters and values at most 500.",
                )
                .param(name));
            }
            metadata.push((key.to_owned(), value.clone()));
        } else if !REFUND_PARAMS.contains(&name.as_str()) {
            return Err(refuse(
                400,
                Some("parameter_unknown"),
                format!("Received unknown parameter: {name}"),
            )
            .param(name));
        }
    }
    let field = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };

    let payment_intent = field("payment_intent").ok_or_else(|| {
        refuse(
            400,
            Some("parameter_missing"),
            "One of the following params should be provided for this request: payment_intent \
             or charge.",
        )
    })?;
    if !payment_intent.starts_with("pi_") || payment_intent.len() <= 3 {
        return Err(refuse(
            400,
            Some("resource_missing"),
            format!("No such payment_intent: '{payment_intent}'"),
        )
        .param("payment_intent"));
    }
    let amount = match field("amount") {
        None => None,
        Some(text) => {
            let amount = text
                .parse::<i64>()
                .ok()
                .filter(|amount| *amount > 0 && text.bytes().all(|b| b.is_ascii_digit()));
            Some(amount.ok_or_else(|| {
                refuse(
                    400,
                    Some("parameter_invalid_integer"),
                    format!("Invalid positive integer: {text}"),
                )
                .param("amount")
            })?)
        }
    };
    if let Some(reason) = field("reason") {
        if !REFUND_REASONS.contains(&reason) {
            return Err(refuse(
                400,
                Some("parameter_invalid_string"),
                format!(
                    "Invalid reason: must be one of {}",
                    REFUND_REASONS.join(", ")
                ),
            )
            .param("reason"));
        }
    }

    let mut fingerprint = form.to_vec();
    fingerprint.sort();
    Ok(Params {
        payment_intent: payment_intent.to_owned(),
        amount,
        metadata,
        fingerprint,
    })
}

/// Replays the stored result for `key`, or executes the refund and stores its result; the
/// second value says whether it was a replay.
fn execute(shared: &Shared, key: &str, params: Params) -> (StoredResult, bool) {
    let mut ledger = shared.ledger.lock().expect("ledger lock");
    if let Some(stored) = ledger.idempotency.get(key) {
        if stored.fingerprint == params.fingerprint {
            return (stored.clone(), true);
        }
        let refusal = refuse(
            400,
            None,
            format!(
                "Keys for idempotent requests can only be used with the same parameters they \
                 were first used with. Try using a key other than '{key}' if you meant to \
                 execute a different request."
            ),
        )
        .kind("idempotency_error");
        let result = StoredResult {
            fingerprint: params.fingerprint,
            status: refusal.status,
            body: refusal.body(),
            refund_id: None,
        };
        return (result, false);
    }

    let pi = params.payment_intent.clone();
    let captured = ledger
        .payment_intents
        .get(&pi)
        .copied()
        .unwrap_or(DEFAULT_PAYMENT_AMOUNT);
    let refunded = ledger.refunded.get(&pi).copied().unwrap_or(0);
    let left = captured - refunded;
    let charge = charge_id(&pi);
    let result = if left <= 0 {
        let refusal = refuse(
            400,
            Some("charge_already_refunded"),
            format!("Charge {charge} has already been refunded."),
        );
        StoredResult {
            fingerprint: params.fingerprint.clone(),
            status: refusal.status,
            body: refusal.body(),
            refund_id: None,
        }
    } else if params.amount.is_some_and(|amount| amount > left) {
        let refusal = refuse(
            400,
            Some("amount_too_large"),
            format!(
                "Refund amount ({}) is greater than unrefunded amount on charge ({}).",
                euros(params.amount.unwrap_or_default()),
                euros(left)
            ),
        )
        .param("amount");
        StoredResult {
            fingerprint: params.fingerprint.clone(),
            status: refusal.status,
            body: refusal.body(),
            refund_id: None,
        }
    } else {
        let amount = params.amount.unwrap_or(left);
        let id = stripe_id("re");
        *ledger.refunded.entry(pi.clone()).or_default() += amount;
        ledger.refunds.push(FakeRefund {
            id: id.clone(),
            payment_intent: pi.clone(),
            amount,
            metadata: params.metadata.clone(),
            idempotency_key: key.to_owned(),
        });
        let metadata: Map<String, Value> = params
            .metadata
            .iter()
            .map(|(name, value)| (name.clone(), json!(value)))
            .collect();
        let body = json!({
            "id": id,
            "object": "refund",
            "amount": amount,
            "balance_transaction": stripe_id("txn"),
            "charge": charge,
            "created": chrono::Utc::now().timestamp(),
            "currency": CURRENCY,
            "destination_details": { "type": "card", "card": { "type": "refund" } },
            "metadata": metadata,
            "payment_intent": pi,
            "reason": null,
            "receipt_number": null,
            "source_transfer_reversal": null,
            "status": "succeeded",
            "transfer_reversal": null,
        });
        StoredResult {
            fingerprint: params.fingerprint.clone(),
            status: 200,
            body,
            refund_id: Some(id),
        }
    };
    ledger.idempotency.insert(key.to_owned(), result.clone());
    (result, false)
}

/// The error an injected failure answers with, typed as Stripe types it.
fn failure(status: u16) -> Refusal {
    match status {
        401 => refuse(
            401,
            None,
            "Invalid API Key provided: sk_test_********************0000",
        ),
        409 => refuse(
            409,
            None,
            "There is currently another in-progress request using this Idempotent Key (that \
             probably means you submitted twice, and the other request is still going \
             through). Please try again later.",
        )
        .kind("idempotency_error"),
        429 => refuse(
            429,
            Some("rate_limit"),
            "Request rate limit exceeded. Learn more about rate limits here \
             https://stripe.com/docs/rate-limits.",
        ),
        status if status >= 500 => refuse(
            status,
            None,
            "An unknown error occurred while processing your request.",
        )
        .kind("api_error"),
        status => refuse(
            status,
            None,
            "The payments fake was told to refuse this request.",
        ),
    }
}

fn answer(status: u16, body: &Value, idempotency_key: Option<&str>, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(body.clone())).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&stripe_id("req")) {
        headers.insert("request-id", value);
    }
    headers.insert("stripe-version", HeaderValue::from_static(API_VERSION));
    if let Some(value) = idempotency_key.and_then(|key| HeaderValue::from_str(key).ok()) {
        headers.insert("idempotency-key", value);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// `<prefix>_` + 24 alphanumerics, the shape of Stripe's ids.
fn stripe_id(prefix: &str) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_3Qk{}", &hex[..21])
}

/// The charge behind a payment intent: Stripe's share the suffix (`pi_3Q…` / `ch_3Q…`).
fn charge_id(payment_intent: &str) -> String {
    format!(
        "ch_{}",
        payment_intent.strip_prefix("pi_").unwrap_or(payment_intent)
    )
}

fn euros(cents: i64) -> String {
    format!("€{}.{:02}", cents / 100, cents % 100)
}

// ---------------------------------------------------------------------------------------------
// Webhook payloads

/// A Stripe event as a webhook delivers it (serialized; sign it with [`signature_header`]).
pub fn event(id: &str, kind: &str, object: Value) -> String {
    json!({
        "id": id,
        "object": "event",
        "api_version": API_VERSION,
        "created": chrono::Utc::now().timestamp(),
        "data": { "object": object },
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": kind,
    })
    .to_string()
}

/// A succeeded PaymentIntent for a consultation.
pub fn payment_intent(id: &str, amount: i64, currency: &str, consultation_id: &str) -> Value {
    json!({
        "id": id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_received": amount,
        "currency": currency,
        "latest_charge": charge_id(id),
        "livemode": false,
        "metadata": { "consultation_id": consultation_id },
        "status": "succeeded",
    })
}

/// A fully refunded charge (the object of a `charge.refunded` event).
pub fn charge_refunded(
    charge_id: &str,
    payment_intent: &str,
    amount_refunded: i64,
    currency: &str,
    consultation_id: &str,
) -> Value {
    json!({
        "id": charge_id,
        "object": "charge",
        "amount": amount_refunded,
        "amount_captured": amount_refunded,
        "amount_refunded": amount_refunded,
        "captured": true,
        "currency": currency,
        "livemode": false,
        "metadata": { "consultation_id": consultation_id },
        "paid": true,
        "payment_intent": payment_intent,
        "refunded": true,
        "status": "succeeded",
    })
}

/// The `Stripe-Signature` header Stripe would send for `body` at time `t`, signed with
/// [`WEBHOOK_SECRET`].
pub fn signature_header(body: &str, t: i64) -> String {
    signature::sign(WEBHOOK_SECRET, t, body.as_bytes())
}
