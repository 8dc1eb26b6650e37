//! Every event the payment provider's webhook delivered (`payment_events`), each processed
//! once: it is claimed with an insert that the primary key makes atomic, so of two copies
//! arriving together one processes it and the other waits for its outcome. A claim whose
//! processing failed is released (the provider retries); one left by a process that died is
//! taken over after 30 s.

use crate::{Store, StoreError};

/// A claim older than this, never finished, belongs to a process that died.
const ABANDONED_AFTER_MS: i64 = 30_000;

/// What became of an attempt to claim a provider event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentEventClaim {
    /// This delivery owns the event: process it, then `finish` or `release` the claim.
    Ours,
    /// The event was processed before, with this outcome.
    Done(String),
    /// Another copy holds the claim and is still processing it, or released it just now: ask
    /// again.
    Busy,
}

/// One received event and what became of it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PaymentEventRow {
    pub event_id: String,
    pub event_type: String,
    /// Empty when the event named no consultation.
    pub consultation_id: String,
    /// `None` while a claim is in progress.
    pub outcome: Option<String>,
    pub detail: Option<String>,
    pub received_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    outcome: Option<String>,
    claimed_at_ms: i64,
}

impl Store {
    /// Claims the provider event `event_id` for this delivery.
    pub async fn claim_payment_event(
        &self,
        event_id: &str,
        event_type: &str,
        consultation_id: &str,
        now_ms: i64,
    ) -> Result<PaymentEventClaim, StoreError> {
        const INSERT: &str = "INSERT INTO payment_events (event_id, event_type, consultation_id, \
                              received_at_ms, claimed_at_ms) VALUES ($1, $2, $3, $4, $4) \
                              ON CONFLICT (event_id) DO NOTHING";
        const SELECT: &str =
            "SELECT outcome, claimed_at_ms FROM payment_events WHERE event_id = $1";
        const TAKE_OVER: &str = "UPDATE payment_events SET claimed_at_ms = $2 \
                                 WHERE event_id = $1 AND outcome IS NULL AND claimed_at_ms = $3";
        let inserted = with_pool!(self.db(), pool => {
            sqlx::query(INSERT)
                .bind(event_id)
                .bind(event_type)
                .bind(consultation_id)
                .bind(now_ms)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if inserted == 1 {
            return Ok(PaymentEventClaim::Ours);
        }
        let row: Option<ClaimRow> = with_pool!(self.db(), pool => {
            sqlx::query_as(SELECT).bind(event_id).fetch_optional(pool).await?
        });
        match row {
            // Released between our insert and this read: try again.
            None => Ok(PaymentEventClaim::Busy),
            Some(ClaimRow {
                outcome: Some(outcome),
                ..
            }) => Ok(PaymentEventClaim::Done(outcome)),
            Some(ClaimRow {
                outcome: None,
                claimed_at_ms,
            }) if now_ms - claimed_at_ms > ABANDONED_AFTER_MS => {
                let taken = with_pool!(self.db(), pool => {
                    sqlx::query(TAKE_OVER)
                        .bind(event_id)
                        .bind(now_ms)
                        .bind(claimed_at_ms)
                        .execute(pool)
                        .await?
                        .rows_affected()
                });
                Ok(if taken == 1 {
                    PaymentEventClaim::Ours
                } else {
                    PaymentEventClaim::Busy
                })
            }
            Some(ClaimRow { outcome: None, .. }) => Ok(PaymentEventClaim::Busy),
        }
    }

    /// Gives up a claim without an outcome, so that the provider's next delivery processes the
    /// event.
    pub async fn release_payment_event(&self, event_id: &str) -> Result<(), StoreError> {
        const SQL: &str = "DELETE FROM payment_events WHERE event_id = $1 AND outcome IS NULL";
        with_pool!(self.db(), pool => {
            sqlx::query(SQL).bind(event_id).execute(pool).await?;
        });
        Ok(())
    }

    /// Stores what became of the event this delivery claimed.
    pub async fn finish_payment_event(
        &self,
        event_id: &str,
        outcome: &str,
        detail: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE payment_events SET outcome = $2, detail = $3, \
                           finished_at_ms = $4 WHERE event_id = $1";
        with_pool!(self.db(), pool => {
            sqlx::query(SQL)
                .bind(event_id)
                .bind(outcome)
                .bind(detail)
                .bind(now_ms)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The received events with this outcome and about this consultation (`None` does not
    /// filter), newest first, at most 500.
    pub async fn payment_events(
        &self,
        outcome: Option<&str>,
        consultation_id: Option<&str>,
    ) -> Result<Vec<PaymentEventRow>, StoreError> {
        const SQL: &str = "SELECT event_id, event_type, consultation_id, outcome, detail, \
                                  received_at_ms, finished_at_ms FROM payment_events \
                            WHERE ($1 IS NULL OR outcome = $1) \
                              AND ($2 IS NULL OR consultation_id = $2) \
                            ORDER BY received_at_ms DESC, event_id LIMIT 500";
        Ok(with_pool!(self.db(), pool => {
            sqlx::query_as(SQL)
                .bind(outcome)
                .bind(consultation_id)
                .fetch_all(pool)
                .await?
        }))
    }
}
