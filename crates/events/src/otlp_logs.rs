//! OTLP/HTTP logs (`POST /v1/logs`), JSON or protobuf, mapped to log lines.
//!
//! Mapping: the resource's `service.name` and `service.instance.id` give service and instance
//! (`unknown` without them); `timeUnixNano` the time (else `observedTimeUnixNano`, else the
//! sink's clock); `severityNumber` the severity (else one named by `severityText`, as `WARN` or
//! `error`); the body, if a string, the message (any other body is kept as its JSON); the
//! attributes the fields (a JSON object, OTLP's typed values made plain: `{"intValue": "3"}` is
//! `3`); a `target` attribute, else the instrumentation scope's name, the target; `traceId` and
//! `spanId` the trace and span (empty or all zero: none).
//!
//! Protobuf takes the same mapping: [`crate::otlp_logs_proto`] maps the message straight to
//! lines (the intake's path: no JSON in between), and is tested to agree with [`from_proto`],
//! which turns the message into the JSON form first, as [`crate::otlp::from_proto`] does for
//! spans.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::log_line::{check, level_of, severity_of, LineError, LogLine, MAX_FIELDS};
use crate::otlp::{any_value_json, attribute, hex, json_attributes, nanos, KeyValue, Resource};
use crate::proto_logs;

