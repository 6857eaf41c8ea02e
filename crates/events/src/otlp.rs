//! OTLP/HTTP with JSON bodies (`POST /v1/traces`): spans from any OpenTelemetry SDK whose
//! exporter is set to `http/json`, mapped to event records.
//!
//! Mapping: `service.name` and `service.instance.id` resource attributes give service and
//! instance; trace, span and parent span ids are the hex strings OTLP JSON uses; the span kind
//! (server 2, client 3, producer 4, consumer 5; internal and unspecified count as server) gives
//! kind; `http.route` (else the span name) gives name; `http.request.method` (or `http.method`)
//! the method; `http.response.status_code` (or `http.status_code`) the status; a span is ok unless
//! its status code is 2 (error) or its HTTP status is 5xx; `messaging.destination.name` gives the
//! topic; start and end times (unix nanoseconds) give start and duration.
//!
//! OTLP/HTTP protobuf (`application/x-protobuf`) takes the same mapping: [`from_proto`] turns the
//! binary message into the JSON form's structs (ids as hex, times as decimal strings) first.

use serde::Deserialize;
use serde_json::Value;
use stratus_kit::events::EventRecord;

use crate::proto;
use crate::record::format_micros;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportRequest {
    #[serde(default)]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSpans {
    #[serde(default)]
    pub resource: Option<Resource>,
    #[serde(default)]
    pub scope_spans: Vec<ScopeSpans>,
}

#[derive(Deserialize)]
pub struct Resource {
    #[serde(default)]
    pub attributes: Vec<KeyValue>,
}

#[derive(Deserialize)]
pub struct ScopeSpans {
    #[serde(default)]
    pub spans: Vec<Span>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    #[serde(default)]
    pub trace_id: String,
    #[serde(default)]
    pub span_id: String,
    #[serde(default)]
    pub parent_span_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub kind: i64,
    #[serde(default)]
    pub start_time_unix_nano: Value,
    #[serde(default)]
    pub end_time_unix_nano: Value,
    #[serde(default)]
    pub attributes: Vec<KeyValue>,
    #[serde(default)]
    pub status: Option<Status>,
}

#[derive(Deserialize)]
pub struct Status {
    #[serde(default)]
    pub code: i64,
}

#[derive(Deserialize)]
pub struct KeyValue {
    pub key: String,
    #[serde(default)]
    pub value: Value,
}

/// An attribute's value as text: `stringValue`, or `intValue` (a string or a number in OTLP JSON).
pub fn attribute<'a>(attributes: &'a [KeyValue], keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|key| {
        let value = &attributes.iter().find(|a| a.key == *key)?.value;
        let inner: &'a Value = value.get("stringValue").or_else(|| value.get("intValue"))?;
        match inner {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    })
}

