//! Twilio access tokens: the signed JWT a participant's Video SDK joins a room with.
//!
//! The token is an HS256 JWT signed with an API Key secret (never the account's Auth Token):
//! header `{"alg":"HS256","cty":"twilio-fpa;v=1","typ":"JWT"}`, claims `jti`
//! (`<API key SID>-<issued at>`), `iss` (API key SID), `sub` (account SID), `nbf` and `exp`
//! (unix seconds), and `grants` = `{"identity": …, "video": {"room": …}}`. There is no `iat`.
//! Minting is pure: no clock and no I/O, the times come in the [`AccessGrant`].

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::AccessGrant;

/// The JOSE header, byte for byte as Twilio's own libraries write it (keys sorted):
/// `{"alg":"HS256","cty":"twilio-fpa;v=1","typ":"JWT"}`. `jsonwebtoken` writes a header's
/// standard fields first (`typ`, `alg`, `cty`, …) and its extra fields after them, so `typ` goes
/// among the extras to come last.
fn header() -> Header {
    let mut header = Header::new(Algorithm::HS256);
    header.typ = None;
    header.cty = Some("twilio-fpa;v=1".to_owned());
    header.extras.insert("typ".to_owned(), "JWT".to_owned());
    header
}

/// The claims, in a fixed order (the order Twilio's Python library writes them) so a token
/// is the same bytes whatever features `serde_json` is built with.
#[derive(Serialize)]
struct Claims<'a> {
    jti: String,
    grants: Grants<'a>,
    iss: &'a str,
    exp: i64,
    nbf: i64,
    sub: &'a str,
}

#[derive(Serialize)]
struct Grants<'a> {
    video: VideoGrant<'a>,
    identity: &'a str,
}

#[derive(Serialize)]
struct VideoGrant<'a> {
    room: &'a str,
}

