//! The simulated card processor.
//!
//! There is no real money here, so the outcome follows a documented rule that anyone can
//! trigger on purpose: **an order with a line of quantity 13 is declined**; every other order is
//! charged. (Deterministic, so tests and demonstrations can walk both branches of the saga.)

use serde::{Deserialize, Serialize};

/// The quantity that makes the card decline.
pub const DECLINING_QUANTITY: i64 = 13;

#[derive(Debug, Clone, Deserialize)]
pub struct Line {
    pub quantity: i64,
}

/// `order.placed`, as far as payments needs it.
#[derive(Debug, Clone, Deserialize)]
pub struct OrderPlaced {
    pub order_id: String,
    pub user_id: String,
    pub total_cents: i64,
    pub items: Vec<Line>,
}

impl OrderPlaced {
    /// What a well-formed event must hold; anything else is a poison message.
    pub fn validate(&self) -> Result<(), String> {
        if self.order_id.is_empty() || self.user_id.is_empty() {
            return Err("order_id and user_id must not be empty".into());
        }
        if self.total_cents < 0 || self.items.is_empty() {
            return Err("an order needs items and a total of at least 0".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Completed,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
        }
    }
}

/// Charges the order's total: `(outcome, reason for a decline)`.
pub fn charge(order: &OrderPlaced) -> (Outcome, Option<String>) {
    if order.items.iter().any(|l| l.quantity == DECLINING_QUANTITY) {
        return (
            Outcome::Failed,
            Some(format!(
                "card declined (test rule: a line of quantity {DECLINING_QUANTITY})"
            )),
        );
    }
    (Outcome::Completed, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(quantities: &[i64]) -> OrderPlaced {
        OrderPlaced {
            order_id: "o".into(),
            user_id: "u".into(),
            total_cents: 100,
            items: quantities
                .iter()
                .map(|&quantity| Line { quantity })
                .collect(),
        }
    }

    #[test]
    fn quantity_13_declines() {
        assert_eq!(charge(&order(&[1, 2])).0, Outcome::Completed);
        assert_eq!(charge(&order(&[1, 13])).0, Outcome::Failed);
        assert!(charge(&order(&[13])).1.is_some());
    }

    #[test]
    fn malformed_events_are_refused() {
        assert!(order(&[1]).validate().is_ok());
        assert!(order(&[]).validate().is_err());
        assert!(OrderPlaced {
            order_id: String::new(),
            ..order(&[1])
        }
        .validate()
        .is_err());
    }
}
