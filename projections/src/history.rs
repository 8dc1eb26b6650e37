//! A consultation's history for auditors: every event as stored (with its place in the log,
//! its actor and its hashes), the state they fold to, and the side effects they caused
//! (notifications, calls, jobs), optionally as of an instant. `GET
//! /v1/consultations/{id}/history` answers it and `consult history` prints it.

use chrono::{DateTime, TimeZone as _, Utc};
use consult_domain::Consultation;
use consult_store::{calls, events, jobs, notification_log, Store, StoreError};
use serde_json::{json, Value};

/// Why a history cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event does not read as a consultation event (ids only, never its content).
    #[error("event {sequence} cannot be read: {reason}")]
    Unreadable { sequence: i64, reason: String },
}

fn instant(ms: i64) -> Option<String> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Parses the event metadata we write (`actor_id`, `actor_role`, `correlation_id`,
/// `causation_id`, `request_id`).
fn metadata(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// A consultation's history as of an instant (all of it when `None`): what
/// `GET /v1/consultations/{id}/history` answers and `consult history` prints. `None` when the
/// consultation does not exist.
pub async fn history(
    store: &Store,
    id: &str,
    as_of: Option<DateTime<Utc>>,
) -> Result<Option<Value>, HistoryError> {
    let rows = events::consultation_stream(store, id).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut consultation = Consultation::default();
    let mut items = Vec::new();
    for event in rows {
        let sequence = event.sequence;
        let recorded = parse_recorded(&event.recorded_at);
        if let (Some(as_of), Some(recorded)) = (as_of, recorded) {
            // At the precision `recorded_at` is shown with (PostgreSQL keeps microseconds):
            // `as_of` = an event's `recorded_at` includes that event.
            if recorded.timestamp_millis() > as_of.timestamp_millis() {
                break;
            }
        }
        // Shown as stored (what the hash covers); folded in its current shape.
        let payload_value: Value =
            serde_json::from_str(&event.stored_payload).unwrap_or(Value::Null);
        match serde_json::from_str(&event.payload) {
            Ok(event) => consultation.evolve(event),
            Err(err) => {
                return Err(HistoryError::Unreadable {
                    sequence,
                    reason: err.to_string(),
                })
            }
        }
        let meta = metadata(&event.metadata);
        items.push(json!({
            "sequence": sequence,
            "position": event.position,
            "type": event.event_type,
            "version": event.event_version,
            "recorded_at": recorded.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "actor": {"id": meta["actor_id"], "role": meta["actor_role"]},
            "correlation_id": meta["correlation_id"],
            "causation_id": meta["causation_id"],
            "request_id": meta["request_id"],
            "payload": payload_value,
            "prev_hash": event.prev_hash,
            "hash": event.hash,
        }));
    }
    let until_ms = as_of.map_or(i64::MAX, |t| t.timestamp_millis());
    let side_effects = side_effects(store, id, until_ms).await?;
    Ok(Some(json!({
        "consultation_id": id,
        "as_of": as_of.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "state": {
            "status": consultation.status.as_str(),
            "payment_status": consultation.payment.as_str(),
            "version": consultation.version,
            "detail": serde_json::to_value(&consultation).unwrap_or(Value::Null),
        },
        "events": items,
        "side_effects": side_effects,
    })))
}

fn parse_recorded(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            // PostgreSQL's text form of timestamptz: `2026-11-21 04:00:00.123456+00`.
            DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
                .map(|t| t.with_timezone(&Utc))
                .ok()
        })
}

/// The outcomes of what the events caused, recorded up to `until_ms`.
async fn side_effects(store: &Store, id: &str, until_ms: i64) -> Result<Value, StoreError> {
    let notifications = notification_log::of_consultation_until(store, id, until_ms).await?;
    let calls = calls::of_consultation_until(store, id, until_ms).await?;
    let jobs = jobs::timers_of(store, id, until_ms).await?;
    Ok(json!({
        "notifications": notifications.into_iter().map(|n| json!({
            "id": n.id, "recipient_role": n.recipient_role, "channel": n.channel,
            "kind": n.kind, "recipient": n.recipient_masked, "status": n.status,
            "attempts": n.attempts, "provider_message_id": n.provider_message_id,
            "scheduled_for": instant(n.scheduled_for_ms),
            "sent_at": n.sent_at_ms.and_then(instant), "last_error": n.last_error,
        })).collect::<Vec<_>>(),
        "calls": calls.into_iter().map(|c| json!({
            "id": c.id, "requested_by": c.requested_by, "provider_call_id": c.provider_call_id,
            "status": c.status, "duration_seconds": c.duration_seconds,
            "last_error": c.last_error, "created_at": instant(c.created_at_ms),
            "updated_at": instant(c.updated_at_ms),
        })).collect::<Vec<_>>(),
        "jobs": jobs.into_iter().map(|j| json!({
            "id": j.id, "kind": j.kind, "status": j.status, "attempts": j.attempts,
            "last_error": j.last_error, "created_at": instant(j.created_at_ms),
            "due_at": instant(j.due_at_ms), "finished_at": j.finished_at_ms.and_then(instant),
        })).collect::<Vec<_>>(),
    }))
}
