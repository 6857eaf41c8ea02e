//! What orders publishes and consumes. The payloads are JSON; each field is documented in the
//! services' OpenAPI documents under `x-events`.

use serde::{Deserialize, Serialize};

use crate::order::Item;

pub const ORDER_PLACED: &str = "order.placed";
pub const PAYMENT_COMPLETED: &str = "payment.completed";
pub const PAYMENT_FAILED: &str = "payment.failed";

/// `order.placed`: published (through the outbox) when an order is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order_id: String,
    pub user_id: String,
    pub total_cents: i64,
    pub items: Vec<Item>,
}

/// `payment.completed` / `payment.failed`, as far as orders needs them.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentOutcome {
    pub order_id: String,
}
