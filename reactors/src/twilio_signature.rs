//! Twilio webhook signatures (`X-Twilio-Signature`) for form-encoded webhooks.
//!
//! Twilio signs each webhook request with the account's Auth Token:
//!
//! 1. start from the full URL Twilio called, exactly as configured (scheme, host, path, query);
//! 2. for a POST with form parameters, append every parameter sorted by name (byte order) as
//!    `name` followed by `value`, without separators; a name that occurs several times
//!    contributes each of its values, values sorted (exact duplicate pairs count once, as in
//!    Twilio's official libraries);
//! 3. the signature is `base64(HMAC-SHA1(key = auth token, message = that string))`.
//!
//! [`verify`] compares in constant time and, like the official libraries, also accepts the URL
//! with and without an explicit default port (`:443` for https, `:80` for http), because
//! Twilio is not consistent about including it.
//!
//! For a GET webhook the parameters are already part of the URL: pass an empty `params`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// Computes the `X-Twilio-Signature` value Twilio sends for a request to `url` with the form
/// parameters `params` (in any order), signed with `auth_token`.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    STANDARD.encode(mac_for(auth_token, url, params).finalize().into_bytes())
}

/// Checks an `X-Twilio-Signature` header against the request's URL and form parameters.
///
/// The comparison is constant-time. The URL is tried as given and, when it is `http`/`https`,
/// also with its default port added (if absent) or removed (if present). Returns `false` for a
/// header that is not valid base64.
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], header: &str) -> bool {
    let Ok(expected) = STANDARD.decode(header.trim()) else {
        return false;
    };
    let mut candidates = vec![url.to_owned()];
    candidates.extend(default_port_variant(url));
    // Evaluate every candidate (no early exit) so the time taken does not depend on which
    // variant matched.
    candidates.iter().fold(false, |matched, candidate| {
        let ok = mac_for(auth_token, candidate, params)
            .verify_slice(&expected)
            .is_ok();
        matched | ok
    })
}

/// The keyed MAC over the string Twilio signs.
fn mac_for(auth_token: &str, url: &str, params: &[(String, String)]) -> HmacSha1 {
    let mut mac =
        HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(url.as_bytes());
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// The same URL with the scheme's default port toggled: `https://h/p` ⇄ `https://h:443/p`,
/// `http://h/p` ⇄ `http://h:80/p`. `None` for other schemes or other explicit ports.
fn default_port_variant(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return None,
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The port follows the last ':' that comes after any IPv6 literal's closing bracket.
    let host_start = authority.rfind(['@', ']']).map_or(0, |i| i + 1);
    let host_and_port = &authority[host_start..];
    let authority = match host_and_port.rfind(':') {
        Some(colon) => {
            let port = &host_and_port[colon + 1..];
            if port != default_port {
                return None;
            }
            authority[..host_start + colon].to_owned()
        }
        None => format!("{authority}:{default_port}"),
    };
    Some(format!("{scheme}://{authority}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    /// The known-answer vector of Twilio's own test suite (twilio-python,
    /// `tests/unit/test_request_validator.py`), re-checked with Python's hmac/hashlib/base64.
    fn twilio_suite_params() -> Vec<(String, String)> {
        params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ])
    }

    #[test]
    fn matches_twilios_known_answer_vectors() {
        let params = twilio_suite_params();
        assert_eq!(
            signature("12345", URL, &params),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert!(verify(
            "12345",
            URL,
            &params,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn matches_documentation_style_example() {
        // Same URL and token with Caller/From = +12349013030. The value
        // `GYBdp0VVqFXMWQh+T5ULIb/tsKg=` sometimes quoted for this example does NOT match the
        // algorithm: Python (hmac.new(b"12345", (url + sorted name+value pairs).encode(),
        // hashlib.sha1), base64) gives `0/KCTR6DLpKmkAf8muzZqo1nDgQ=`, which is asserted here.
        let params = params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(
            signature("12345", URL, &params),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert!(!verify(
            "12345",
            URL,
            &params,
            "GYBdp0VVqFXMWQh+T5ULIb/tsKg="
        ));
    }

    #[test]
    fn accepts_the_url_with_or_without_the_default_port() {
        let params = twilio_suite_params();
        // From Twilio's test suite: the signature of the https URL with ":443" added, and of
        // the http URL with ":80" added.
        assert!(verify(
            "12345",
            URL,
            &params,
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        ));
        let http = URL.replace("https", "http");
        assert!(verify(
            "12345",
            &http,
            &params,
            "0ZXoZLH/DfblKGATFgpif+LLRf4="
        ));
        // And the other way round: the request URL carries the port, the signature does not.
        let with_port = URL.replace(".com", ".com:443");
        assert!(verify(
            "12345",
            &with_port,
            &params,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        // A non-default port is part of what is signed.
        let other_port = URL.replace(".com", ".com:8443");
        assert!(!verify(
            "12345",
            &other_port,
            &params,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn rejects_tampering_and_wrong_tokens() {
        let good = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        let mut tampered = twilio_suite_params();
        tampered[1].1 = "1235".to_owned();
        assert!(!verify("12345", URL, &tampered, good));

        let mut extra = twilio_suite_params();
        extra.push(("Extra".to_owned(), "1".to_owned()));
        assert!(!verify("12345", URL, &extra, good));

        assert!(!verify("12346", URL, &twilio_suite_params(), good));
        assert!(!verify(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &twilio_suite_params(),
            good
        ));
        assert!(!verify("12345", URL, &twilio_suite_params(), "not base64!"));
        assert!(!verify("12345", URL, &twilio_suite_params(), ""));
    }

    #[test]
    fn handles_repeated_parameter_names() {
        // Values checked with Python: url + "MediaUrl" + "a" + "MediaUrl" + "b" + "To" + "+1555".
        let url = "https://example.com/x";
        let one_order = params(&[("MediaUrl", "b"), ("MediaUrl", "a"), ("To", "+1555")]);
        let other_order = params(&[("To", "+1555"), ("MediaUrl", "a"), ("MediaUrl", "b")]);
        assert_eq!(
            signature("tok", url, &one_order),
            "rg7R+aVSehwrEeS8lfJGbfOATXk="
        );
        assert_eq!(
            signature("tok", url, &other_order),
            "rg7R+aVSehwrEeS8lfJGbfOATXk="
        );
        // Dropping one of the values changes the signature.
        let fewer = params(&[("MediaUrl", "a"), ("To", "+1555")]);
        assert_eq!(
            signature("tok", url, &fewer),
            "MPQ67Zwapq/jhgpV7K8m3H/pkG8="
        );
        assert!(!verify("tok", url, &fewer, "rg7R+aVSehwrEeS8lfJGbfOATXk="));
    }

    #[test]
    fn toggles_only_default_ports() {
        assert_eq!(
            default_port_variant("https://h.example/p?q=1").as_deref(),
            Some("https://h.example:443/p?q=1")
        );
        assert_eq!(
            default_port_variant("http://h.example:80").as_deref(),
            Some("http://h.example")
        );
        assert_eq!(
            default_port_variant("https://[::1]:443/p").as_deref(),
            Some("https://[::1]/p")
        );
        assert_eq!(default_port_variant("https://h.example:8443/p"), None);
        assert_eq!(default_port_variant("ftp://h.example/p"), None);
        assert_eq!(default_port_variant("not a url"), None);
    }
}