/// The most log records one request may carry.
pub const MAX_LINES: usize = 10_000;
/// How deep a structured body or attribute may nest.
pub(crate) const MAX_DEPTH: usize = 16;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsRequest {
    #[serde(default)]
    pub resource_logs: Vec<ResourceLogs>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLogs {
    #[serde(default)]
    pub resource: Option<Resource>,
    #[serde(default)]
    pub scope_logs: Vec<ScopeLogs>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeLogs {
    #[serde(default)]
    pub scope: Option<Scope>,
    #[serde(default)]
    pub log_records: Vec<LogRecord>,
}

#[derive(Deserialize)]
pub struct Scope {
    #[serde(default)]
    pub name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogRecord {
    #[serde(default)]
    pub time_unix_nano: Value,
    #[serde(default)]
    pub observed_time_unix_nano: Value,
    #[serde(default)]
    pub severity_number: i64,
    #[serde(default)]
    pub severity_text: String,
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub attributes: Vec<KeyValue>,
    #[serde(default)]
    pub trace_id: String,
    #[serde(default)]
    pub span_id: String,
}

/// An OTLP JSON AnyValue as plain JSON (`Null` for an empty one); an error for a value that
/// is not one of OTLP's kinds or whose kind does not match its content.
pub fn plain(value: &Value, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("values nest at most {MAX_DEPTH} deep"));
    }
    let Some(object) = value.as_object() else {
        return Err("a value must be an object like {\"stringValue\": \"...\"}".into());
    };
    let Some((kind, inner)) = object.iter().next() else {
        return Ok(Value::Null);
    };
    if object.len() > 1 {
        return Err("a value must have one kind".into());
    }
    let wrong = || format!("{kind} has the wrong type");
    match kind.as_str() {
        "stringValue" | "bytesValue" => inner.as_str().map(Value::from).ok_or_else(wrong),
        "boolValue" => inner.as_bool().map(Value::from).ok_or_else(wrong),
        "intValue" => match inner {
            Value::String(s) => s.parse::<i64>().map(Value::from).map_err(|_| wrong()),
            Value::Number(n) if n.is_i64() => Ok(inner.clone()),
            _ => Err(wrong()),
        },
        "doubleValue" => match inner {
            Value::Number(_) => Ok(inner.clone()),
            // OTLP JSON spells non-finite doubles as strings.
            Value::String(s) if ["NaN", "Infinity", "-Infinity"].contains(&s.as_str()) => {
                Ok(inner.clone())
            }
            _ => Err(wrong()),
        },
        "arrayValue" => {
            let values = inner
                .get("values")
                .map_or(Some(&[][..]), |v| v.as_array().map(Vec::as_slice))
                .ok_or_else(wrong)?;
            values
                .iter()
                .map(|v| plain(v, depth + 1))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        "kvlistValue" => {
            let values = inner
                .get("values")
                .map_or(Some(&[][..]), |v| v.as_array().map(Vec::as_slice))
                .ok_or_else(wrong)?;
            let mut map = Map::new();
            for pair in values {
                let key = pair.get("key").and_then(Value::as_str).ok_or_else(wrong)?;
                let value = pair.get("value").cloned().unwrap_or(Value::Null);
                let value = if value.is_null() {
                    Value::Null
                } else {
                    plain(&value, depth + 1)?
                };
                map.insert(key.to_string(), value);
            }
            Ok(Value::Object(map))
        }
        other => Err(format!("{other} is not an OTLP value kind")),
    }
}

/// A trace or span id: lowercase hex, none when empty or all zero.
fn id(text: &str) -> Option<String> {
    let text = text.to_ascii_lowercase();
    (!text.is_empty() && text.bytes().any(|b| b != b'0')).then_some(text)
}

/// A time in unix nanoseconds: a decimal string or a number, 0 or absent for none.
fn time(value: &Value, field: &str, index: usize) -> Result<Option<u64>, LineError> {
    if value.is_null() {
        return Ok(None);
    }
    let nanos = nanos(value).ok_or_else(|| {
        LineError::Invalid(format!(
            "log record {index}: {field} must be unix nanoseconds"
        ))
    })?;
    Ok((nanos > 0).then_some(nanos))
}

/// Maps and checks every record; `now_us` stands in for a record without a time. An error
/// names the first record that cannot be stored, and then none is.
pub fn lines(request: LogsRequest, now_us: i64) -> Result<Vec<LogLine>, LineError> {
    let total: usize = request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    if total > MAX_LINES {
        return Err(LineError::TooLarge(format!(
            "a request may carry at most {MAX_LINES} log records, not {total}"
        )));
    }
    let mut out = Vec::with_capacity(total);
    for resource_logs in request.resource_logs {
        let resource = resource_logs
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default();
        let service = attribute(&resource, &["service.name"]).unwrap_or_else(|| "unknown".into());
        let instance =
            attribute(&resource, &["service.instance.id"]).unwrap_or_else(|| "unknown".into());
        for scope_logs in resource_logs.scope_logs {
            let scope = scope_logs.scope.map(|s| s.name).unwrap_or_default();
            for record in scope_logs.log_records {
                let index = out.len();
                out.push(line(record, index, &service, &instance, &scope, now_us)?);
            }
        }
    }
    Ok(out)
}

fn line(
    record: LogRecord,
    index: usize,
    service: &str,
    instance: &str,
    scope: &str,
    now_us: i64,
) -> Result<LogLine, LineError> {
    let invalid = |detail: String| LineError::Invalid(format!("log record {index}: {detail}"));
    let time_us = match time(&record.time_unix_nano, "timeUnixNano", index)? {
        Some(nanos) => Some(nanos),
        None => time(
            &record.observed_time_unix_nano,
            "observedTimeUnixNano",
            index,
        )?,
    };
    if record.attributes.len() > MAX_FIELDS {
        return Err(invalid(format!("at most {MAX_FIELDS} attributes")));
    }
    let mut fields = Map::new();
    for kv in &record.attributes {
        let value =
            plain(&kv.value, 0).map_err(|e| invalid(format!("attribute {}: {e}", kv.key)))?;
        fields.insert(kv.key.clone(), value);
    }
    let body = match &record.body {
        None => Value::Null,
        Some(body) => plain(body, 0).map_err(|e| invalid(format!("body: {e}")))?,
    };
    finish(Mapped {
        index,
        service,
        instance,
        scope,
        time_us: time_us_or(time_us, now_us),
        severity: severity(record.severity_number, &record.severity_text),
        fields,
        body,
        trace_id: &record.trace_id,
        span_id: &record.span_id,
    })
}

/// A time in unix nanoseconds (none: `now_us`) as microseconds.
pub(crate) fn time_us_or(nanos: Option<u64>, now_us: i64) -> i64 {
    nanos.map_or(now_us, |nanos| (nanos / 1000).min(i64::MAX as u64) as i64)
}

/// `severityNumber`, else the severity `severityText` names (0: none).
pub(crate) fn severity(number: i64, text: &str) -> i64 {
    match number {
        0 => severity_of(text).unwrap_or(0),
        number => number,
    }
}

/// A record mapped, before the rules every line passes: what both forms, JSON and protobuf
/// (crate::otlp_logs_proto), come to.
pub(crate) struct Mapped<'a> {
    pub index: usize,
    pub service: &'a str,
    pub instance: &'a str,
    pub scope: &'a str,
    pub time_us: i64,
    pub severity: i64,
    /// The attributes, made plain.
    pub fields: Map<String, Value>,
    /// The body, made plain (`Null` for none).
    pub body: Value,
    /// The ids as hex, as sent (empty: none).
    pub trace_id: &'a str,
    pub span_id: &'a str,
}

/// The line a mapped record is: the target (a `target` attribute, else the scope), the message
/// (a string body as it is, another as its JSON), the ids; then checked.
pub(crate) fn finish(mapped: Mapped) -> Result<LogLine, LineError> {
    let target = match mapped.fields.get("target") {
        Some(Value::String(target)) => target.clone(),
        _ => mapped.scope.to_string(),
    };
    let message = match mapped.body {
        Value::String(text) => text,
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let line = LogLine {
        time_us: mapped.time_us,
        service: mapped.service.to_string(),
        instance: mapped.instance.to_string(),
        level: level_of(mapped.severity).to_string(),
        severity: mapped.severity,
        target,
        message,
        fields: Value::Object(mapped.fields).to_string(),
        trace_id: id(mapped.trace_id),
        span_id: id(mapped.span_id),
    };
    check(mapped.index, &line)?;
    Ok(line)
}

/// The protobuf request in the JSON form's shape, so both take one mapping.
pub fn from_proto(request: proto_logs::ExportLogsServiceRequest) -> LogsRequest {
    LogsRequest {
        resource_logs: request
            .resource_logs
            .into_iter()
            .map(|rl| ResourceLogs {
                resource: rl.resource.map(|r| Resource {
                    attributes: json_attributes(r.attributes),
                }),
                scope_logs: rl
                    .scope_logs
                    .into_iter()
                    .map(|sl| ScopeLogs {
                        scope: sl.scope.map(|s| Scope { name: s.name }),
                        log_records: sl
                            .log_records
                            .into_iter()
                            .map(|r| LogRecord {
                                time_unix_nano: Value::String(r.time_unix_nano.to_string()),
                                observed_time_unix_nano: Value::String(
                                    r.observed_time_unix_nano.to_string(),
                                ),
                                severity_number: i64::from(r.severity_number),
                                severity_text: r.severity_text,
                                body: r.body.map(|b| any_value_json(Some(b))),
                                attributes: json_attributes(r.attributes),
                                trace_id: hex(&r.trace_id),
                                span_id: hex(&r.span_id),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{AnyValue, KeyValue as ProtoKeyValue, Value as ProtoValue};
    use prost::Message;
    use serde_json::json;

    #[test]
    fn maps_an_sdk_export() {
        let body = json!({"resourceLogs": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "orders"}},
                {"key": "service.instance.id", "value": {"stringValue": "orders-2"}}
            ]},
            "scopeLogs": [{
                "scope": {"name": "orders::api"},
                "logRecords": [{
                    "timeUnixNano": "1700000000000000000",
                    "severityNumber": 17,
                    "severityText": "ERROR",
                    "body": {"stringValue": "no such product"},
                    "attributes": [
                        {"key": "product", "value": {"intValue": "42"}},
                        {"key": "tags", "value": {"arrayValue": {"values": [{"boolValue": true}]}}}
                    ],
                    "traceId": "5B8EFFF798038103D269B633813FC60C",
                    "spanId": "EEE19B7EC3C1B174"
                }, {
                    "observedTimeUnixNano": 1700000000001000000u64,
                    "severityText": "warning",
                    "body": {"kvlistValue": {"values": [{"key": "a", "value": {"doubleValue": 1.5}}]}},
                    "attributes": [{"key": "target", "value": {"stringValue": "orders::db"}}],
                    "traceId": "00000000000000000000000000000000"
                }]
            }]
        }]});
        let request: LogsRequest = serde_json::from_value(body).unwrap();
        let lines = lines(request, 5).unwrap();
        assert_eq!(lines.len(), 2);
        let error = &lines[0];
        assert_eq!(
            (error.service.as_str(), error.instance.as_str()),
            ("orders", "orders-2")
        );
        assert_eq!(error.time_us, 1_700_000_000_000_000);
        assert_eq!((error.level.as_str(), error.severity), ("error", 17));
        assert_eq!(error.message, "no such product");
        assert_eq!(error.target, "orders::api");
        assert_eq!(error.fields, r#"{"product":42,"tags":[true]}"#);
        assert_eq!(
            error.trace_id.as_deref(),
            Some("5b8efff798038103d269b633813fc60c")
        );
        assert_eq!(error.span_id.as_deref(), Some("eee19b7ec3c1b174"));
        let warn = &lines[1];
        assert_eq!(warn.time_us, 1_700_000_000_001_000);
        assert_eq!((warn.level.as_str(), warn.severity), ("warn", 13));
        assert_eq!(warn.message, r#"{"a":1.5}"#);
        assert_eq!(warn.target, "orders::db");
        assert_eq!(warn.trace_id, None);
    }

    #[test]
    fn bad_records_are_named_and_refuse_the_request() {
        let with = |record: Value| -> Result<Vec<LogLine>, LineError> {
            let request: LogsRequest = serde_json::from_value(json!({"resourceLogs": [{
                "scopeLogs": [{"logRecords": [{"body": {"stringValue": "fine"}}, record]}]
            }]}))
            .unwrap();
            lines(request, 5)
        };
        for (record, expected) in [
            (json!({"timeUnixNano": "soon"}), "timeUnixNano"),
            (json!({"severityNumber": 99}), "severityNumber"),
            (
                json!({"body": {"stringValue": 5}}),
                "stringValue has the wrong type",
            ),
            (json!({"body": {"whatValue": 5}}), "not an OTLP value kind"),
            (json!({"body": "plain"}), "must be an object"),
            (json!({"traceId": "abc"}), "traceId"),
            (json!({"spanId": "zz"}), "spanId"),
        ] {
            let error = with(record.clone()).unwrap_err();
            assert!(
                matches!(error, LineError::Invalid(_)),
                "{record}: {error:?}"
            );
            assert!(error.to_string().contains("log record 1"), "{error}");
            assert!(error.to_string().contains(expected), "{error}");
        }
        let huge = with(json!({"body": {"stringValue": "x".repeat(70_000)}})).unwrap_err();
        assert!(matches!(huge, LineError::TooLarge(_)), "{huge:?}");
    }

    #[test]
    fn maps_a_protobuf_export() {
        let request = proto_logs::ExportLogsServiceRequest {
            resource_logs: vec![proto_logs::ResourceLogs {
                resource: Some(crate::proto::Resource {
                    attributes: vec![ProtoKeyValue::string("service.name", "catalog")],
                }),
                scope_logs: vec![proto_logs::ScopeLogs {
                    log_records: vec![proto_logs::LogRecord {
                        time_unix_nano: 1_700_000_000_000_000_000,
                        severity_number: 9,
                        body: Some(AnyValue {
                            value: Some(ProtoValue::StringValue("listed".into())),
                        }),
                        attributes: vec![ProtoKeyValue::int("count", 3)],
                        trace_id: vec![0xab; 16],
                        span_id: vec![0x01; 8],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let decoded =
            proto_logs::ExportLogsServiceRequest::decode(request.encode_to_vec().as_slice())
                .unwrap();
        let lines = lines(from_proto(decoded), 5).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].service, "catalog");
        assert_eq!(lines[0].instance, "unknown");
        assert_eq!(lines[0].message, "listed");
        assert_eq!(lines[0].level, "info");
        assert_eq!(lines[0].fields, r#"{"count":3}"#);
        assert_eq!(lines[0].trace_id, Some("ab".repeat(16)));
        assert_eq!(lines[0].span_id.as_deref(), Some("0101010101010101"));
    }
}
