//! Reads of the `consultations` read model: one consultation, and cursor-paginated lists.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use consult_store::{Store, StoreError, SummaryFilter};

/// One row of the read model.
pub use consult_store::Summary;
/// How a time range selects consultations.
pub use consult_store::SummaryWindow as TimeWindow;

/// Where a page ends: the sort key of its last item. Opaque to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub starts_at_ms: i64,
    pub id: String,
}

#[derive(Debug, thiserror::Error)]
#[error("the cursor is not one this server handed out")]
pub struct CursorError;

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}.{}", self.starts_at_ms, self.id))
    }

    pub fn decode(text: &str) -> Result<Self, CursorError> {
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| CursorError)?;
        let text = String::from_utf8(bytes).map_err(|_| CursorError)?;
        let (ms, id) = text.split_once('.').ok_or(CursorError)?;
        let starts_at_ms = ms.parse().map_err(|_| CursorError)?;
        // No id this server hands out is empty or holds a control character, and PostgreSQL
        // text cannot hold a NUL: such a cursor is the client's mistake, not a query to run.
        if id.is_empty() || id.chars().any(char::is_control) {
            return Err(CursorError);
        }
        Ok(Self {
            starts_at_ms,
            id: id.to_owned(),
        })
    }
}

/// What a list asks for. Every field narrows; `None` does not filter.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub patient_id: Option<String>,
    pub provider_id: Option<String>,
    /// Any of these statuses; empty = any status.
    pub statuses: Vec<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub window: TimeWindow,
    pub after: Option<Cursor>,
    pub limit: u32,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Summary>,
    pub next: Option<Cursor>,
}

/// One consultation's row, if the projection has it.
pub async fn consultation(store: &Store, id: &str) -> Result<Option<Summary>, StoreError> {
    store.consultation_summary(id).await
}

/// A page of consultations in start order (then id), after the filter's cursor.
pub async fn consultations(store: &Store, filter: &ListFilter) -> Result<Page, StoreError> {
    let limit = filter.limit.clamp(1, 1000);
    let mut items = store
        .consultation_summaries(&SummaryFilter {
            patient_id: filter.patient_id.as_deref(),
            provider_id: filter.provider_id.as_deref(),
            statuses: &filter.statuses,
            from_ms: filter.from.map(|from| from.timestamp_millis()),
            to_ms: filter.to.map(|to| to.timestamp_millis()),
            window: filter.window,
            after: filter
                .after
                .as_ref()
                .map(|after| (after.starts_at_ms, after.id.as_str())),
            // One more than asked: whether it comes tells whether there is a next page.
            limit: i64::from(limit) + 1,
        })
        .await?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| Cursor {
            starts_at_ms: last.starts_at_ms,
            id: last.id.clone(),
        })
    } else {
        None
    };
    Ok(Page { items, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips() {
        let cursor = Cursor {
            starts_at_ms: 1_900_000_000_000,
            id: "7f0c8a4e-3b7d-4f4e-9a57-0f3d5f1c2b10".to_owned(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).ok(), Some(cursor));
    }

    #[test]
    fn a_cursor_with_a_nul_or_another_control_character_is_refused() {
        for text in ["1.a\u{0}b", "1.\u{0}", "1.a\nb", "1."] {
            let encoded = URL_SAFE_NO_PAD.encode(text);
            assert!(Cursor::decode(&encoded).is_err(), "{text:?}");
        }
        assert!(Cursor::decode("MS5hAGI").is_err());
    }
}
