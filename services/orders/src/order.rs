//! An order, what a client sends to place one, and the rules it must meet.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

pub const MAX_ITEMS: usize = 50;
pub const MAX_QUANTITY: i64 = 100;
const MAX_PRODUCT_ID: usize = 64;
const MAX_KEY: usize = 200;

/// The body of `POST /api/orders`. Unknown fields are refused, so a typo is an error.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OrderInput {
    pub items: Vec<ItemInput>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ItemInput {
    pub product_id: String,
    pub quantity: i64,
}

impl OrderInput {
    pub fn validate(&self) -> Result<(), String> {
        if self.items.is_empty() || self.items.len() > MAX_ITEMS {
            return Err(format!("items must hold 1 to {MAX_ITEMS} entries"));
        }
        let mut seen = HashSet::new();
        for (n, item) in self.items.iter().enumerate() {
            if !is_product_id(&item.product_id) {
                return Err(format!(
                    "items[{n}].product_id must be 1 to {MAX_PRODUCT_ID} letters, digits or '-'"
                ));
            }
            if !(1..=MAX_QUANTITY).contains(&item.quantity) {
                return Err(format!(
                    "items[{n}].quantity must be an integer from 1 to {MAX_QUANTITY}"
                ));
            }
            if !seen.insert(item.product_id.as_str()) {
                return Err(format!(
                    "items[{n}]: product {} is listed twice; give one line per product",
                    item.product_id
                ));
            }
        }
        Ok(())
    }
}

/// Product ids go into a URL path on the way to the catalog: letters, digits and '-' only.
fn is_product_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PRODUCT_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// An `Idempotency-Key`: 1 to 200 visible ASCII characters.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the Idempotency-Key header must be 1 to {MAX_KEY} visible ASCII characters"
        ));
    }
    Ok(())
}

/// One priced line of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub product_id: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
    pub line_total_cents: i64,
}

/// An order as the API returns it. `total` is in cents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub status: String,
    pub total: i64,
    pub items: Vec<Item>,
    pub created_at: String,
    pub updated_at: String,
}

pub const PENDING: &str = "pending";
pub const PAID: &str = "paid";
pub const FAILED: &str = "failed";

#[cfg(test)]
mod tests {
    use super::*;

    fn input(items: &[(&str, i64)]) -> OrderInput {
        OrderInput {
            items: items
                .iter()
                .map(|(p, q)| ItemInput {
                    product_id: p.to_string(),
                    quantity: *q,
                })
                .collect(),
        }
    }

    #[test]
    fn rules() {
        assert!(input(&[("p-1", 1), ("p-2", 100)]).validate().is_ok());
        assert!(input(&[]).validate().is_err());
        assert!(input(&[("p-1", 0)]).validate().is_err());
        assert!(input(&[("p-1", 101)]).validate().is_err());
        assert!(input(&[("p-1", -3)]).validate().is_err());
        assert!(input(&[("p-1", 1), ("p-1", 2)]).validate().is_err());
        assert!(input(&[("../admin", 1)]).validate().is_err());
        assert!(input(&[("", 1)]).validate().is_err());
        let many: Vec<(String, i64)> = (0..51).map(|n| (format!("p{n}"), 1)).collect();
        let many: Vec<(&str, i64)> = many.iter().map(|(p, q)| (p.as_str(), *q)).collect();
        assert!(input(&many).validate().is_err());
        assert!(input(&many[..50]).validate().is_ok());
    }

    #[test]
    fn keys() {
        assert!(validate_key("order-2026-01-01-a").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key("has space").is_err());
        assert!(validate_key(&"k".repeat(201)).is_err());
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        let parse = |s: &str| serde_json::from_str::<OrderInput>(s);
        assert!(parse(r#"{"items":[{"product_id":"a","quantity":1}]}"#).is_ok());
        assert!(parse(r#"{"items":[{"product_id":"a","quantity":1,"price":1}]}"#).is_err());
        assert!(parse(r#"{"items":[{"product_id":"a","quantity":1.5}]}"#).is_err());
        assert!(parse(r#"{"items":[{"product_id":"a"}]}"#).is_err());
        assert!(parse(r#"{"items":[],"coupon":"x"}"#).is_err());
    }
}
