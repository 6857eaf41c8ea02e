//! The shipping task: batches the queue and posts it to the sink's `POST /v1/logs` as OTLP
//! protobuf, one resource (this process: `service.name`, `service.instance.id`) and one scope per
//! target, so a line's target travels once per batch and not as a field of every line.
//!
//! As for event records: no retries. A batch the sink refuses or cannot be reached for is dropped
//! and counted, so a sink that is down costs one failed connection a batch and nothing else.

use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tracing::Level;

use super::line::{FieldValue, Line};
use super::{Settings, FLUSH_EVERY, MAX_BATCH, MAX_BATCH_BYTES};
use crate::otlp::proto::{AnyValue, InstrumentationScope, KeyValue, Resource, Value};
use crate::otlp::proto_logs::{ExportLogsServiceRequest, LogRecord, ResourceLogs, ScopeLogs};

/// How often the task looks for the mesh before it has one.
const MESH_POLL: Duration = Duration::from_millis(50);

pub async fn run(
    settings: Settings,
    mut receiver: mpsc::Receiver<Line>,
    mut flushes: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    // The client is made with the mesh this process joins (mutual TLS or not), so it waits for
    // it; the queue holds what is logged meanwhile.
    let mesh = loop {
        if let Some(mesh) = crate::mesh::installed() {
            break mesh;
        }
        tokio::time::sleep(MESH_POLL).await;
    };
    let (client, base) = match crate::events::sink_client(mesh, &settings.sink) {
        Ok(made) => made,
        Err(error) => {
            // Printed, not logged: a logged line would only go to a queue nobody takes.
            eprintln!("not shipping log lines to the event sink: {error:#}");
            return;
        }
    };
    let url = format!("{base}/v1/logs");
    let resource = Resource {
        attributes: vec![
            KeyValue::string("service.name", settings.service.as_str()),
            KeyValue::string("service.instance.id", settings.instance.as_str()),
        ],
    };
    let mut batch: Vec<Line> = Vec::new();
    let mut bytes = 0;
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = receiver.recv() => match received {
                Some(line) => {
                    bytes += line.size();
                    batch.push(line);
                    if batch.len() >= MAX_BATCH || bytes >= MAX_BATCH_BYTES {
                        post(&client, &url, encode(&resource, std::mem::take(&mut batch))).await;
                        bytes = 0;
                    }
                }
                None => {
                    post(&client, &url, encode(&resource, batch)).await;
                    return;
                }
            },
            Some(done) = flushes.recv() => {
                // Everything queued so far, in batches, then the answer.
                while let Ok(line) = receiver.try_recv() {
                    bytes += line.size();
                    batch.push(line);
                    if batch.len() >= MAX_BATCH || bytes >= MAX_BATCH_BYTES {
                        post(&client, &url, encode(&resource, std::mem::take(&mut batch))).await;
                        bytes = 0;
                    }
                }
                post(&client, &url, encode(&resource, std::mem::take(&mut batch))).await;
                bytes = 0;
                let _ = done.send(());
            }
            _ = ticker.tick() => {
                if !batch.is_empty() {
                    post(&client, &url, encode(&resource, std::mem::take(&mut batch))).await;
                    bytes = 0;
                }
            }
        }
    }
}

/// OTLP's severity number for a level (the lowest of its range) and its text.
fn severity(level: Level) -> (i32, &'static str) {
    match level {
        Level::TRACE => (1, "TRACE"),
        Level::DEBUG => (5, "DEBUG"),
        Level::INFO => (9, "INFO"),
        Level::WARN => (13, "WARN"),
        Level::ERROR => (17, "ERROR"),
    }
}

fn value(value: FieldValue) -> AnyValue {
    AnyValue {
        value: Some(match value {
            FieldValue::Text(text) => Value::StringValue(text),
            FieldValue::Int(int) => Value::IntValue(int),
            FieldValue::Bool(bool) => Value::BoolValue(bool),
            FieldValue::Double(double) => Value::DoubleValue(double),
        }),
    }
}

