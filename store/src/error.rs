use cqrs_es::AggregateError;

/// An error and its causes on one line, for logs and status rows.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        // sqlx's database errors show their cause in their own text: not twice.
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// A failure of the store itself (not of a decision).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or does not answer in time.
    #[error("the database is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else: a bug, a schema mismatch, corrupt data.
    #[error("unexpected storage failure")]
    Unexpected(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the data directory")]
    DataDir(#[source] std::io::Error),
    #[error("DATABASE_URL must start with postgres:// or sqlite:")]
    UnsupportedUrl,
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if sqlx_unavailable(&err) {
            Self::Unavailable(Box::new(err))
        } else {
            Self::Unexpected(Box::new(err))
        }
    }
}

/// Whether an error, or one of its causes, is a database outage ("cannot reach or use the
/// database right now") rather than a failure that would happen again ("this statement is
/// wrong").
pub fn is_unavailable(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(store) = err.downcast_ref::<StoreError>() {
            return store.is_unavailable();
        }
        if let Some(sqlx) = err.downcast_ref::<sqlx::Error>() {
            return sqlx_unavailable(sqlx);
        }
        current = err.source();
    }
    false
}

/// Whether a database error means "cannot reach or use the database right now" rather than
/// "this statement is wrong".
fn sqlx_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => match db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
            Some(_) => sqlite_unavailable(db.code().as_deref()),
            None => postgres_unavailable(db.code().as_deref().unwrap_or_default()),
        },
        _ => false,
    }
}

/// PostgreSQL's SQLSTATE classes of an outage: 08 connection exception, 57P admin shutdown,
/// crash shutdown, cannot connect now, 53 insufficient resources (disk full, out of memory,
/// too many connections), system and I/O errors.
fn postgres_unavailable(sqlstate: &str) -> bool {
    sqlstate.starts_with("08")
        || sqlstate.starts_with("57P")
        || sqlstate.starts_with("53")
        || matches!(sqlstate, "58000" | "58030")
}

/// SQLite's result codes of an outage, by primary code (the low byte of the extended code
/// sqlx reports): busy, locked, read-only (file, directory or mount), I/O error (a write
/// refused by a full disk or the file size limit), database or disk full, cannot open.
fn sqlite_unavailable(code: Option<&str>) -> bool {
    const BUSY: i32 = 5;
    const LOCKED: i32 = 6;
    const READONLY: i32 = 8;
    const IOERR: i32 = 10;
    const FULL: i32 = 13;
    const CANTOPEN: i32 = 14;
    code.and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|code| {
            matches!(
                code & 0xff,
                BUSY | LOCKED | READONLY | IOERR | FULL | CANTOPEN
            )
        })
}

/// Why a command did not produce events.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E: std::error::Error> {
    /// The decision refused the command (for the domain's reasons or the caller's).
    #[error(transparent)]
    Refused(E),
    /// Other writers kept winning the race for the stream; retries ran out.
    #[error("the aggregate kept changing under concurrent writers")]
    Conflict,
    /// The caller expected another version (`If-Match`).
    #[error("the aggregate is at version {current}, not the expected one")]
    VersionMismatch { current: u64 },
    /// The database refused the event because the provider's time is taken.
    #[error("the provider has an overlapping consultation")]
    SlotConflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Sorts cqrs-es's error into ours, recognising the slot constraint among database errors.
/// Decisions run outside cqrs-es's `handle`, so a user error cannot come from it.
pub(crate) fn classify<E: std::error::Error, D: std::error::Error>(
    err: AggregateError<E>,
) -> ExecuteError<D> {
    match err {
        AggregateError::UserError(e) => {
            ExecuteError::Store(StoreError::Unexpected(e.to_string().into()))
        }
        AggregateError::AggregateConflict => ExecuteError::Conflict,
        AggregateError::DatabaseConnectionError(e) => {
            ExecuteError::Store(StoreError::Unavailable(e))
        }
        AggregateError::DeserializationError(e) => ExecuteError::Store(StoreError::Unexpected(e)),
        AggregateError::UnexpectedError(e) => match e.downcast::<sqlx::Error>() {
            Ok(sql) if is_slot_conflict(&sql) => ExecuteError::SlotConflict,
            // Two overlapping accepts can deadlock inside the exclusion constraint's check
            // (each waits for the other's index entry); PostgreSQL aborts one. Running it again
            // on the fresh state gives the right answer (usually a slot conflict).
            Ok(sql) if is_transient(&sql) => ExecuteError::Conflict,
            Ok(sql) => ExecuteError::Store(StoreError::from(*sql)),
            Err(other) => ExecuteError::Store(StoreError::Unexpected(other)),
        },
    }
}

/// Deadlock detected, serialization failure: the transaction may simply be run again.
fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

fn is_slot_conflict(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.constraint() == Some("provider_slots_no_overlap")
                || db.message().contains("slot_conflict")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_outages_are_classified_by_primary_code() {
        // Busy, locked, read-only directory, I/O write error, full, cannot open.
        for code in ["5", "6", "1544", "778", "13", "14", "517"] {
            assert!(sqlite_unavailable(Some(code)), "{code}");
        }
        // Constraint, unique constraint, generic error (syntax, no such table), corrupt.
        for code in ["19", "2067", "1", "11"] {
            assert!(!sqlite_unavailable(Some(code)), "{code}");
        }
        assert!(!sqlite_unavailable(None));
    }

    #[test]
    fn postgres_outages_are_classified_by_sqlstate_class() {
        for code in ["08006", "57P01", "57P03", "53100", "53300", "58030"] {
            assert!(postgres_unavailable(code), "{code}");
        }
        for code in ["23505", "42P01", "40001", ""] {
            assert!(!postgres_unavailable(code), "{code}");
        }
    }
}
