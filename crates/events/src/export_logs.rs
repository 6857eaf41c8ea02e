//! The log lines the sink exports over OTLP (crate::export): each stored line as an OTLP log
//! record under a resource per service and instance, the reverse of intake's mapping
//! (crate::otlp_logs): the time, the severity number and its level's name, the message as a
//! string body, the fields as typed attributes (a JSON number an `intValue` when it is whole, a
//! `doubleValue` otherwise; arrays and objects as OTLP's lists and maps), the target as a
//! `target` attribute, and the trace and span ids. Sent back to a Stratus sink, a line comes out
//! as it went in (the target also among its fields; a line without a target takes the exporting
//! scope's name as its target, as any OTLP line does there).

use std::collections::BTreeMap;

use prost::Message;
use serde_json::Value as Json;

use crate::export::{bytes_of_hex, Signal};
use crate::log_line::LogLine;
use crate::proto::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, Resource, Value,
};
use crate::proto_logs::{ExportLogsServiceRequest, LogRecord, ResourceLogs, ScopeLogs};

/// Logs: stored lines as log records.
pub struct Logs;

impl Signal for Logs {
    type Item = LogLine;
    const PATH: &'static str = "/v1/logs";
    const NOUN: &'static str = "log lines";
    const EXPORTED: &'static str = "events_log_lines_exported_total";
    const DROPPED: &'static str = "events_log_lines_export_dropped_total";

    fn encode(lines: Vec<LogLine>, scope: &str) -> Vec<u8> {
        request(lines, scope).encode_to_vec()
    }
}

/// A plain JSON value (a line's field) as OTLP's typed value.
fn any_value(value: Json) -> AnyValue {
    let value = match value {
        Json::Null => None,
        Json::Bool(b) => Some(Value::BoolValue(b)),
        Json::Number(n) => Some(match n.as_i64() {
            Some(i) => Value::IntValue(i),
            None => Value::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Json::String(s) => Some(Value::StringValue(s)),
        Json::Array(items) => Some(Value::ArrayValue(ArrayValue {
            values: items.into_iter().map(any_value).collect(),
        })),
        Json::Object(map) => Some(Value::KvlistValue(KeyValueList {
            values: map.into_iter().map(|(k, v)| key_value(k, v)).collect(),
        })),
    };
    AnyValue { value }
}

fn key_value(key: String, value: Json) -> KeyValue {
    KeyValue {
        key,
        value: Some(any_value(value)),
    }
}

fn record(line: LogLine) -> LogRecord {
    let time = (line.time_us.max(0) as u64).saturating_mul(1000);
    // Stored fields are a JSON object's text (crate::log_line); anything else exports none.
    let mut attributes: Vec<KeyValue> = match serde_json::from_str(&line.fields) {
        Ok(Json::Object(map)) => map.into_iter().map(|(k, v)| key_value(k, v)).collect(),
        _ => Vec::new(),
    };
    if !line.target.is_empty() && !attributes.iter().any(|kv| kv.key == "target") {
        attributes.push(KeyValue::string("target", line.target));
    }
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: time,
        severity_number: line.severity as i32,
        severity_text: if line.severity > 0 {
            line.level.to_ascii_uppercase()
        } else {
            String::new()
        },
        body: Some(AnyValue {
            value: Some(Value::StringValue(line.message)),
        }),
        attributes,
        trace_id: line
            .trace_id
            .as_deref()
            .map(bytes_of_hex)
            .unwrap_or_default(),
        span_id: line
            .span_id
            .as_deref()
            .map(bytes_of_hex)
            .unwrap_or_default(),
    }
}

/// One export request: a resource per (service, instance), its lines under one scope, in the
/// order they were stored.
pub fn request(lines: Vec<LogLine>, scope: &str) -> ExportLogsServiceRequest {
    let mut resources: BTreeMap<(String, String), Vec<LogRecord>> = BTreeMap::new();
    for line in lines {
        let key = (line.service.clone(), line.instance.clone());
        resources.entry(key).or_default().push(record(line));
    }
    ExportLogsServiceRequest {
        resource_logs: resources
            .into_iter()
            .map(|((service, instance), log_records)| ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        KeyValue::string("service.name", service),
                        KeyValue::string("service.instance.id", instance),
                    ],
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: scope.to_string(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                    }),
                    log_records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_line::tests::line;
    use crate::otlp_logs;

    /// Exported and taken back in by the sink's own intake, a line is the same line (with its
    /// target also among its fields, and the scope's name as the target of a line without one).
    #[test]
    fn exported_lines_map_back_to_the_same_lines() {
        let mut traced = line(1);
        traced.level = "error".into();
        traced.severity = 17;
        traced.fields =
            r#"{"status":422,"ratio":0.5,"ok":false,"tags":["a",1],"nested":{"k":null}}"#.into();
        traced.trace_id = Some("5b8efff798038103d269b633813fc60c".into());
        traced.span_id = Some("eee19b7ec3c1b174".into());
        let mut other = line(2);
        other.service = "catalog".into();
        other.instance = "catalog-1".into();
        other.target = String::new();
        other.fields = "{}".into();
        let sent = vec![traced.clone(), other.clone()];

        let encoded = request(sent, "stratus-events").encode_to_vec();
        let decoded = ExportLogsServiceRequest::decode(encoded.as_slice()).unwrap();
        assert_eq!(decoded.resource_logs.len(), 2);
        let back = otlp_logs::lines(otlp_logs::from_proto(decoded), 0).unwrap();
        assert_eq!(back.len(), 2);
        // Resources in (service, instance) order: catalog's first.
        let (catalog, orders) = (&back[0], &back[1]);
        assert_eq!(
            catalog,
            &LogLine {
                target: "stratus-events".into(),
                ..other
            }
        );
        let fields = |text: &str| serde_json::from_str::<Json>(text).unwrap();
        let mut expected = fields(&traced.fields);
        expected["target"] = Json::from(traced.target.clone());
        assert_eq!(fields(&orders.fields), expected);
        assert_eq!(
            LogLine {
                fields: traced.fields.clone(),
                ..orders.clone()
            },
            traced
        );
    }
}
