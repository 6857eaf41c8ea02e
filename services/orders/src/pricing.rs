//! Pricing an order: a synchronous call to the catalog per product, found through the registry.
//!
//! The catalog is a dependency that can fail, so each call is bounded three ways: a timeout per
//! attempt, a few retries with jittered exponential back-off (only for failures that another
//! attempt may fix: no connection, a timeout, a 5xx), and a circuit breaker shared by every call.
//! When the catalog is down the breaker opens after a handful of failures, and from then on
//! orders are refused with 503 and `Retry-After` at once, rather than each paying the retries.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use stratus_kit::discovery::{CallError, Discovery};
use stratus_kit::resilience::{backoff, CircuitBreaker};
use stratus_kit::trace::TraceContext;
use stratus_kit::Problem;

use crate::order::{Item, ItemInput};

/// Attempts per product (the first and two retries).
const ATTEMPTS: u32 = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(200);

pub struct Catalog {
    pub discovery: Discovery,
    pub breaker: Arc<CircuitBreaker>,
}

#[derive(Deserialize)]
struct Product {
    price_cents: i64,
}

/// Why one product could not be priced.
enum Failure {
    /// The catalog answered: there is no such product.
    Unknown,
    /// The catalog could not be asked (down, slow, erroring, or the breaker is open).
    Unavailable(String),
}

impl Catalog {
    /// Prices every line, concurrently. Unknown product: 422; catalog unavailable: 503.
    pub async fn price(
        &self,
        items: &[ItemInput],
        hop: TraceContext,
    ) -> Result<Vec<Item>, Problem> {
        let calls = items.iter().map(|item| self.price_one(item, hop));
        let results = futures_util::future::join_all(calls).await;
        let mut priced = Vec::with_capacity(items.len());
        for (item, result) in items.iter().zip(results) {
            match result {
                Ok(unit) => priced.push(Item {
                    product_id: item.product_id.clone(),
                    quantity: item.quantity,
                    unit_price_cents: unit,
                    line_total_cents: unit.saturating_mul(item.quantity),
                }),
                Err(Failure::Unknown) => {
                    tracing::info!(product = %item.product_id, "order refused: the catalog has no such product");
                    return Err(Problem::unprocessable(format!(
                        "no product {} in the catalog",
                        item.product_id
                    )));
                }
                Err(Failure::Unavailable(why)) => {
                    tracing::warn!(product = %item.product_id, %why, "catalog unavailable");
                    return Err(Problem::unavailable(
                        "the catalog is unavailable, so the order cannot be priced; try again shortly",
                        self.breaker.retry_after_secs(),
                    ));
                }
            }
        }
        Ok(priced)
    }

    async fn price_one(&self, item: &ItemInput, hop: TraceContext) -> Result<i64, Failure> {
        let path = format!("/api/catalog/products/{}", item.product_id);
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt, BACKOFF_BASE, BACKOFF_MAX)).await;
            }
            if !self.breaker.allow() {
                return Err(Failure::Unavailable("the circuit breaker is open".into()));
            }
            let traceparent = hop.header_value();
            let result = self
                .discovery
                .send("catalog", |http, base| {
                    http.get(format!("{base}{path}"))
                        .header("traceparent", traceparent.as_str())
                })
                .await;
            match result {
                Ok(response) if response.status().is_success() => {
                    match response.json::<Product>().await {
                        Ok(product) if product.price_cents >= 0 => {
                            self.breaker.success();
                            return Ok(product.price_cents);
                        }
                        Ok(_) => last = "the catalog sent a negative price".into(),
                        Err(error) => last = format!("reading the catalog's answer: {error}"),
                    }
                    self.breaker.failure();
                }
                Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => {
                    self.breaker.success();
                    return Err(Failure::Unknown);
                }
                Ok(response) if response.status().is_server_error() => {
                    self.breaker.failure();
                    last = format!("the catalog answered {}", response.status());
                }
                Ok(response) => {
                    // Any other answer (400, 401...) will not change on a retry.
                    self.breaker.success();
                    return Err(Failure::Unavailable(format!(
                        "the catalog answered {}",
                        response.status()
                    )));
                }
                Err(CallError::NoInstance(_)) => {
                    self.breaker.failure();
                    last = "no catalog instance is registered".into();
                }
                Err(error) => {
                    self.breaker.failure();
                    last = error.to_string();
                }
            }
        }
        Err(Failure::Unavailable(last))
    }
}
