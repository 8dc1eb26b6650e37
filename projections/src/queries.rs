//! Reads of the `consultations` read model: one consultation, and cursor-paginated lists.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use consult_domain::Consultation;
use consult_store::{with_pool, Store, StoreError};
use sqlx::types::Json;
use sqlx::QueryBuilder;

/// One row of the read model.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Summary {
    pub id: String,
    pub patient_id: String,
    pub provider_id: String,
    pub status: String,
    pub payment_status: String,
    pub mode: String,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    /// The stream's last sequence folded into this row.
    pub version: i64,
    /// Global position of that event.
    pub position: i64,
    pub updated_at_ms: i64,
    /// The consultation as its events make it.
    pub state: Json<Consultation>,
}

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

/// How a time range selects consultations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeWindow {
    /// `from <= starts_at < to` (the list).
    #[default]
    Starts,
    /// `starts_at < to && ends_at > from` (a schedule: whatever occupies part of the range).
    Overlaps,
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

const COLUMNS: &str = "SELECT id, patient_id, provider_id, status, payment_status, mode, \
                       starts_at_ms, ends_at_ms, version, position, updated_at_ms, state \
                       FROM consultation_summaries";

/// One consultation's row, if the projection has it.
pub async fn consultation(store: &Store, id: &str) -> Result<Option<Summary>, StoreError> {
    let sql = format!("{COLUMNS} WHERE id = $1");
    Ok(with_pool!(store.db(), pool => {
        sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?
    }))
}

/// A page of consultations in start order (then id), after the filter's cursor.
pub async fn consultations(store: &Store, filter: &ListFilter) -> Result<Page, StoreError> {
    let limit = filter.limit.clamp(1, 1000);
    let mut items: Vec<Summary> = with_pool!(store.db(), pool => {
        let mut query = QueryBuilder::new(COLUMNS);
        query.push(" WHERE 1 = 1");
        if let Some(patient) = &filter.patient_id {
            query.push(" AND patient_id = ").push_bind(patient);
        }
        if let Some(provider) = &filter.provider_id {
            query.push(" AND provider_id = ").push_bind(provider);
        }
        if !filter.statuses.is_empty() {
            query.push(" AND status IN (");
            let mut list = query.separated(", ");
            for status in &filter.statuses {
                list.push_bind(status);
            }
            query.push(")");
        }
        let (lower, upper) = match filter.window {
            TimeWindow::Starts => ("starts_at_ms >= ", "starts_at_ms < "),
            TimeWindow::Overlaps => ("ends_at_ms > ", "starts_at_ms < "),
        };
        if let Some(from) = filter.from {
            query.push(" AND ").push(lower).push_bind(from.timestamp_millis());
        }
        if let Some(to) = filter.to {
            query.push(" AND ").push(upper).push_bind(to.timestamp_millis());
        }
        if let Some(after) = &filter.after {
            query
                .push(" AND (starts_at_ms > ")
                .push_bind(after.starts_at_ms)
                .push(" OR (starts_at_ms = ")
                .push_bind(after.starts_at_ms)
                .push(" AND id > ")
                .push_bind(&after.id)
                .push("))");
        }
        query
            .push(" ORDER BY starts_at_ms, id LIMIT ")
            .push_bind(i64::from(limit) + 1);
        query.build_query_as().fetch_all(pool).await?
    });
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
