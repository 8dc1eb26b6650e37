//! Read models fed by durable subscriptions to the global log, and the queries the API runs on
//! them.
//!
//! Each projection is a [`consult_store::Handler`]: the subscription runner hands it batches of
//! events inside the transaction that moves its checkpoint, so a read model reflects every
//! event exactly once. [`all`] lists the projections a worker process runs.

mod consultations;
mod history;
mod queries;

use std::sync::Arc;

use consult_store::Handler;

pub use consultations::ConsultationsProjection;
pub use history::{history, HistoryError};
pub use queries::{
    consultation, consultations, Cursor, CursorError, ListFilter, Page, Summary, TimeWindow,
};

/// Every projection of this build.
pub fn all() -> Vec<Arc<dyn Handler>> {
    vec![Arc::new(ConsultationsProjection)]
}

/// The projection with this name, if there is one.
pub fn by_name(name: &str) -> Option<Arc<dyn Handler>> {
    all().into_iter().find(|p| p.name() == name)
}