/// A uint64 in OTLP JSON: a decimal string or a number.
pub fn nanos(value: &Value) -> Option<u64> {
    match value {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn kind(kind: i64) -> &'static str {
    match kind {
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "server",
    }
}

/// Maps every span; an error names the first span that cannot be mapped.
pub fn records(request: ExportRequest) -> Result<Vec<EventRecord>, String> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default();
        let service = attribute(&resource, &["service.name"]).unwrap_or_else(|| "unknown".into());
        let instance =
            attribute(&resource, &["service.instance.id"]).unwrap_or_else(|| "unknown".into());
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            let index = out.len();
            let start = nanos(&span.start_time_unix_nano).ok_or(format!(
                "span {index}: startTimeUnixNano must be unix nanoseconds"
            ))?;
            let end = nanos(&span.end_time_unix_nano).ok_or(format!(
                "span {index}: endTimeUnixNano must be unix nanoseconds"
            ))?;
            let status = attribute(
                &span.attributes,
                &["http.response.status_code", "http.status_code"],
            )
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
            let error = span.status.as_ref().is_some_and(|s| s.code == 2);
            let topic = attribute(&span.attributes, &["messaging.destination.name"]);
            // A call to a database or cache: the node it called, and (as the name) what it is.
            let peer = attribute(&span.attributes, &["peer.service"]);
            let system = attribute(&span.attributes, &["db.system.name", "db.system"])
                .filter(|_| peer.is_some());
            out.push(EventRecord {
                trace_id: span.trace_id.to_ascii_lowercase(),
                span_id: span.span_id.to_ascii_lowercase(),
                parent_span_id: Some(span.parent_span_id.to_ascii_lowercase())
                    .filter(|p| !p.is_empty()),
                service: service.clone(),
                instance: instance.clone(),
                kind: kind(span.kind).into(),
                name: system
                    .or_else(|| attribute(&span.attributes, &["http.route"]))
                    .unwrap_or(span.name),
                method: attribute(&span.attributes, &["http.request.method", "http.method"]),
                status,
                ok: !error && status < 500,
                started_at: format_micros((start / 1000).min(i64::MAX as u64) as i64),
                duration_us: end.saturating_sub(start) / 1000,
                retries: None,
                cache: None,
                topic,
                breaker: None,
                peer,
            });
        }
    }
    Ok(out)
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// A protobuf AnyValue in OTLP JSON's form (`{"stringValue": ...}`; `{}` for none).
pub fn any_value_json(value: Option<proto::AnyValue>) -> Value {
    use serde_json::json;
    match value.and_then(|v| v.value) {
        None => json!({}),
        Some(proto::Value::StringValue(s)) => json!({"stringValue": s}),
        Some(proto::Value::IntValue(i)) => json!({"intValue": i.to_string()}),
        Some(proto::Value::BoolValue(b)) => json!({"boolValue": b}),
        Some(proto::Value::DoubleValue(d)) => json!({"doubleValue": d}),
        Some(proto::Value::ArrayValue(a)) => json!({"arrayValue": {"values": a
            .values
            .into_iter()
            .map(|v| any_value_json(Some(v)))
            .collect::<Vec<_>>()}}),
        Some(proto::Value::KvlistValue(list)) => json!({"kvlistValue": {"values": list
            .values
            .into_iter()
            .map(|kv| json!({"key": kv.key, "value": any_value_json(kv.value)}))
            .collect::<Vec<_>>()}}),
        Some(proto::Value::BytesValue(bytes)) => json!({"bytesValue": hex(&bytes)}),
    }
}

pub fn json_attributes(attributes: Vec<proto::KeyValue>) -> Vec<KeyValue> {
    attributes
        .into_iter()
        .filter(|kv| kv.value.as_ref().is_some_and(|v| v.value.is_some()))
        .map(|kv| KeyValue {
            key: kv.key,
            value: any_value_json(kv.value),
        })
        .collect()
}

