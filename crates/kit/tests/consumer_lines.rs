//! A message handler's log lines carry the message's trace and the hop's span, in a test binary
//! of its own: it sets a thread's tracing subscriber, and tracing's per-callsite interest cache is
//! process-wide, so tests on other threads meeting the same spans with no subscriber made it
//! flaky beside the crate's unit tests.

use std::time::Duration;

use stratus_broker::{Broker, Message};
use stratus_kit::consumer::spawn;
use stratus_kit::log_ship::layer::ShipLayer;
use tokio::sync::mpsc;

/// The embedded broker in a directory of its own.
async fn broker(dir: &std::path::Path) -> Broker {
    let url = format!("sqlite://{}", dir.join("broker.db").display());
    Broker::connect(&url, stratus_broker::Options::default())
        .await
        .unwrap()
}

/// The handler's lines carry the message's trace and the hop's span (the consumer record's), as
/// a request's lines carry its own: so shipped lines are found under the trace.
#[tokio::test]
async fn a_handlers_lines_carry_the_messages_trace_and_hop() {
    use tracing_subscriber::layer::SubscriberExt;
    let (queue, mut lines) = mpsc::channel(16);
    let subscriber = tracing_subscriber::registry().with(ShipLayer::new(queue));
    // The test's runtime is one thread: the consumer's task logs under this subscriber.
    let _subscriber = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let (tx, mut seen) = mpsc::unbounded_channel();
    let _consumer = spawn(&broker, "traced", "test", None, move |_, hop| {
        let tx = tx.clone();
        async move {
            tracing::info!("handling");
            tx.send(format!("{} {}", hop.trace_id_hex(), hop.span_id_hex()))
                .ok();
            Ok(())
        }
    })
    .await
    .unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let message = Message::new(&b"m"[..]).with_traceparent(traceparent);
    broker.publish("traced", &message).await.unwrap();

    let hop = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the message was handled")
        .unwrap();
    let (trace, span) = hop.split_once(' ').unwrap();
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(span, "00f067aa0ba902b7", "the hop has a span of its own");
    let line = loop {
        let line = lines.recv().await.unwrap();
        if line.message == "handling" {
            break line;
        }
    };
    assert_eq!(line.trace_id, u128::from_str_radix(trace, 16).ok());
    assert_eq!(line.span_id, u64::from_str_radix(span, 16).ok());
}
