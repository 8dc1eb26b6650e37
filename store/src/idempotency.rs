//! Responses remembered under a client's `Idempotency-Key`. The key is claimed with an insert
//! that the primary key makes atomic, so two copies of a request racing each other cannot both
//! run.

use crate::{Store, StoreError};

/// A claim left unfinished this long (its process died mid-request) may be taken over.
const ABANDONED_AFTER_MS: i64 = 30_000;

/// What became of an attempt to claim a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// This request owns the key: run it, then `finish` or `release` the claim.
    Fresh,
    /// The same request ran before; here is its response.
    Replay(StoredResponse),
    /// The key was used for a different request.
    Mismatch,
    /// Another copy of the request holds the key and is still running.
    InProgress,
}

/// A response as it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    /// The response, serialized by the caller.
    pub response: String,
}

type Row = (String, Option<i32>, Option<String>, i64);

impl Store {
    /// Claims `key` for `owner`'s request whose fingerprint is `request_hash`.
    pub async fn claim_idempotency_key(
        &self,
        owner: &str,
        key: &str,
        request_hash: &str,
        now_ms: i64,
    ) -> Result<IdempotencyClaim, StoreError> {
        const INSERT: &str = "INSERT INTO idempotency_keys (owner, key, request_hash, created_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (owner, key) DO NOTHING";
        const SELECT: &str = "SELECT request_hash, status, response, created_ms \
             FROM idempotency_keys WHERE owner = $1 AND key = $2";
        const TAKE_OVER: &str = "UPDATE idempotency_keys SET created_ms = $3 \
             WHERE owner = $1 AND key = $2 AND status IS NULL AND created_ms = $4";

        let inserted = with_pool!(&self.db, pool => {
            sqlx::query(INSERT)
                .bind(owner)
                .bind(key)
                .bind(request_hash)
                .bind(now_ms)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if inserted == 1 {
            return Ok(IdempotencyClaim::Fresh);
        }
        let row: Option<Row> = with_pool!(&self.db, pool => {
            sqlx::query_as(SELECT)
                .bind(owner)
                .bind(key)
                .fetch_optional(pool)
                .await?
        });
        // The claim was released between our insert and this read: the caller may retry.
        let Some((stored_hash, status, response, created_ms)) = row else {
            return Ok(IdempotencyClaim::InProgress);
        };
        if stored_hash != request_hash {
            return Ok(IdempotencyClaim::Mismatch);
        }
        match (status, response) {
            (Some(status), Some(response)) => Ok(IdempotencyClaim::Replay(StoredResponse {
                status: u16::try_from(status).unwrap_or(500),
                response,
            })),
            _ if now_ms - created_ms > ABANDONED_AFTER_MS => {
                let taken = with_pool!(&self.db, pool => {
                    sqlx::query(TAKE_OVER)
                        .bind(owner)
                        .bind(key)
                        .bind(now_ms)
                        .bind(created_ms)
                        .execute(pool)
                        .await?
                        .rows_affected()
                });
                Ok(if taken == 1 {
                    IdempotencyClaim::Fresh
                } else {
                    IdempotencyClaim::InProgress
                })
            }
            _ => Ok(IdempotencyClaim::InProgress),
        }
    }

    /// Stores the response given to the request that holds the claim.
    pub async fn finish_idempotency_key(
        &self,
        owner: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE idempotency_keys SET status = $3, response = $4 \
             WHERE owner = $1 AND key = $2";
        let status = i32::from(response.status);
        with_pool!(&self.db, pool => {
            sqlx::query(SQL)
                .bind(owner)
                .bind(key)
                .bind(status)
                .bind(&response.response)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// Gives up a claim without a response (the request failed in a way worth retrying).
    pub async fn release_idempotency_key(&self, owner: &str, key: &str) -> Result<(), StoreError> {
        const SQL: &str =
            "DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 AND status IS NULL";
        with_pool!(&self.db, pool => {
            sqlx::query(SQL).bind(owner).bind(key).execute(pool).await?.rows_affected()
        });
        Ok(())
    }
}