/// Mints a Twilio access token granting `grant.identity` entry to the Video room `grant.room`
/// from `grant.issued_at` until `grant.expires_at` (Twilio accepts lifetimes up to 24 hours).
///
/// `account_sid` is the `AC…` account, `api_key_sid` and `api_key_secret` an API key (`SK…`) of
/// that account created in the US1 region; the secret only keys the signature.
pub fn twilio_access_token(
    account_sid: &str,
    api_key_sid: &str,
    api_key_secret: &str,
    grant: &AccessGrant,
) -> String {
    let issued_at = grant.issued_at.timestamp();
    let claims = Claims {
        jti: format!("{api_key_sid}-{issued_at}"),
        grants: Grants {
            video: VideoGrant { room: &grant.room },
            identity: &grant.identity,
        },
        iss: api_key_sid,
        exp: grant.expires_at.timestamp(),
        nbf: issued_at,
        sub: account_sid,
    };
    let key = EncodingKey::from_secret(api_key_secret.as_bytes());
    // An HMAC key of any length and claims of strings and integers always encode.
    jsonwebtoken::encode(&header(), &claims, &key)
        .unwrap_or_else(|_| unreachable!("an HS256 token of strings and integers encodes"))
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use chrono::{TimeZone as _, Utc};
    use hmac::{Hmac, Mac as _};
    use serde_json::{json, Value};
    use sha2::Sha256;

    use super::*;

    type HmacSha256 = Hmac<Sha256>;

    const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
    const API_KEY_SID: &str = "SK11111111111111111111111111111111";
    const API_KEY_SECRET: &str = "made-up-api-key-secret-for-tests";

    fn grant() -> AccessGrant {
        AccessGrant {
            identity: "patient-42".to_owned(),
            room: "consult-123".to_owned(),
            issued_at: Utc
                .timestamp_opt(1_795_213_535, 0)
                .single()
                .expect("valid time"),
            expires_at: Utc
                .timestamp_opt(1_795_217_135, 0)
                .single()
                .expect("valid time"),
        }
    }

    fn parts(token: &str) -> (String, String, String) {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token}");
        (
            parts[0].to_owned(),
            parts[1].to_owned(),
            parts[2].to_owned(),
        )
    }

    fn decode(part: &str) -> Vec<u8> {
        assert!(!part.contains('='), "no padding: {part}");
        assert!(
            !part.contains('+') && !part.contains('/'),
            "url-safe: {part}"
        );
        URL_SAFE_NO_PAD.decode(part).expect("base64url")
    }

    #[test]
    fn header_is_byte_for_byte_twilios() {
        let token = twilio_access_token(ACCOUNT_SID, API_KEY_SID, API_KEY_SECRET, &grant());
        let (header, _, _) = parts(&token);
        assert_eq!(
            decode(&header),
            br#"{"alg":"HS256","cty":"twilio-fpa;v=1","typ":"JWT"}"#
        );
    }

    #[test]
    fn claims_match_the_verified_vector() {
        let token = twilio_access_token(ACCOUNT_SID, API_KEY_SID, API_KEY_SECRET, &grant());
        let (_, payload, _) = parts(&token);
        let claims: Value = serde_json::from_slice(&decode(&payload)).expect("JSON claims");
        assert_eq!(
            claims,
            json!({
                "jti": "SK11111111111111111111111111111111-1795213535",
                "grants": {"video": {"room": "consult-123"}, "identity": "patient-42"},
                "iss": "SK11111111111111111111111111111111",
                "exp": 1_795_217_135,
                "nbf": 1_795_213_535,
                "sub": "AC0123456789abcdef0123456789abcdef",
            })
        );
        assert!(claims.get("iat").is_none());
    }

    #[test]
    fn signature_is_hmac_sha256_of_the_signing_input_under_the_api_key_secret() {
        let token = twilio_access_token(ACCOUNT_SID, API_KEY_SID, API_KEY_SECRET, &grant());
        let (header, payload, signature) = parts(&token);

        let mut mac = HmacSha256::new_from_slice(API_KEY_SECRET.as_bytes()).expect("HMAC key");
        mac.update(format!("{header}.{payload}").as_bytes());
        mac.verify_slice(&decode(&signature))
            .expect("signature verifies under the API key secret");

        let mut wrong = HmacSha256::new_from_slice(b"the-account-auth-token").expect("HMAC key");
        wrong.update(format!("{header}.{payload}").as_bytes());
        assert!(wrong.verify_slice(&decode(&signature)).is_err());
    }

    /// The whole token, computed outside Rust (Python `hmac`/`base64` over the header above and
    /// the claims in Twilio's order, compact JSON).
    #[test]
    fn whole_token_matches_an_independently_computed_vector() {
        let token = twilio_access_token(ACCOUNT_SID, API_KEY_SID, API_KEY_SECRET, &grant());
        assert_eq!(
            token,
            concat!(
                "eyJhbGciOiJIUzI1NiIsImN0eSI6InR3aWxpby1mcGE7dj0xIiwidHlwIjoiSldUIn0.",
                "eyJqdGkiOiJTSzExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExLTE3OTUyMTM1MzUiLCJncmFu",
                "dHMiOnsidmlkZW8iOnsicm9vbSI6ImNvbnN1bHQtMTIzIn0sImlkZW50aXR5IjoicGF0aWVudC00MiJ9",
                "LCJpc3MiOiJTSzExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExIiwiZXhwIjoxNzk1MjE3MTM1",
                "LCJuYmYiOjE3OTUyMTM1MzUsInN1YiI6IkFDMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYi",
                "fQ.7TSQB931Og59iMeHzIduxcCpdQWoKoqCACekDuQJH-Y",
            )
        );
    }

    #[test]
    fn identity_and_room_are_json_escaped() {
        let mut grant = grant();
        grant.identity = "provider-\"7\"".to_owned();
        let token = twilio_access_token(ACCOUNT_SID, API_KEY_SID, API_KEY_SECRET, &grant);
        let (_, payload, _) = parts(&token);
        let claims: Value = serde_json::from_slice(&decode(&payload)).expect("JSON claims");
        assert_eq!(claims["grants"]["identity"], "provider-\"7\"");
    }
}
