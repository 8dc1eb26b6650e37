//! Extractors that turn the parts of a request into checked values, with problem+json errors.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::{is_token, RequestId};

/// The raw request body, at most [`crate::MAX_BODY_BYTES`].
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge)
            }
            Err(rejection) => {
                let status = rejection.into_response().status();
                Err(ApiError::MalformedBody(format!(
                    "the request body could not be read ({status})"
                )))
            }
        }
    }
}

/// A path parameter (`{id}`, `{name}`). One that cannot be decoded (bad percent-encoding, not
/// UTF-8) or holds a NUL character (which PostgreSQL text refuses) names nothing this API
/// serves: 404 like any other unknown id, not axum's plain-text 400 or a storage error.
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        use axum::extract::rejection::PathRejection;
        use axum::extract::Path;
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) if value.contains('\0') => Err(ApiError::NotFound("no such resource")),
            Ok(Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => {
                Err(ApiError::NotFound("no such resource"))
            }
            Err(other) => Err(ApiError::Internal(Box::new(other))),
        }
    }
}

/// Parses a JSON body. Errors name the place in the document, never the offending value,
/// which may be private.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedBody(
            "a JSON request body is required".to_owned(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|err| {
        use serde_json::error::Category;
        let message = match err.classify() {
            Category::Syntax | Category::Eof | Category::Io => format!(
                "the request body is not valid JSON (line {}, column {})",
                err.line(),
                err.column()
            ),
            Category::Data => {
                let text = err.to_string();
                // serde's "missing field `x`" names only the field; other data errors quote
                // the value, so only their position is given.
                match text.split(" at line").next() {
                    Some(missing) if missing.starts_with("missing field") => missing.to_owned(),
                    _ => format!(
                        "the request body has a field of the wrong type (line {}, column {})",
                        err.line(),
                        err.column()
                    ),
                }
            }
        };
        ApiError::MalformedBody(message)
    })
}

/// What a command request carries besides its body.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub request_id: String,
    pub correlation_id: String,
    pub idempotency_key: Option<String>,
    /// The version named by `If-Match`.
    pub if_match: Option<u64>,
    /// `METHOD path`, part of the request's fingerprint for idempotency.
    pub target: String,
}

impl<S: Send + Sync> FromRequestParts<S> for CommandContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), |r| r.0.clone());
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .map(|v| v.to_str().map(str::trim).unwrap_or_default().to_owned())
        };
        let correlation_id = header("x-correlation-id")
            .filter(|v| is_token(v))
            .unwrap_or_else(|| request_id.clone());
        let idempotency_key = match header("idempotency-key") {
            Some(key) if is_token(&key) => Some(key),
            Some(_) => {
                return Err(ApiError::Validation {
                    field: "Idempotency-Key".to_owned(),
                    message: "must be 1 to 128 characters of letters, digits, '-', '_', '.', ':'"
                        .to_owned(),
                })
            }
            None => None,
        };
        let if_match = match header("if-match") {
            Some(value) => Some(parse_version(&value).ok_or_else(|| ApiError::Validation {
                field: "If-Match".to_owned(),
                message: "must be a version number, e.g. \"3\"".to_owned(),
            })?),
            None => None,
        };
        Ok(Self {
            request_id,
            correlation_id,
            idempotency_key,
            if_match,
            target: format!("{} {}", parts.method, parts.uri.path()),
        })
    }
}

/// Reads `3`, `"3"` or `W/"3"`.
fn parse_version(value: &str) -> Option<u64> {
    let value = value.strip_prefix("W/").unwrap_or(value);
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_accepts_bare_quoted_and_weak_versions() {
        assert_eq!(parse_version("3"), Some(3));
        assert_eq!(parse_version("\"3\""), Some(3));
        assert_eq!(parse_version("W/\"12\""), Some(12));
        assert_eq!(parse_version("*"), None);
    }

    #[test]
    fn json_errors_never_quote_the_value() {
        #[derive(Debug, serde::Deserialize)]
        struct Shape {
            #[allow(dead_code)]
            n: u32,
        }
        let err = parse_json::<Shape>(br#"{"n": "secret chest pain"}"#)
            .expect_err("a string is not a number");
        assert!(!err.to_string().contains("chest"), "{err}");
        let err = parse_json::<Shape>(b"{}").expect_err("n is missing");
        assert_eq!(err.to_string(), "missing field `n`");
    }
}

/// The query string as name/value pairs, checked against the names a route takes: an unknown
/// or repeated name is refused, so that a typo is not silently ignored.
#[derive(Debug, Default)]
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        use axum::extract::Query;
        match Query::<Vec<(String, String)>>::from_request_parts(parts, state).await {
            // No name or value of ours holds a NUL, and PostgreSQL text cannot hold one.
            Ok(Query(pairs)) => match pairs
                .iter()
                .find(|(n, v)| n.contains('\0') || v.contains('\0'))
            {
                Some((name, _)) => Err(ApiError::BadQuery {
                    param: if name.contains('\0') {
                        "query".to_owned()
                    } else {
                        name.clone()
                    },
                    message: "must not contain NUL characters".to_owned(),
                }),
                None => Ok(Self(pairs)),
            },
            Err(_) => Err(ApiError::BadQuery {
                param: "query".to_owned(),
                message: "the query string cannot be decoded".to_owned(),
            }),
        }
    }
}

impl QueryParams {
    /// Refuses names outside `known` and names given twice.
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        for (index, (name, _)) in self.0.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                return Err(ApiError::BadQuery {
                    param: name.clone(),
                    message: format!("unknown parameter; this route takes {}", known.join(", ")),
                });
            }
            if self.0[..index].iter().any(|(earlier, _)| earlier == name) {
                return Err(ApiError::BadQuery {
                    param: name.clone(),
                    message: "given more than once".to_owned(),
                });
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    /// A parameter parsed by `parse`, whose error text becomes the problem's detail.
    pub fn parse<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ApiError> {
        self.get(name)
            .map(|value| {
                parse(value).map_err(|message| ApiError::BadQuery {
                    param: name.to_owned(),
                    message,
                })
            })
            .transpose()
    }
}