fn record(line: Line) -> LogRecord {
    let (severity_number, severity_text) = severity(line.level);
    LogRecord {
        time_unix_nano: line.time_unix_nano,
        observed_time_unix_nano: line.time_unix_nano,
        severity_number,
        severity_text: severity_text.into(),
        body: Some(value(FieldValue::Text(line.message))),
        attributes: line
            .fields
            .into_iter()
            .map(|(key, field)| KeyValue {
                key: key.into(),
                value: Some(value(field)),
            })
            .collect(),
        trace_id: line
            .trace_id
            .map(|id| id.to_be_bytes().to_vec())
            .unwrap_or_default(),
        span_id: line
            .span_id
            .map(|id| id.to_be_bytes().to_vec())
            .unwrap_or_default(),
    }
}

/// One request: this process's resource, a scope per target (in the order targets first
/// appear), each line in the order it was logged. `(body, lines)`.
pub fn encode(resource: &Resource, lines: Vec<Line>) -> (Vec<u8>, usize) {
    let count = lines.len();
    let mut scopes: Vec<ScopeLogs> = Vec::new();
    for line in lines {
        let at = match scopes.iter().position(|s| {
            s.scope
                .as_ref()
                .is_some_and(|scope| scope.name == line.target)
        }) {
            Some(at) => at,
            None => {
                scopes.push(ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: line.target.into(),
                        version: String::new(),
                    }),
                    log_records: Vec::new(),
                    schema_url: String::new(),
                });
                scopes.len() - 1
            }
        };
        scopes[at].log_records.push(record(line));
    }
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: scopes,
            schema_url: String::new(),
        }],
    };
    (request.encode_to_vec(), count)
}

async fn post(client: &reqwest::Client, url: &str, (body, lines): (Vec<u8>, usize)) {
    if lines == 0 {
        return;
    }
    let count = lines as u64;
    let result = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
        .body(body)
        .send()
        .await;
    match result {
        Ok(response) if response.status().is_success() => {
            metrics::counter!("logs_shipped_total").increment(count);
        }
        Ok(_) => {
            metrics::counter!("logs_dropped_total", "reason" => "sink_refused").increment(count);
        }
        Err(_) => {
            metrics::counter!("logs_dropped_total", "reason" => "sink_unreachable")
                .increment(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::proto_logs::ExportLogsServiceRequest;

    fn line(target: &'static str, message: &str) -> Line {
        Line {
            time_unix_nano: 1_767_225_600_000_000_000,
            level: Level::WARN,
            target,
            message: message.into(),
            fields: vec![
                ("order", FieldValue::Text("o-1".into())),
                ("attempt", FieldValue::Int(2)),
            ],
            trace_id: Some(0x4bf92f3577b34da6a3ce929d0e0e4736),
            span_id: None,
        }
    }

    #[test]
    fn a_batch_is_one_resource_with_a_scope_per_target() {
        let resource = Resource {
            attributes: vec![KeyValue::string("service.name", "orders")],
        };
        let lines = vec![line("a", "one"), line("b", "two"), line("a", "three")];
        let (body, count) = encode(&resource, lines);
        assert_eq!(count, 3);
        let request = ExportLogsServiceRequest::decode(body.as_slice()).unwrap();
        let resource_logs = &request.resource_logs[0];
        assert_eq!(resource_logs.resource.as_ref(), Some(&resource));
        let scopes: Vec<(&str, usize)> = resource_logs
            .scope_logs
            .iter()
            .map(|s| (s.scope.as_ref().unwrap().name.as_str(), s.log_records.len()))
            .collect();
        assert_eq!(scopes, [("a", 2), ("b", 1)]);
        let first = &resource_logs.scope_logs[0].log_records[0];
        assert_eq!(
            (first.severity_number, first.severity_text.as_str()),
            (13, "WARN")
        );
        assert_eq!(
            first.trace_id,
            0x4bf92f3577b34da6a3ce929d0e0e4736u128.to_be_bytes()
        );
        assert!(first.span_id.is_empty());
        assert_eq!(first.attributes[1], KeyValue::int("attempt", 2));
        let body = first.body.as_ref().and_then(|b| b.value.clone());
        assert_eq!(body, Some(Value::StringValue("one".into())));
    }
}
