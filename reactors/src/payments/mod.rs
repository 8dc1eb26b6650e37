//! Money going back to patients, behind one small trait. A provider refunds a payment;
//! Stripe is the first implementation (`stripe.rs`), the console stand-in (`console.rs`) writes
//! refunds to the outbox file when no credentials are configured. Stripe's webhook signatures
//! are checked by [`signature`].
//!
//! A refund is a side effect toward a provider, so it is retried by the dispatcher: every
//! request carries an idempotency key fixed when the job is queued, and a provider must treat a
//! repeated key as the same refund, never a second one.

use std::fmt;

use consult_store::BoxFuture;

use crate::channels::SendError;

pub mod console;
pub mod signature;
pub mod stripe;

/// The `refund_id` a provider reports when the payment has nothing left to refund (Stripe's
/// `charge_already_refunded`): the money went back earlier, by a previous attempt whose answer
/// was lost or by hand from the provider's dashboard.
pub const ALREADY_REFUNDED: &str = "already_refunded";

/// A refund to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// The provider's id of the payment to refund (a Stripe PaymentIntent, `pi_…`).
    pub payment_id: String,
    /// How much to refund, in the currency's minor unit (cents); `None` refunds whatever has
    /// not been refunded yet.
    pub amount_minor: Option<i64>,
    /// Fixed when the refund job is queued, so every retry of it asks for the same refund.
    pub idempotency_key: String,
    /// The consultation the payment was for, attached to the refund for reconciliation.
    pub consultation_id: String,
}

/// A refund the provider has taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundCreated {
    /// The provider's id of the refund (Stripe `re_…`), or [`ALREADY_REFUNDED`].
    pub refund_id: String,
    /// The provider's status of the refund (Stripe: `pending`, `requires_action`, `succeeded`,
    /// `failed`, `canceled`); later changes arrive by webhook.
    pub status: String,
}

/// A payment provider.
pub trait PaymentProvider: Send + Sync + fmt::Debug + 'static {
    /// Short name recorded with each refund (`stripe`, `console`).
    fn name(&self) -> &'static str;

    /// Refunds (part of) a payment. Asking again with the same idempotency key and the same
    /// request returns the same refund and moves no money twice, so a retry after a timeout is
    /// safe. A payment with nothing left to refund succeeds with [`ALREADY_REFUNDED`].
    fn refund<'a>(
        &'a self,
        request: &'a RefundRequest,
    ) -> BoxFuture<'a, Result<RefundCreated, SendError>>;
}
