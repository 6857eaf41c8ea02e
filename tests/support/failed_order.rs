//! A request that fails in a service under a known trace, for the tests of centralized logs
//! (tests/logs.rs, and tests/dashboard.rs in the browser): a system with the event sink and an
//! orders instance reporting to it, an order for a product the catalog does not have sent
//! through the gateway with a `traceparent` naming the trace (422), and the wait until the sink
//! holds both the gateway's and orders' lines about it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::System;

/// What the failed request left: the system (still running), the sink's base URL and the
/// trace's log lines as `GET /v1/logs?trace_id=` returned them.
pub struct FailedOrder {
    pub system: System,
    pub sink: String,
    pub lines: Vec<Value>,
}

pub async fn failed_order_under_trace(
    customer: &str,
    trace: &str,
    idempotency_key: &str,
) -> FailedOrder {
    let (mut system, events_port) = System::start_with_events(1, true).await;
    let sink = super::mesh::internal_url(events_port, "");
    let reporting = format!("http://127.0.0.1:{events_port}");
    system
        .add_services(
            &[("orders", 1)],
            &[("STRATUS_EVENTS_URL", reporting.as_str())],
        )
        .await;
    let token = system.customer_token(customer).await;
    let response = system
        .http
        .post(system.url("/api/orders"))
        .bearer_auth(&token)
        .header("Idempotency-Key", idempotency_key)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({"items": [{"product_id": "no-such-product", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);

    let deadline = Instant::now() + Duration::from_secs(15);
    let lines = loop {
        let body = system
            .get_json(format!("{sink}/v1/logs?trace_id={trace}"))
            .await;
        let lines = body["logs"].as_array().unwrap().clone();
        let from = |service: &str| lines.iter().any(|l| l["service"] == service);
        if from("gateway") && from("orders") {
            break lines;
        }
        assert!(Instant::now() < deadline, "the trace's lines: {lines:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    FailedOrder {
        system,
        sink,
        lines,
    }
}

/// The records of `trace` once both the gateway's and orders' are stored (the gateway hands
/// its records over every 200 ms).
pub async fn records_of(system: &System, sink: &str, trace: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let url = format!("{sink}/v1/traces/{trace}");
        let response = system.internal().get(&url).send().await.unwrap();
        let records = match response.status().as_u16() {
            200 => response.json::<Value>().await.unwrap()["records"]
                .as_array()
                .unwrap()
                .clone(),
            _ => Vec::new(),
        };
        let has = |service: &str| records.iter().any(|r| r["service"] == service);
        if has("gateway") && has("orders") {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "the trace's records: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
