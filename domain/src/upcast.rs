//! Reading old event shapes as the current ones. Events are never rewritten in the store; each
//! reader passes a stored payload through [`upcast`] with the version it was written at, and
//! gets the shape the current code deserializes.
//!
//! | event | version | change |
//! | --- | --- | --- |
//! | `Cancelled` | 1.0 → 2.0 | `refund` added (`full`, `none_late` or `not_due`: what the cancellation does to the payment); written before the cancellation policy existed, nothing was decided: `not_due` |

use serde_json::Value;

/// The version each consultation event is written at now.
pub fn current_version(event_type: &str) -> &'static str {
    match event_type {
        "Cancelled" => "2.0",
        _ => "1.0",
    }
}

/// Brings a stored consultation event payload to the current shape of its type.
pub fn upcast(event_type: &str, event_version: &str, mut payload: Value) -> Value {
    if event_type == "Cancelled" && event_version == "1.0" {
        if let Some(fields) = payload.get_mut("Cancelled").and_then(Value::as_object_mut) {
            fields
                .entry("refund")
                .or_insert_with(|| Value::String("not_due".to_owned()));
        }
    }
    payload
}

/// [`upcast`] over a payload as stored text; the text unchanged when it is current.
pub fn upcast_text(event_type: &str, event_version: &str, payload: String) -> String {
    if event_version == current_version(event_type) {
        return payload;
    }
    match serde_json::from_str(&payload) {
        Ok(value) => upcast(event_type, event_version, value).to_string(),
        Err(_) => payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConsultationEvent;

    /// A `Cancelled` as version 1.0 wrote it, before the refund policy.
    const V1: &str =
        r#"{"Cancelled":{"by":"patient","reason":"No longer needed","at":"2030-01-05T12:00:00Z"}}"#;

    #[test]
    fn a_version_1_cancellation_is_read_as_version_2() {
        assert!(
            serde_json::from_str::<ConsultationEvent>(V1).is_err(),
            "the current shape needs `refund`: without the upcaster v1 does not read"
        );
        let current = upcast_text("Cancelled", "1.0", V1.to_owned());
        let event: ConsultationEvent = serde_json::from_str(&current).expect("reads as v2");
        assert!(matches!(
            event,
            ConsultationEvent::Cancelled {
                refund: crate::RefundDue::NotDue,
                ..
            }
        ));
        // Current payloads pass unchanged.
        assert_eq!(upcast_text("Cancelled", "2.0", current.clone()), current);
        assert_eq!(current_version("Cancelled"), "2.0");
        assert_eq!(current_version("Booked"), "1.0");
    }
}
