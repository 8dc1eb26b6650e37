//! Who looked at what (`access_log`): every read of a consultation, its history, its
//! notifications or its FHIR export, with the caller, the outcome and the request id. The API
//! writes an entry before the response leaves; a read that cannot be recorded is not answered.

use crate::{Store, StoreError};

/// An access to record.
#[derive(Debug, Clone, Copy)]
pub struct AccessRecord<'a> {
    pub at_ms: i64,
    pub actor_id: &'a str,
    pub actor_role: &'a str,
    pub action: &'a str,
    pub consultation_id: &'a str,
    /// The response's HTTP status.
    pub outcome: i32,
    pub request_id: &'a str,
}

/// A recorded access.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccessEntry {
    pub id: i64,
    pub at_ms: i64,
    pub actor_id: String,
    pub actor_role: String,
    pub action: String,
    pub consultation_id: String,
    pub outcome: i32,
    pub request_id: String,
}

impl Store {
    /// Records one access.
    pub async fn record_access(&self, access: &AccessRecord<'_>) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO access_log (at_ms, actor_id, actor_role, action, \
                           consultation_id, outcome, request_id) \
                           VALUES ($1, $2, $3, $4, $5, $6, $7)";
        with_pool!(self.db(), pool => {
            sqlx::query(SQL)
                .bind(access.at_ms)
                .bind(access.actor_id)
                .bind(access.actor_role)
                .bind(access.action)
                .bind(access.consultation_id)
                .bind(access.outcome)
                .bind(access.request_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The accesses to this consultation by this actor (`None` does not filter), newest first,
    /// at most 500.
    pub async fn access_entries(
        &self,
        consultation_id: Option<&str>,
        actor_id: Option<&str>,
    ) -> Result<Vec<AccessEntry>, StoreError> {
        const SQL: &str = "SELECT id, at_ms, actor_id, actor_role, action, consultation_id, \
                                  outcome, request_id FROM access_log \
                            WHERE ($1 IS NULL OR consultation_id = $1) \
                              AND ($2 IS NULL OR actor_id = $2) \
                            ORDER BY at_ms DESC, id DESC LIMIT 500";
        Ok(with_pool!(self.db(), pool => {
            sqlx::query_as(SQL)
                .bind(consultation_id)
                .bind(actor_id)
                .fetch_all(pool)
                .await?
        }))
    }
}