/// The protobuf request in the JSON form's shape, so both take one mapping.
pub fn from_proto(request: proto::ExportTraceServiceRequest) -> ExportRequest {
    ExportRequest {
        resource_spans: request
            .resource_spans
            .into_iter()
            .map(|rs| ResourceSpans {
                resource: rs.resource.map(|r| Resource {
                    attributes: json_attributes(r.attributes),
                }),
                scope_spans: rs
                    .scope_spans
                    .into_iter()
                    .map(|ss| ScopeSpans {
                        spans: ss
                            .spans
                            .into_iter()
                            .map(|span| Span {
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent_span_id: hex(&span.parent_span_id),
                                name: span.name,
                                kind: i64::from(span.kind),
                                start_time_unix_nano: Value::String(
                                    span.start_time_unix_nano.to_string(),
                                ),
                                end_time_unix_nano: Value::String(
                                    span.end_time_unix_nano.to_string(),
                                ),
                                attributes: json_attributes(span.attributes),
                                status: span.status.map(|s| Status {
                                    code: i64::from(s.code),
                                }),
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
    use crate::record::validate_batch;

    #[test]
    fn maps_an_sdk_export() {
        let body = serde_json::json!({
            "resourceSpans": [{
                "resource": {"attributes": [
                    {"key": "service.name", "value": {"stringValue": "orders"}},
                    {"key": "service.instance.id", "value": {"stringValue": "o-1"}}
                ]},
                "scopeSpans": [{
                    "scope": {"name": "test"},
                    "spans": [{
                        "traceId": "5B8EFFF798038103D269B633813FC60C",
                        "spanId": "EEE19B7EC3C1B174",
                        "parentSpanId": "EEE19B7EC3C1B173",
                        "name": "POST /api/orders",
                        "kind": 2,
                        "startTimeUnixNano": "1700000000000000000",
                        "endTimeUnixNano": 1700000000012500000u64,
                        "attributes": [
                            {"key": "http.route", "value": {"stringValue": "/api/orders"}},
                            {"key": "http.request.method", "value": {"stringValue": "POST"}},
                            {"key": "http.response.status_code", "value": {"intValue": "503"}}
                        ],
                        "status": {"code": 2}
                    }, {
                        "traceId": "5b8efff798038103d269b633813fc60c",
                        "spanId": "eee19b7ec3c1b175",
                        "name": "publish",
                        "kind": 4,
                        "startTimeUnixNano": "1700000000001000000",
                        "endTimeUnixNano": "1700000000002000000",
                        "attributes": [
                            {"key": "messaging.destination.name", "value": {"stringValue": "orders.created"}}
                        ]
                    }]
                }]
            }]
        });
        let request: ExportRequest = serde_json::from_value(body).unwrap();
        let records = records(request).unwrap();
        assert_eq!(records.len(), 2);
        let server = &records[0];
        assert_eq!(server.service, "orders");
        assert_eq!(server.instance, "o-1");
        assert_eq!(server.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(server.parent_span_id.as_deref(), Some("eee19b7ec3c1b173"));
        assert_eq!(server.kind, "server");
        assert_eq!(server.name, "/api/orders");
        assert_eq!(server.method.as_deref(), Some("POST"));
        assert_eq!(server.status, 503);
        assert!(!server.ok);
        assert_eq!(server.duration_us, 12_500);
        assert_eq!(server.started_at, "2023-11-14T22:13:20Z");
        let producer = &records[1];
        assert_eq!(producer.kind, "producer");
        assert_eq!(producer.parent_span_id, None);
        assert_eq!(producer.topic.as_deref(), Some("orders.created"));
        assert!(producer.ok);
        assert_eq!(producer.status, 0);
        validate_batch(records).unwrap();
    }

    #[test]
    fn bad_times_are_named() {
        let request: ExportRequest = serde_json::from_value(serde_json::json!({
            "resourceSpans": [{"scopeSpans": [{"spans": [{
                "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b175",
                "startTimeUnixNano": "soon", "endTimeUnixNano": "1"
            }]}]}]
        }))
        .unwrap();
        assert!(records(request).unwrap_err().contains("startTimeUnixNano"));
    }

    #[test]
    fn maps_a_protobuf_export() {
        use prost::Message;
        let request = proto::ExportTraceServiceRequest {
            resource_spans: vec![proto::ResourceSpans {
                resource: Some(proto::Resource {
                    attributes: vec![proto::KeyValue::string("service.name", "orders")],
                }),
                scope_spans: vec![proto::ScopeSpans {
                    spans: vec![proto::Span {
                        trace_id: vec![0xab; 16],
                        span_id: vec![0x01; 8],
                        parent_span_id: vec![0x02; 8],
                        name: "GET /api/orders".into(),
                        kind: 2,
                        start_time_unix_nano: 1_700_000_000_000_000_000,
                        end_time_unix_nano: 1_700_000_000_002_000_000,
                        attributes: vec![proto::KeyValue::int("http.response.status_code", 201)],
                        status: None,
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let decoded =
            proto::ExportTraceServiceRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        let records = records(from_proto(decoded)).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].trace_id, "ab".repeat(16));
        assert_eq!(
            records[0].parent_span_id.as_deref(),
            Some("0202020202020202")
        );
        assert_eq!(records[0].service, "orders");
        assert_eq!(records[0].status, 201);
        assert_eq!(records[0].duration_us, 2000);
        validate_batch(records).unwrap();
    }
}
