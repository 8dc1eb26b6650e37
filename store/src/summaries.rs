//! The `consultation_summaries` table: one row per consultation, written by the consultations
//! projection and read by the summary, the filtered lists and the providers' schedules.
//!
//! A batch is applied with two statements whatever its size: one read of the rows it touches
//! ([`Summaries::load`]) and one multi-row upsert ([`Summaries::upsert`]).
//!
//! On PostgreSQL a rebuild replays into a copy of the table that has its primary key only and
//! swaps it in once caught up ([`crate::shadow`]); reads meanwhile see the previous table. On
//! SQLite the table is emptied and refilled in place.

use consult_domain::Consultation;
use sqlx::types::Json;
use sqlx::QueryBuilder;

use crate::shadow::Shadow;
use crate::{Store, StoreError, Tx};

const TABLE: Shadow = Shadow {
    live: "consultation_summaries",
    copy: "consultation_summaries_replay",
    key: "id",
};

/// Rows per upsert statement (SQLite allows 32766 bound values; 12 per row).
const ROWS_PER_STATEMENT: usize = 1000;
/// Rows per upsert statement on PostgreSQL (one array per column): bounds a statement's size
/// when a replay flushes.
const PG_ROWS_PER_STATEMENT: usize = 10_000;

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

/// How a time range selects consultations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SummaryWindow {
    /// `from <= starts_at < to` (the list).
    #[default]
    Starts,
    /// `starts_at < to && ends_at > from` (a schedule: whatever occupies part of the range).
    Overlaps,
}

/// What a list of summaries asks for. Every field narrows; `None` does not filter.
#[derive(Debug, Clone, Copy, Default)]
pub struct SummaryFilter<'a> {
    pub patient_id: Option<&'a str>,
    pub provider_id: Option<&'a str>,
    /// Any of these statuses; empty = any status.
    pub statuses: &'a [String],
    /// Lower end of the range (epoch milliseconds), compared as [`SummaryFilter::window`] says.
    pub from_ms: Option<i64>,
    /// Upper end of the range (epoch milliseconds, excluded).
    pub to_ms: Option<i64>,
    pub window: SummaryWindow,
    /// Only rows after this sort key: `(starts_at_ms, id)`.
    pub after: Option<(i64, &'a str)>,
    /// Most rows returned.
    pub limit: i64,
}

/// A row's folded state, as a batch reads it back.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SummaryState {
    pub id: String,
    #[sqlx(json)]
    pub state: Consultation,
}

/// A row as the projection writes it: the columns the lists filter and sort on, and the state
/// they were taken from.
#[derive(Debug, Clone, Copy)]
pub struct SummaryWrite<'a> {
    pub id: &'a str,
    pub patient_id: &'a str,
    pub provider_id: &'a str,
    pub status: &'a str,
    pub payment_status: &'a str,
    pub mode: &'a str,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub version: i64,
    pub position: i64,
    pub updated_at_ms: i64,
    pub state: &'a Consultation,
}

const COLUMNS: &str = "SELECT id, patient_id, provider_id, status, payment_status, mode, \
                       starts_at_ms, ends_at_ms, version, position, updated_at_ms, state \
                       FROM consultation_summaries";

impl Store {
    /// One consultation's row, if the projection has it.
    pub async fn consultation_summary(&self, id: &str) -> Result<Option<Summary>, StoreError> {
        let sql = format!("{COLUMNS} WHERE id = $1");
        Ok(with_pool!(self.db(), pool => {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?
        }))
    }

    /// The rows the filter selects in start order (then id), after its cursor.
    pub async fn consultation_summaries(
        &self,
        filter: &SummaryFilter<'_>,
    ) -> Result<Vec<Summary>, StoreError> {
        Ok(with_pool!(self.db(), pool => {
            let mut query = QueryBuilder::new(COLUMNS);
            query.push(" WHERE 1 = 1");
            if let Some(patient) = filter.patient_id {
                query.push(" AND patient_id = ").push_bind(patient);
            }
            if let Some(provider) = filter.provider_id {
                query.push(" AND provider_id = ").push_bind(provider);
            }
            if !filter.statuses.is_empty() {
                query.push(" AND status IN (");
                let mut list = query.separated(", ");
                for status in filter.statuses {
                    list.push_bind(status);
                }
                query.push(")");
            }
            let (lower, upper) = match filter.window {
                SummaryWindow::Starts => ("starts_at_ms >= ", "starts_at_ms < "),
                SummaryWindow::Overlaps => ("ends_at_ms > ", "starts_at_ms < "),
            };
            if let Some(from) = filter.from_ms {
                query.push(" AND ").push(lower).push_bind(from);
            }
            if let Some(to) = filter.to_ms {
                query.push(" AND ").push(upper).push_bind(to);
            }
            if let Some((starts_at_ms, id)) = filter.after {
                query
                    .push(" AND (starts_at_ms > ")
                    .push_bind(starts_at_ms)
                    .push(" OR (starts_at_ms = ")
                    .push_bind(starts_at_ms)
                    .push(" AND id > ")
                    .push_bind(id)
                    .push("))");
            }
            query
                .push(" ORDER BY starts_at_ms, id LIMIT ")
                .push_bind(filter.limit);
            query.build_query_as().fetch_all(pool).await?
        }))
    }
}

/// The summaries table a subscription transaction reads and writes: the live one, or the
/// replay's copy while one is being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summaries {
    table: &'static str,
}

