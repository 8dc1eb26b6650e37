//! Bearer tokens: HS256 JWTs with `sub`, `role` and `exp`, signed with the server's secret.

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::AppState;

/// What a caller may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Patient,
    Provider,
    Admin,
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Patient => "patient",
            Self::Provider => "provider",
            Self::Admin => "admin",
            Self::Auditor => "auditor",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "patient" => Some(Self::Patient),
            "provider" => Some(Self::Provider),
            "admin" => Some(Self::Admin),
            "auditor" => Some(Self::Auditor),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
}

/// Why a token was refused. Deliberately vague towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bearer token is malformed")]
    Malformed,
    #[error("the bearer token's signature is not valid")]
    BadSignature,
    #[error("the bearer token has expired")]
    Expired,
}

/// The HS256 key shared by the server and the `token` command.
#[derive(Clone)]
pub struct TokenKey {
    secret: SecretString,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey([redacted])")
    }
}

impl TokenKey {
    pub fn new(secret: SecretString) -> Self {
        Self { secret }
    }

    /// Signs a token for `claims` (header `{"typ":"JWT","alg":"HS256"}`).
    pub fn mint(&self, claims: &Claims) -> String {
        let key = EncodingKey::from_secret(self.secret.expose_secret().as_bytes());
        // An HMAC key of any length and claims of strings and integers cannot fail to encode.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap_or_default()
    }

    /// Checks the algorithm (HS256 only), the signature (in constant time), that `exp` is there
    /// and the expiry against `now_unix`, the server's clock rather than the system's.
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        // The expiry is checked below against the server's clock, with no leeway; audiences
        // are not used.
        validation.validate_exp = false;
        validation.validate_aud = false;
        let key = DecodingKey::from_secret(self.secret.expose_secret().as_bytes());
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|err| match err.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed,
            })?
            .claims;
        if claims.exp <= now_unix {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: String,
    pub role: Role,
}

impl Caller {
    /// Whether the caller may see a consultation between this patient and this provider: its
    /// patient, its provider, an admin or an auditor.
    pub fn may_see(&self, patient_id: &str, provider_id: &str) -> bool {
        match self.role {
            Role::Patient => patient_id == self.id,
            Role::Provider => provider_id == self.id,
            Role::Admin | Role::Auditor => true,
        }
    }

    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden("your role may not do this"))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Verified already on the way in (the access log does it for the reads it records).
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let token = bearer_token(&parts.headers)?;
        let now = state.clock.now().timestamp();
        let claims = state.token_key.verify(token, now).map_err(|err| {
            ApiError::Unauthorized(match err {
                TokenError::Malformed => "the bearer token is malformed",
                TokenError::BadSignature => "the bearer token's signature is not valid",
                TokenError::Expired => "the bearer token has expired",
            })
        })?;
        if lifetime(&claims, now)
            > i64::try_from(state.max_token_lifetime.as_secs()).unwrap_or(i64::MAX)
        {
            return Err(ApiError::Unauthorized(
                "the bearer token's lifetime is longer than this server accepts",
            ));
        }
        let valid_sub = (1..=64).contains(&claims.sub.len())
            && claims
                .sub
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid_sub {
            return Err(ApiError::Unauthorized(
                "the bearer token's subject is not valid",
            ));
        }
        Ok(Self {
            id: claims.sub,
            role: claims.role,
        })
    }
}

/// The token of `Authorization: Bearer <token>`; the scheme's case does not matter
/// (RFC 7235), and any number of spaces may follow it.
pub(crate) fn bearer_token(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("a bearer token is required"))?;
    header
        .to_str()
        .ok()
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or(ApiError::Unauthorized(
            "the Authorization header must be `Bearer <token>`",
        ))
}

/// How long a token was made to live, in seconds: from its `iat` (or from now, without one, or
/// when `iat` is in the future) to its `exp`.
fn lifetime(claims: &Claims, now: i64) -> i64 {
    let from = claims.iat.map_or(now, |iat| iat.min(now));
    claims.exp.saturating_sub(from)
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    use super::*;

    fn key(secret: &str) -> TokenKey {
        TokenKey::new(SecretString::from(secret.to_owned()))
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "prov-1".into(),
            role: Role::Provider,
            exp,
            iat: None,
        }
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let token = key("s3cret").mint(&claims(1_000));
        assert_eq!(key("s3cret").verify(&token, 999), Ok(claims(1_000)));
        assert_eq!(
            key("s3cret").verify(&token, 1_000),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_token_signed_with_another_key_or_altered_is_refused() {
        let token = key("s3cret").mint(&claims(1_000));
        assert_eq!(
            key("other").verify(&token, 0),
            Err(TokenError::BadSignature)
        );
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"sub":"x","role":"admin","exp":5000}"#);
        parts[1] = &forged;
        assert_eq!(
            key("s3cret").verify(&parts.join("."), 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn the_scheme_is_matched_whatever_its_case() {
        use axum::http::{HeaderMap, HeaderValue};
        for value in ["Bearer abc", "bearer abc", "BEARER  abc"] {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer_token(&headers).ok(), Some("abc"), "{value}");
        }
        for value in ["Basic abc", "Bearerabc", "Bearer ", "abc"] {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
            assert!(bearer_token(&headers).is_err(), "{value}");
        }
    }

    #[test]
    fn a_lifetime_runs_from_iat_or_now_whichever_is_earlier() {
        let mut c = claims(1_000);
        assert_eq!(lifetime(&c, 400), 600);
        c.iat = Some(100);
        assert_eq!(lifetime(&c, 400), 900);
        c.iat = Some(900);
        assert_eq!(
            lifetime(&c, 400),
            600,
            "an iat in the future does not shorten it"
        );
    }

    /// Signed with the right key, yet refused: no `exp`, an `exp` that is not a number, and
    /// another HMAC algorithm than HS256.
    #[test]
    fn a_signed_token_without_a_numeric_exp_or_with_another_algorithm_is_refused() {
        let sign = |alg: Algorithm, claims: serde_json::Value| {
            let key = EncodingKey::from_secret(b"s3cret");
            jsonwebtoken::encode(&Header::new(alg), &claims, &key).expect("encodes")
        };
        let k = key("s3cret");
        let no_exp = sign(
            Algorithm::HS256,
            serde_json::json!({"sub": "x", "role": "admin"}),
        );
        assert_eq!(k.verify(&no_exp, 0), Err(TokenError::Malformed));
        let text_exp = sign(
            Algorithm::HS256,
            serde_json::json!({"sub": "x", "role": "admin", "exp": "99999999999"}),
        );
        assert_eq!(k.verify(&text_exp, 0), Err(TokenError::Malformed));
        let hs512 = sign(
            Algorithm::HS512,
            serde_json::json!({"sub": "x", "role": "admin", "exp": 5000}),
        );
        assert_eq!(k.verify(&hs512, 0), Err(TokenError::Malformed));
    }

    #[test]
    fn unsigned_and_malformed_tokens_are_refused() {
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"x","role":"admin","exp":5000}"#);
        let k = key("s3cret");
        assert_eq!(
            k.verify(&format!("{none_header}.{payload}."), 0),
            Err(TokenError::Malformed)
        );
        assert_eq!(k.verify("abc", 0), Err(TokenError::Malformed));
        assert_eq!(k.verify("a.b.c.d", 0), Err(TokenError::Malformed));
    }
}
