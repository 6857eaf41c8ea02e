//! OTLP with real processes: the sink forwards the spans of a request made through the gateway
//! to an OpenTelemetry collector (here a small axum server decoding ExportTraceServiceRequest)
//! as OTLP/HTTP protobuf, with the right trace and parent span ids; and the sink takes OTLP/HTTP
//! protobuf on its own `POST /v1/traces`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use prost::Message;
use serde_json::Value;
use stratus_events::proto::{
    self, ExportTraceServiceRequest, ExportTraceServiceResponse, KeyValue,
};
use support::System;

/// One span as the collector received it, with its resource's service name.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: proto::Span,
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            proto::Value::StringValue(s) => Some(s.clone()),
            proto::Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A collector on a free port: `POST /v1/traces` with a protobuf body and the API key header.
async fn collector() -> (String, Arc<Mutex<Vec<Received>>>) {
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                assert_eq!(headers[header::CONTENT_TYPE], "application/x-protobuf");
                if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some("s3cret==") {
                    return (StatusCode::UNAUTHORIZED, Vec::new());
                }
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                let mut spans = store.lock().unwrap();
                for resource in request.resource_spans {
                    let attributes = resource.resource.unwrap_or_default().attributes;
                    let service = attribute(&attributes, "service.name").unwrap_or_default();
                    for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                        spans.push(Received {
                            service: service.clone(),
                            span,
                        });
                    }
                }
                let answer = ExportTraceServiceResponse::default().encode_to_vec();
                (StatusCode::OK, answer)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// A system whose sink exports to `collector`.
async fn system_exporting_to(collector: &str) -> (System, String) {
    let (mut system, events_port) = System::start_with_events(1, false).await;
    let port = events_port.to_string();
    system.spawn(
        "events",
        &[
            ("PORT", port.as_str()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret%3D%3D"),
        ],
    );
    let sink = support::mesh::internal_url(events_port, "");
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    (system, sink)
}

#[tokio::test]
async fn the_sink_exports_spans_to_an_otlp_collector() {
    let (collector, received) = collector().await;
    let (system, _sink) = system_exporting_to(&collector).await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let response = system
        .http
        .get(system.url("/api/catalog/products"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let deadline = Instant::now() + Duration::from_secs(15);
    let (gateway, catalog) = loop {
        let spans: Vec<Received> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| hex(&r.span.trace_id) == trace_id)
            .cloned()
            .collect();
        // Each service's own hop (not a client span of its database calls, kind 3).
        let find = |service: &str| {
            spans
                .iter()
                .find(|r| r.service == service && r.span.kind != 3)
                .cloned()
        };
        if let (Some(gateway), Some(catalog)) = (find("gateway"), find("catalog")) {
            break (gateway.span, catalog.span);
        }
        assert!(
            Instant::now() < deadline,
            "the collector never got both spans of the trace: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The gateway's span hangs under the caller's; the catalog's under the gateway's.
    assert_eq!(hex(&gateway.parent_span_id), caller_span);
    assert_eq!(hex(&catalog.parent_span_id), hex(&gateway.span_id));
    assert_eq!(gateway.span_id.len(), 8);
    assert_eq!(catalog.kind, 2);
    assert_eq!(
        attribute(&catalog.attributes, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(catalog.end_time_unix_nano >= catalog.start_time_unix_nano);
    assert!(catalog.start_time_unix_nano >= gateway.start_time_unix_nano);
}

#[tokio::test]
async fn the_sink_takes_otlp_protobuf() {
    let (system, events_port) = System::start_with_events(1, true).await;
    let sink = support::mesh::internal_url(events_port, "");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let trace = [0x5bu8; 16];
    let request = ExportTraceServiceRequest {
        resource_spans: vec![proto::ResourceSpans {
            resource: Some(proto::Resource {
                attributes: vec![
                    KeyValue::string("service.name", "orders"),
                    KeyValue::string("service.instance.id", "orders-1"),
                ],
            }),
            scope_spans: vec![proto::ScopeSpans {
                spans: vec![
                    proto::Span {
                        trace_id: trace.to_vec(),
                        span_id: vec![1; 8],
                        name: "POST /api/orders".into(),
                        kind: 2,
                        start_time_unix_nano: now,
                        end_time_unix_nano: now + 4_000_000,
                        attributes: vec![
                            KeyValue::string("http.route", "/api/orders"),
                            KeyValue::int("http.response.status_code", 201),
                        ],
                        ..Default::default()
                    },
                    proto::Span {
                        trace_id: trace.to_vec(),
                        span_id: vec![2; 8],
                        parent_span_id: vec![1; 8],
                        name: "publish".into(),
                        kind: 4,
                        start_time_unix_nano: now + 1_000_000,
                        end_time_unix_nano: now + 2_000_000,
                        attributes: vec![KeyValue::string(
                            "messaging.destination.name",
                            "orders.created",
                        )],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let response = system
        .internal()
        .post(format!("{sink}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    ExportTraceServiceResponse::decode(response.bytes().await.unwrap()).unwrap();

    let trace_hex = hex(&trace);
    let body: Value = system
        .get_json(format!("{sink}/v1/traces/{trace_hex}"))
        .await;
    let records = body["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{body}");
    assert_eq!(records[0]["service"], "orders");
    assert_eq!(records[0]["instance"], "orders-1");
    assert_eq!(records[0]["name"], "/api/orders");
    assert_eq!(records[0]["status"], 201);
    assert_eq!(records[0]["duration_us"], 4000);
    assert_eq!(records[1]["kind"], "producer");
    assert_eq!(records[1]["parent_span_id"], "0101010101010101");
    assert_eq!(records[1]["topic"], "orders.created");

    // Not protobuf at all, and a span with a short trace id: refused, nothing stored.
    for body in [b"\xff\xff\xff".to_vec(), {
        let mut bad = request.clone();
        bad.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![7; 3];
        bad.encode_to_vec()
    }] {
        let response = system
            .internal()
            .post(format!("{sink}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            [400, 422].contains(&response.status().as_u16()),
            "{}",
            response.status()
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let (count,) = (system
        .internal()
        .get(format!("{sink}/v1/events?service=orders&limit=1000"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["events"]
        .as_array()
        .unwrap()
        .len(),);
    assert_eq!(count, 2);
}
