//! The spans the sink exports over OTLP (crate::export): each stored record as an OTLP span,
//! with its route, method, status, topic, retries, cache, breaker and peer as attributes, under a
//! resource per service and instance.

use std::collections::BTreeMap;

use prost::Message;

use crate::export::{bytes_of_hex, Signal};
use crate::proto;
use crate::record::Row;

/// Traces: stored records as spans.
pub struct Spans;

impl Signal for Spans {
    type Item = Row;
    const PATH: &'static str = "/v1/traces";
    const NOUN: &'static str = "spans";
    const EXPORTED: &'static str = "events_exported_total";
    const DROPPED: &'static str = "events_export_dropped_total";

    fn encode(rows: Vec<Row>, scope: &str) -> Vec<u8> {
        request(rows, scope).encode_to_vec()
    }
}

fn span(row: Row) -> proto::Span {
    let start = (row.started_us.max(0) as u64).saturating_mul(1000);
    let mut attributes = vec![proto::KeyValue::string("stratus.kind", row.kind.as_str())];
    if row.kind == "gateway" || row.kind == "server" {
        attributes.push(proto::KeyValue::string("http.route", row.name.as_str()));
    }
    if let Some(method) = row.method {
        attributes.push(proto::KeyValue::string("http.request.method", method));
    }
    if row.status > 0 {
        attributes.push(proto::KeyValue::int(
            "http.response.status_code",
            row.status,
        ));
    }
    if let Some(topic) = row.topic {
        attributes.push(proto::KeyValue::string("messaging.destination.name", topic));
    }
    if let Some(retries) = row.retries {
        attributes.push(proto::KeyValue::int("stratus.retries", retries));
    }
    if let Some(cache) = row.cache {
        attributes.push(proto::KeyValue::string("stratus.cache", cache));
    }
    if let Some(breaker) = row.breaker {
        attributes.push(proto::KeyValue::string("stratus.breaker", breaker));
    }
    if let Some(peer) = row.peer {
        attributes.push(proto::KeyValue::string("peer.service", peer));
    }
    proto::Span {
        trace_id: bytes_of_hex(&row.trace_id),
        span_id: bytes_of_hex(&row.span_id),
        parent_span_id: row
            .parent_span_id
            .as_deref()
            .map(bytes_of_hex)
            .unwrap_or_default(),
        name: row.name,
        kind: match row.kind.as_str() {
            "client" => 3,
            "producer" => 4,
            "consumer" => 5,
            _ => 2,
        },
        start_time_unix_nano: start,
        end_time_unix_nano: start + (row.duration_us.max(0) as u64).saturating_mul(1000),
        attributes,
        status: Some(proto::Status {
            message: String::new(),
            code: if row.ok { 0 } else { 2 },
        }),
    }
}

/// One export request: a resource per (service, instance), its spans under one scope.
pub fn request(rows: Vec<Row>, scope: &str) -> proto::ExportTraceServiceRequest {
    let mut resources: BTreeMap<(String, String), Vec<proto::Span>> = BTreeMap::new();
    for row in rows {
        let key = (row.service.clone(), row.instance.clone());
        resources.entry(key).or_default().push(span(row));
    }
    proto::ExportTraceServiceRequest {
        resource_spans: resources
            .into_iter()
            .map(|((service, instance), spans)| proto::ResourceSpans {
                resource: Some(proto::Resource {
                    attributes: vec![
                        proto::KeyValue::string("service.name", service),
                        proto::KeyValue::string("service.instance.id", instance),
                    ],
                }),
                scope_spans: vec![proto::ScopeSpans {
                    scope: Some(proto::InstrumentationScope {
                        name: scope.to_string(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                    }),
                    spans,
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
    use crate::otlp;
    use crate::record::{tests::record, validate};

    #[test]
    fn exported_spans_map_back_to_the_same_records() {
        let row = validate(record()).unwrap();
        let encoded = request(vec![row.clone()], "stratus-events").encode_to_vec();
        let decoded = proto::ExportTraceServiceRequest::decode(encoded.as_slice()).unwrap();
        let back = otlp::records(otlp::from_proto(decoded)).unwrap();
        assert_eq!(back.len(), 1);
        let back = validate(back[0].clone()).unwrap();
        assert_eq!(back.trace_id, row.trace_id);
        assert_eq!(back.span_id, row.span_id);
        assert_eq!(back.parent_span_id, row.parent_span_id);
        assert_eq!((back.service, back.instance), (row.service, row.instance));
        assert_eq!(back.started_us, row.started_us);
        assert_eq!(back.duration_us, row.duration_us);
        assert_eq!(back.status, row.status);
        assert_eq!(back.name, row.name);
    }
}
