//! The `refunds` reactor and its jobs. When a paid consultation is declined, expires, or is
//! cancelled with a refund due (by the provider or the clinic; by the patient early enough), the
//! consultation's payment becomes `refund_pending` and this reactor queues one refund job, keyed
//! by the consultation and the payment, in the transaction that moves its checkpoint. The job
//! asks the payment provider for a full refund with an idempotency key derived from the same
//! pair, so a retry or a redelivery never refunds twice, and records `RefundRequested` with the
//! provider's refund id. The provider's `charge.refunded` webhook then records `Refunded`.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use consult_domain::{Consultation, ConsultationCommand, ConsultationError, PaymentStatus};
use consult_store::{
    BoxFuture, ExecuteError, Handler, HandlerError, Metadata, RecordedEvent, Store, Tx,
};
use serde::{Deserialize, Serialize};

use crate::payments::{PaymentProvider, RefundRequest};
use crate::room_jobs::JobOutcome;
use consult_store::jobs::{self, Job, JobKind, NewJob};

/// A refund job's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundJob {
    pub payment_id: String,
}

/// The `refunds` reactor subscription.
#[derive(Debug, Clone)]
pub struct RefundsReactor {
    max_attempts: i32,
    wake: tokio::sync::watch::Sender<u64>,
}

impl RefundsReactor {
    pub fn new(max_attempts: i32, wake: tokio::sync::watch::Sender<u64>) -> Self {
        Self { max_attempts, wake }
    }
}

fn concerns_refunds(event_type: &str) -> bool {
    matches!(event_type, "Declined" | "Expired" | "Cancelled")
}

impl Handler for RefundsReactor {
    fn name(&self) -> &'static str {
        "refunds"
    }

    /// A refund may start a few tens of milliseconds later; under load one batch takes many commits.
    fn linger(&self) -> std::time::Duration {
        std::time::Duration::from_millis(50)
    }

    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx<'_>,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let now = Utc::now().timestamp_millis();
            let mut queued = 0;
            // Each relevant event's state before it and after it.
            let mut states: HashMap<&str, Consultation> = HashMap::new();
            for event in events.iter().filter(|e| e.aggregate_type == "consultation") {
                let relevant = concerns_refunds(&event.event_type);
                if !relevant && !states.contains_key(event.aggregate_id.as_str()) {
                    continue;
                }
                if !states.contains_key(event.aggregate_id.as_str()) {
                    let before = consult_store::events::consultation_before(
                        tx,
                        &event.aggregate_id,
                        event.sequence,
                    )
                    .await?;
                    states.insert(&event.aggregate_id, before);
                }
                let Some(state) = states.get_mut(event.aggregate_id.as_str()) else {
                    continue;
                };
                let before = state.payment;
                state.evolve(serde_json::from_str(&event.current_payload())?);
                if before == PaymentStatus::Paid && state.payment == PaymentStatus::RefundPending {
                    let Some(payment_id) = state.payment_id.clone() else {
                        tracing::warn!(consultation = %event.aggregate_id, "refund due but no payment id on record");
                        continue;
                    };
                    let job = NewJob {
                        id: uuid::Uuid::new_v4().to_string(),
                        key: format!("refund:{}:{payment_id}", event.aggregate_id),
                        kind: JobKind::Refund,
                        consultation_id: event.aggregate_id.clone(),
                        payload: serde_json::json!(RefundJob { payment_id }),
                        due_at_ms: now,
                        max_attempts: self.max_attempts,
                    };
                    if jobs::insert(tx, &job, now).await? {
                        queued += 1;
                    }
                }
            }
            if queued > 0 {
                self.wake.send_modify(|n| *n = n.wrapping_add(1));
            }
            Ok(())
        })
    }

    /// Jobs are not a read model: a reset keeps them; a replay queues nothing new.
    fn reset<'a>(&'a self, _tx: &'a mut Tx<'_>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Runs refund jobs.
#[derive(Debug, Clone)]
pub struct Refunds {
    pub provider: Arc<dyn PaymentProvider>,
}

impl Refunds {
    pub(crate) async fn run(&self, store: &Store, job: &Job) -> JobOutcome {
        let refund: RefundJob = match serde_json::from_str(&job.payload) {
            Ok(refund) => refund,
            Err(err) => return JobOutcome::Dead(format!("unreadable job: {err}")),
        };
        let id = &job.consultation_id;
        let state = match store.load::<Consultation>(id).await {
            Ok(Some(loaded)) => loaded.aggregate,
            Ok(None) => return JobOutcome::Dead("no such consultation".into()),
            Err(err) => return JobOutcome::Retry(err.to_string()),
        };
        if state.payment != PaymentStatus::RefundPending || state.refund_id.is_some() {
            return JobOutcome::Done;
        }
        let request = RefundRequest {
            payment_id: refund.payment_id.clone(),
            amount_minor: None,
            idempotency_key: format!("refund-{id}-{}", refund.payment_id),
            consultation_id: id.clone(),
        };
        let created = match self.provider.refund(&request).await {
            Ok(created) => created,
            Err(err) => return err.into(),
        };
        let metadata = Metadata {
            actor_id: "refunds".to_owned(),
            actor_role: "system".to_owned(),
            correlation_id: id.clone(),
            causation_id: job.id.clone(),
            request_id: String::new(),
        };
        let now = Utc::now();
        let result = store
            .execute::<Consultation, ConsultationError, _>(id, &metadata, None, |c| {
                c.decide(ConsultationCommand::RecordRefundRequest {
                    payment_id: refund.payment_id.clone(),
                    refund_id: created.refund_id.clone(),
                    at: now,
                })
            })
            .await;
        match result {
            Ok(_) | Err(ExecuteError::Refused(_)) => {
                tracing::info!(job = %job.id, consultation = %id, provider = self.provider.name(), "refund requested");
                JobOutcome::Done
            }
            Err(err) => JobOutcome::Retry(err.to_string()),
        }
    }
}
