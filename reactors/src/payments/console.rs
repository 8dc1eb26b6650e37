//! The embedded default when no payment provider is configured: refunds are "made" in the
//! outbox file only, so the refund flow can be watched without credentials. No money moves.

use consult_store::BoxFuture;

use super::{PaymentProvider, RefundCreated, RefundRequest};
use crate::channels::console::ConsoleSink;
use crate::channels::SendError;

/// Refunds written to the outbox file.
#[derive(Debug, Clone)]
pub struct ConsolePayments {
    outbox: ConsoleSink,
}

impl ConsolePayments {
    pub fn new(outbox: ConsoleSink) -> Self {
        Self { outbox }
    }
}

impl PaymentProvider for ConsolePayments {
    fn name(&self) -> &'static str {
        "console"
    }

    fn refund<'a>(
        &'a self,
        request: &'a RefundRequest,
    ) -> BoxFuture<'a, Result<RefundCreated, SendError>> {
        Box::pin(async move {
            self.outbox
                .record(&serde_json::json!({
                    "payments": "refund",
                    "payment_id": request.payment_id,
                    "consultation_id": request.consultation_id,
                }))
                .await?;
            // Derived from the idempotency key, so a retried job reports the same refund.
            Ok(RefundCreated {
                refund_id: format!("console-{}", request.idempotency_key),
                status: "succeeded".to_owned(),
            })
        })
    }
}
