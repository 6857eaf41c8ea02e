//! OTLP/HTTP logs as protobuf, mapped straight to log lines: the intake's path for what
//! Stratus's own processes ship (kit/src/log_ship/) and most SDKs send.
//!
//! The mapping is crate::otlp_logs's, record for record: the same lines and the same errors as
//! turning the message into OTLP JSON first ([`crate::otlp_logs::from_proto`], then
//! [`crate::otlp_logs::lines`]), which the test below checks on every kind of value. Why a path
//! of its own: going through JSON built each attribute twice (an `{"intValue": "3"}` object, then
//! the plain `3`), and that allocation was most of the intake's time (bench/logs.sh, perf).

use serde_json::{Map, Number, Value};

use crate::log_line::{LineError, LogLine, MAX_FIELDS};
use crate::otlp::hex;
use crate::otlp_logs::{finish, severity, time_us_or, Mapped, MAX_DEPTH, MAX_LINES};
use crate::proto::{self, AnyValue, KeyValue};
use crate::proto_logs::{ExportLogsServiceRequest, LogRecord};

/// The records a request carries.
pub fn count(request: &ExportLogsServiceRequest) -> usize {
    request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum()
}

/// A resource attribute as text: a string, or an integer's digits (as for OTLP JSON).
fn resource_text(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|a| a.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        proto::Value::StringValue(s) => Some(s.clone()),
        proto::Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

/// An AnyValue made plain (`Null` for an empty one), as [`crate::otlp_logs::plain`] makes the
/// JSON form: the same depth limit, and a double JSON cannot hold (NaN, infinite) refused.
fn plain(value: AnyValue, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("values nest at most {MAX_DEPTH} deep"));
    }
    Ok(match value.value {
        None => Value::Null,
        Some(proto::Value::StringValue(s)) => Value::String(s),
        Some(proto::Value::BoolValue(b)) => Value::Bool(b),
        Some(proto::Value::IntValue(i)) => Value::from(i),
        Some(proto::Value::DoubleValue(d)) => Value::Number(
            Number::from_f64(d).ok_or_else(|| "doubleValue has the wrong type".to_string())?,
        ),
        Some(proto::Value::BytesValue(bytes)) => Value::String(hex(&bytes)),
        Some(proto::Value::ArrayValue(array)) => Value::Array(
            array
                .values
                .into_iter()
                .map(|v| plain(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Some(proto::Value::KvlistValue(list)) => {
            let mut map = Map::new();
            for kv in list.values {
                let value = plain(kv.value.unwrap_or_default(), depth + 1)?;
                map.insert(kv.key, value);
            }
            Value::Object(map)
        }
    })
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
    let time = [record.time_unix_nano, record.observed_time_unix_nano]
        .into_iter()
        .find(|nanos| *nanos > 0);
    // Attributes without a value are left out, as the JSON form has no way to say them.
    let attributes: Vec<(String, AnyValue)> = record
        .attributes
        .into_iter()
        .filter_map(|kv| match kv.value {
            Some(value) if value.value.is_some() => Some((kv.key, value)),
            _ => None,
        })
        .collect();
    if attributes.len() > MAX_FIELDS {
        return Err(invalid(format!("at most {MAX_FIELDS} attributes")));
    }
    let mut fields = Map::new();
    for (key, value) in attributes {
        let value = plain(value, 0).map_err(|e| invalid(format!("attribute {key}: {e}")))?;
        fields.insert(key, value);
    }
    let body = match record.body {
        None => Value::Null,
        Some(body) => plain(body, 0).map_err(|e| invalid(format!("body: {e}")))?,
    };
    finish(Mapped {
        index,
        service,
        instance,
        scope,
        time_us: time_us_or(time, now_us),
        severity: severity(i64::from(record.severity_number), &record.severity_text),
        fields,
        body,
        trace_id: &hex(&record.trace_id),
        span_id: &hex(&record.span_id),
    })
}

/// Maps and checks every record; `now_us` stands in for a record without a time. An error
/// names the first record that cannot be stored, and then none is.
pub fn lines(request: ExportLogsServiceRequest, now_us: i64) -> Result<Vec<LogLine>, LineError> {
    let total = count(&request);
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
        let service = resource_text(&resource, "service.name").unwrap_or_else(|| "unknown".into());
        let instance =
            resource_text(&resource, "service.instance.id").unwrap_or_else(|| "unknown".into());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp_logs;
    use crate::proto::{ArrayValue, InstrumentationScope, KeyValueList, Resource};
    use crate::proto_logs::{ResourceLogs, ScopeLogs};

    fn value(v: proto::Value) -> AnyValue {
        AnyValue { value: Some(v) }
    }

    fn kv(key: &str, v: Option<AnyValue>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: v,
        }
    }

    /// `depth` arrays one inside the other around a string.
    fn nested(depth: usize) -> AnyValue {
        (0..depth).fold(value(proto::Value::StringValue("in".into())), |inner, _| {
            value(proto::Value::ArrayValue(ArrayValue {
                values: vec![inner],
            }))
        })
    }

    fn request(resource: Vec<KeyValue>, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: resource,
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "orders::api".into(),
                        version: String::new(),
                    }),
                    log_records: records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    /// Every kind of value, good and bad, maps as through the JSON form: the same lines, or the
    /// same error.
    #[test]
    fn the_protobuf_path_agrees_with_the_json_form() {
        let every_kind = vec![
            kv("text", Some(value(proto::Value::StringValue("a".into())))),
            kv("count", Some(value(proto::Value::IntValue(-3)))),
            kv("ok", Some(value(proto::Value::BoolValue(true)))),
            kv("ratio", Some(value(proto::Value::DoubleValue(0.25)))),
            kv(
                "raw",
                Some(value(proto::Value::BytesValue(vec![0xde, 0xad]))),
            ),
            kv("empty", Some(AnyValue { value: None })),
            kv("none", None),
            kv(
                "map",
                Some(value(proto::Value::KvlistValue(KeyValueList {
                    values: vec![
                        kv("k", Some(value(proto::Value::IntValue(1)))),
                        kv("nothing", None),
                        kv("blank", Some(AnyValue { value: None })),
                    ],
                }))),
            ),
            kv(
                "list",
                Some(value(proto::Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue { value: None }, nested(3)],
                }))),
            ),
            kv(
                "target",
                Some(value(proto::Value::StringValue("orders::db".into()))),
            ),
        ];
        let good = LogRecord {
            time_unix_nano: 1_700_000_000_123_456_789,
            severity_number: 17,
            severity_text: "ERROR".into(),
            body: Some(value(proto::Value::StringValue("no such product".into()))),
            attributes: every_kind,
            trace_id: vec![0xab; 16],
            span_id: vec![0x01; 8],
            ..Default::default()
        };
        let records = [
            good.clone(),
            // No time but the observed one; a level by name; a structured body; zero ids.
            LogRecord {
                time_unix_nano: 0,
                observed_time_unix_nano: 1_700_000_000_000_001_000,
                severity_number: 0,
                severity_text: "warning".into(),
                body: Some(nested(2)),
                attributes: vec![],
                trace_id: vec![0; 16],
                span_id: vec![],
            },
            // No time at all, no body, an empty body.
            LogRecord::default(),
            LogRecord {
                body: Some(AnyValue { value: None }),
                ..Default::default()
            },
        ];
        let bad = [
            LogRecord {
                trace_id: vec![1; 3],
                ..good.clone()
            },
            LogRecord {
                span_id: vec![1; 9],
                ..good.clone()
            },
            LogRecord {
                severity_number: 99,
                ..good.clone()
            },
            LogRecord {
                attributes: vec![kv("deep", Some(nested(17)))],
                ..good.clone()
            },
            LogRecord {
                body: Some(nested(17)),
                ..good.clone()
            },
            LogRecord {
                attributes: vec![kv("nan", Some(value(proto::Value::DoubleValue(f64::NAN))))],
                ..good.clone()
            },
            LogRecord {
                attributes: (0..=MAX_FIELDS)
                    .map(|i| kv(&format!("f{i}"), Some(value(proto::Value::IntValue(1)))))
                    .collect(),
                ..good.clone()
            },
            LogRecord {
                body: Some(value(proto::Value::StringValue("x".repeat(70_000)))),
                ..good.clone()
            },
            LogRecord {
                time_unix_nano: u64::MAX,
                ..good.clone()
            },
        ];
        let resources = [
            vec![
                kv(
                    "service.name",
                    Some(value(proto::Value::StringValue("orders".into()))),
                ),
                kv(
                    "service.instance.id",
                    Some(value(proto::Value::IntValue(7))),
                ),
            ],
            vec![kv(
                "service.name",
                Some(value(proto::Value::BoolValue(true))),
            )],
            vec![],
        ];
        let mut cases = vec![];
        for resource in &resources {
            cases.push(request(resource.clone(), records.to_vec()));
            for one in &bad {
                cases.push(request(resource.clone(), vec![good.clone(), one.clone()]));
            }
        }
        cases.push(request(vec![], vec![LogRecord::default(); MAX_LINES + 1]));
        for case in cases {
            let direct = lines(case.clone(), 5);
            let through_json = otlp_logs::lines(otlp_logs::from_proto(case), 5);
            assert_eq!(direct, through_json);
        }
        // And the good ones are what they should be.
        let lines = lines(request(resources[0].clone(), records.to_vec()), 5).unwrap();
        assert_eq!(lines[0].instance, "7");
        assert_eq!(lines[0].target, "orders::db");
        assert_eq!(lines[0].time_us, 1_700_000_000_123_456);
        assert_eq!(lines[1].level, "warn");
        assert_eq!(lines[1].message, r#"[["in"]]"#);
        assert_eq!(lines[1].trace_id, None);
        assert_eq!(lines[2].time_us, 5);
        assert_eq!(lines[2].target, "orders::api");
    }
}
