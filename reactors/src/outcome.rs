//! How one run of a job ended, whatever its kind: the dispatcher records every kind's outcome
//! the same way (done; sent, with the provider's id; retried with backoff; dead-lettered).

use crate::channels::SendError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Done,
    /// A notification went out, with the provider's id for it.
    Sent(Option<String>),
    /// It failed in a way that may pass: run again after a backoff, until the last attempt.
    Retry(String),
    /// It failed in a way that will not pass: dead-lettered at once.
    Dead(String),
}

impl From<SendError> for JobOutcome {
    fn from(err: SendError) -> Self {
        if err.retryable {
            Self::Retry(err.message)
        } else {
            Self::Dead(err.message)
        }
    }
}
