//! SQL migrations for both backends, embedded into the binary at compile time.

use sqlx::migrate::Migrator;

/// The PostgreSQL schema.
pub static POSTGRES: Migrator = sqlx::migrate!("./postgres");

/// The SQLite schema (the embedded default).
pub static SQLITE: Migrator = sqlx::migrate!("./sqlite");
