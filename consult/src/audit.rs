//! The auditors' command line: `history` (a readable timeline, or JSON), `export` (the log as
//! JSON Lines, streamed in constant memory and resumable by position) and `import` (an export
//! into an empty store, hashes and all, so that `verify` can check the copy).

use serde_json::Value;

pub use consult_store::export::{export, import, ExportFilter, ExportSummary, ExportedEvent};

/// A history as a readable timeline.
pub fn timeline(history: &Value) -> String {
    let mut out = String::new();
    let id = history["consultation_id"].as_str().unwrap_or("");
    out.push_str(&format!("consultation {id}"));
    if let Some(as_of) = history["as_of"].as_str() {
        out.push_str(&format!(" as of {as_of}"));
    }
    out.push('\n');
    for event in history["events"].as_array().into_iter().flatten() {
        let hash = event["hash"]
            .as_str()
            .map_or("not sealed yet", |h| &h[..12.min(h.len())]);
        out.push_str(&format!(
            "  {}  #{:<3} {:<18} by {} {}  (position {}, hash {hash})\n",
            event["recorded_at"].as_str().unwrap_or("?"),
            event["sequence"],
            event["type"].as_str().unwrap_or("?"),
            event["actor"]["role"].as_str().unwrap_or("?"),
            event["actor"]["id"].as_str().unwrap_or("?"),
            event["position"],
        ));
    }
    out.push_str(&format!(
        "state: {} (payment {}), version {}\n",
        history["state"]["status"].as_str().unwrap_or("?"),
        history["state"]["payment_status"].as_str().unwrap_or("?"),
        history["state"]["version"],
    ));
    let effects = &history["side_effects"];
    for n in effects["notifications"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  notification {} to {} by {}: {} (attempts {})\n",
            n["kind"].as_str().unwrap_or("?"),
            n["recipient_role"].as_str().unwrap_or("?"),
            n["channel"].as_str().unwrap_or("?"),
            n["status"].as_str().unwrap_or("?"),
            n["attempts"],
        ));
    }
    for c in effects["calls"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  call asked by {}: {}\n",
            c["requested_by"].as_str().unwrap_or("?"),
            c["status"].as_str().unwrap_or("?"),
        ));
    }
    for j in effects["jobs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} job: {} (attempts {})\n",
            j["kind"].as_str().unwrap_or("?"),
            j["status"].as_str().unwrap_or("?"),
            j["attempts"],
        ));
    }
    out
}
