//! Fixed-window request counters (`rate_limits`): one row per key holding its window's start
//! and the requests counted in it, moved by one atomic upsert per request, so that any number
//! of API processes share one count.
//!
//! A fixed window lets a caller spend its allowance at the end of one window and again at the
//! start of the next (twice the limit within one window's length at worst); it needs one row
//! per key and one statement per request, where a sliding log would keep one row per request.

use std::time::Duration;

use crate::{Store, StoreError};

/// The count of a key's requests in its current window, this one included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCount {
    pub count: i64,
    /// When the current window started (epoch milliseconds).
    pub window_start_ms: i64,
}

impl WindowCount {
    /// How long until the window ends, from `now_ms`.
    pub fn remaining(&self, window: Duration, now_ms: i64) -> Duration {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let end = self.window_start_ms.saturating_add(window_ms);
        Duration::from_millis(u64::try_from(end.saturating_sub(now_ms)).unwrap_or(0))
    }
}

impl Store {
    /// Counts one request under `key` in the window of length `window` that holds `now_ms`
    /// (a window older than that is started afresh), and returns the count.
    pub async fn count_request(
        &self,
        key: &str,
        window: Duration,
        now_ms: i64,
    ) -> Result<WindowCount, StoreError> {
        const SQL: &str =
            "INSERT INTO rate_limits (key, window_start_ms, count) VALUES ($1, $2, 1) \
                           ON CONFLICT (key) DO UPDATE SET \
                             count = CASE WHEN rate_limits.window_start_ms <= $2 - $3 THEN 1 \
                                          ELSE rate_limits.count + 1 END, \
                             window_start_ms = CASE WHEN rate_limits.window_start_ms <= $2 - $3 \
                                                    THEN $2 ELSE rate_limits.window_start_ms END \
                           RETURNING count, window_start_ms";
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 2);
        let (count, window_start_ms): (i32, i64) = with_pool!(self.db(), pool => {
            sqlx::query_as(SQL)
                .bind(key)
                .bind(now_ms)
                .bind(window_ms)
                .fetch_one(pool)
                .await?
        });
        Ok(WindowCount {
            count: i64::from(count),
            window_start_ms,
        })
    }
}
