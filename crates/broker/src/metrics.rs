//! Counters for `/metrics`, recorded through the `metrics` facade, so every Stratus process that
//! uses the broker exports them with its own metrics at no extra cost. Labelled by topic and
//! group, both of which are few and chosen by the code, never by users.

pub(crate) fn published(topic: &str, count: usize) {
    metrics::counter!("broker_published_total", "topic" => topic.to_string())
        .increment(count as u64);
}

/// A delivery handed to a consumer; a redelivery (attempt > 1) is also counted on its own.
pub(crate) fn delivered(topic: &str, group: &str, attempt: u32) {
    let labels = [("topic", topic.to_string()), ("group", group.to_string())];
    metrics::counter!("broker_delivered_total", &labels).increment(1);
    if attempt > 1 {
        metrics::counter!("broker_redelivered_total", &labels).increment(1);
    }
}

/// How a delivery ended: `ack`, `nack` or `dead_letter`.
pub(crate) fn settled(topic: &str, group: &str, outcome: &'static str) {
    metrics::counter!(
        "broker_settled_total",
        "topic" => topic.to_string(),
        "group" => group.to_string(),
        "outcome" => outcome
    )
    .increment(1);
}