impl Summaries {
    /// The table writes go to: the replay's copy while one is being built.
    pub async fn target(tx: &mut Tx<'_>) -> Result<Self, StoreError> {
        let replaying = match tx {
            Tx::Postgres(conn) => TABLE.active(conn).await?,
            Tx::Sqlite(_) => false,
        };
        Ok(Self {
            table: if replaying { TABLE.copy } else { TABLE.live },
        })
    }

    /// Empties the table before a replay from the start of the log: on PostgreSQL by starting
    /// an empty copy that [`Summaries::finish_replay`] swaps in, on SQLite in place.
    pub async fn reset(tx: &mut Tx<'_>) -> Result<(), StoreError> {
        match tx {
            Tx::Postgres(conn) => TABLE.create(conn).await?,
            Tx::Sqlite(conn) => {
                sqlx::query("DELETE FROM consultation_summaries")
                    .execute(&mut **conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// Ends a replay: puts the copy it built in the live table's place (PostgreSQL; nothing to
    /// do on SQLite).
    pub async fn finish_replay(tx: &mut Tx<'_>) -> Result<(), StoreError> {
        if let Tx::Postgres(conn) = tx {
            TABLE.swap(conn).await?;
        }
        Ok(())
    }

    /// The state of the rows with these ids (the ones that exist).
    pub async fn load(
        self,
        tx: &mut Tx<'_>,
        ids: &[&str],
    ) -> Result<Vec<SummaryState>, StoreError> {
        let table = self.table;
        match tx {
            Tx::Postgres(conn) => {
                // One array parameter, whatever the batch size.
                Ok(
                    sqlx::query_as(&format!("SELECT id, state FROM {table} WHERE id = ANY($1)"))
                        .bind(ids)
                        .fetch_all(&mut **conn)
                        .await?,
                )
            }
            Tx::Sqlite(conn) => {
                let mut rows = Vec::with_capacity(ids.len());
                for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                    let mut query =
                        QueryBuilder::new(format!("SELECT id, state FROM {table} WHERE id IN ("));
                    let mut list = query.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    query.push(")");
                    rows.extend(
                        query
                            .build_query_as::<SummaryState>()
                            .fetch_all(&mut **conn)
                            .await?,
                    );
                }
                Ok(rows)
            }
        }
    }

    /// Writes the rows, inserting the new ones and replacing the others.
    pub async fn upsert(
        self,
        tx: &mut Tx<'_>,
        rows: &[SummaryWrite<'_>],
    ) -> Result<(), StoreError> {
        match tx {
            Tx::Postgres(conn) => {
                for chunk in rows.chunks(PG_ROWS_PER_STATEMENT) {
                    upsert_arrays(conn, self.table, chunk).await?;
                }
            }
            Tx::Sqlite(conn) => {
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    upsert_values(conn, self.table, chunk).await?;
                }
            }
        }
        Ok(())
    }

    /// Called after a replay wrote a flush of rows: while the copy is being built, refreshes
    /// its key's statistics.
    pub async fn flushed(self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        if let Tx::Postgres(conn) = tx {
            if self.table == TABLE.copy {
                // The copy grew from empty: without statistics PostgreSQL would look rows up
                // by scanning it whole. Sampling the key alone is cheap.
                TABLE.analyze_key(conn).await?;
            }
        }
        Ok(())
    }
}

const UPSERT_TAIL: &str = " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
    payment_status = excluded.payment_status, starts_at_ms = excluded.starts_at_ms, \
    ends_at_ms = excluded.ends_at_ms, version = excluded.version, \
    position = excluded.position, updated_at_ms = excluded.updated_at_ms, \
    state = excluded.state";

/// The PostgreSQL upsert: one statement with one array per column, whatever the number of
/// rows, so PostgreSQL parses and plans it once instead of once per thousand rows of values.
async fn upsert_arrays(
    conn: &mut sqlx::PgConnection,
    table: &str,
    rows: &[SummaryWrite<'_>],
) -> Result<(), StoreError> {
    let states = rows
        .iter()
        .map(|row| serde_json::to_string(row.state))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| StoreError::Unexpected(Box::new(err)))?;
    let sql = format!(
        "INSERT INTO {table} (id, patient_id, provider_id, status, \
             payment_status, mode, starts_at_ms, ends_at_ms, version, position, updated_at_ms, \
             state) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
             $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], \
             $11::bigint[], $12::text[]::json[]){UPSERT_TAIL}"
    );
    sqlx::query(&sql)
        .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.patient_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.provider_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.payment_status).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.mode).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.starts_at_ms).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.ends_at_ms).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.position).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at_ms).collect::<Vec<_>>())
        .bind(states)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The portable upsert (SQLite): a multi-row VALUES list.
async fn upsert_values(
    conn: &mut sqlx::SqliteConnection,
    table: &str,
    rows: &[SummaryWrite<'_>],
) -> Result<(), StoreError> {
    let mut query = QueryBuilder::new(format!(
        "INSERT INTO {table} (id, patient_id, provider_id, status, \
         payment_status, mode, starts_at_ms, ends_at_ms, version, position, updated_at_ms, state) ",
    ));
    query.push_values(rows, |mut values, row| {
        values
            .push_bind(row.id)
            .push_bind(row.patient_id)
            .push_bind(row.provider_id)
            .push_bind(row.status)
            .push_bind(row.payment_status)
            .push_bind(row.mode)
            .push_bind(row.starts_at_ms)
            .push_bind(row.ends_at_ms)
            .push_bind(row.version)
            .push_bind(row.position)
            .push_bind(row.updated_at_ms)
            .push_bind(Json(row.state));
    });
    query.push(UPSERT_TAIL);
    query.build().execute(conn).await?;
    Ok(())
}
