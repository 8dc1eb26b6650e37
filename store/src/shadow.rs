//! Rebuilding a read-model table beside the live one (PostgreSQL).
//!
//! A reset creates an empty copy of the live table with its primary key only; the replay writes
//! there while reads keep being served, complete but stale, from the live table. Once the replay
//! has caught up, the secondary indexes are built on the copy in one pass (far cheaper than
//! keeping them up to date row by row) and the copy takes the live table's place in the same
//! transaction. The migrations stay the one definition of the table: the copy takes its
//! columns, storage options and index definitions from the live table.

use sqlx::PgConnection;

use crate::StoreError;

/// A live table and the name of the copy a replay builds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shadow {
    pub live: &'static str,
    pub copy: &'static str,
    /// The primary key's column.
    pub key: &'static str,
}

/// A secondary index of the live table whose definition cannot be turned into the copy's.
#[derive(Debug, thiserror::Error)]
#[error("index {index} of {table}: unexpected definition, cannot build it on the copy")]
struct IndexDefinition {
    table: &'static str,
    index: String,
}

/// The suffix of an index while it is built on the copy.
const BUILDING: &str = "__next";

impl Shadow {
    /// Starts a replay: an empty copy of the live table, with its primary key only.
    pub async fn create(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        let Self { live, copy, key } = *self;
        let options: Option<String> = sqlx::query_scalar(
            "SELECT array_to_string(reloptions, ', ') FROM pg_class WHERE oid = $1::regclass",
        )
        .bind(live)
        .fetch_one(&mut *conn)
        .await?;
        let with = options
            .filter(|o| !o.is_empty())
            .map(|o| format!(" WITH ({o})"))
            .unwrap_or_default();
        sqlx::query(&format!("DROP TABLE IF EXISTS {copy}"))
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!(
            "CREATE TABLE {copy} (LIKE {live} INCLUDING DEFAULTS INCLUDING CONSTRAINTS \
             INCLUDING STORAGE, PRIMARY KEY ({key})){with}"
        ))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Whether a replay is writing to the copy.
    pub async fn active(&self, conn: &mut PgConnection) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(self.copy)
            .fetch_one(conn)
            .await?)
    }

    /// Refreshes the planner's statistics of the copy's key, so lookups by key use its index.
    pub async fn analyze_key(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query(&format!("ANALYZE {} ({})", self.copy, self.key))
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Ends a replay: builds the live table's secondary indexes on the copy, then puts the copy
    /// in the live table's place under the same names. Does nothing when no copy exists.
    pub async fn swap(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        let Self { live, copy, .. } = *self;
        if !self.active(conn).await? {
            return Ok(());
        }
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&mut *conn)
            .await?;
        // Indexes that back a constraint (the primary key) come with the copy already.
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT indexname::text, indexdef FROM pg_indexes \
              WHERE schemaname = current_schema() AND tablename = $1 \
                AND indexname NOT IN (SELECT conname FROM pg_constraint \
                                       WHERE conrelid = $1::regclass) \
              ORDER BY indexname",
        )
        .bind(live)
        .fetch_all(&mut *conn)
        .await?;
        let primary_key: Option<String> = sqlx::query_scalar(
            "SELECT conname::text FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p'",
        )
        .bind(live)
        .fetch_optional(&mut *conn)
        .await?;
        for (index, definition) in &indexes {
            let target = format!("{index} ON {schema}.{live} ");
            if !definition.contains(&target) {
                return Err(StoreError::Unexpected(Box::new(IndexDefinition {
                    table: live,
                    index: index.clone(),
                })));
            }
            let building = definition.replacen(
                &target,
                &format!("{index}{BUILDING} ON {schema}.{copy} "),
                1,
            );
            sqlx::query(&building).execute(&mut *conn).await?;
        }
        sqlx::query(&format!("ANALYZE {copy}"))
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!("DROP TABLE {live}"))
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!("ALTER TABLE {copy} RENAME TO {live}"))
            .execute(&mut *conn)
            .await?;
        for (index, _) in &indexes {
            sqlx::query(&format!("ALTER INDEX {index}{BUILDING} RENAME TO {index}"))
                .execute(&mut *conn)
                .await?;
        }
        if let Some(primary_key) = primary_key {
            sqlx::query(&format!(
                "ALTER TABLE {live} RENAME CONSTRAINT {copy}_pkey TO {primary_key}"
            ))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
