//! OTLP with real processes: the sink forwards the spans of a request made through the gateway
//! to an OpenTelemetry collector (here a small axum server decoding ExportTraceServiceRequest)
//! as OTLP/HTTP protobuf, with the right trace and parent span ids; it forwards the log lines it
//! stores too (ExportLogsServiceRequest), its own intake's and those the gateway ships, and a
//! collector that stalls costs exported lines, dropped and counted, never intake's time; and the
//! sink takes OTLP/HTTP protobuf on its own `POST /v1/traces`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use prost::Message;
use serde_json::json;
use serde_json::Value;
use stratus_events::proto::{
    self, ExportTraceServiceRequest, ExportTraceServiceResponse, KeyValue,
};
use stratus_events::proto_logs::{ExportLogsServiceRequest, ExportLogsServiceResponse, LogRecord};
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
    sink_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret%3D%3D"),
    ])
    .await
}

/// A system (gateway, catalog, auth reporting and shipping their lines to the sink) whose sink
/// runs with `env`.
async fn sink_with(env: &[(&str, &str)]) -> (System, String) {
    let (mut system, events_port) = System::start_with_events(1, false).await;
    let port = events_port.to_string();
    let mut all = vec![("PORT", port.as_str())];
    all.extend_from_slice(env);
    system.spawn("events", &all);
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

/// One log record as a collector received it, with its resource's service name.
#[derive(Debug, Clone)]
struct ReceivedLine {
    service: String,
    instance: String,
    record: LogRecord,
}

fn body_text(record: &LogRecord) -> String {
    match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(proto::Value::StringValue(text)) => text.clone(),
        other => format!("{other:?}"),
    }
}

/// A collector on a free port taking `POST /v1/logs` (protobuf, with the API key header), and
/// `POST /v1/traces`, whose spans it answers and forgets.
async fn logs_collector() -> (String, Arc<Mutex<Vec<ReceivedLine>>>) {
    let received: Arc<Mutex<Vec<ReceivedLine>>> = Arc::default();
    let store = received.clone();
    let app = axum::Router::new()
        .route(
            "/v1/logs",
            post(move |headers: HeaderMap, body: Bytes| {
                let store = store.clone();
                async move {
                    assert_eq!(headers[header::CONTENT_TYPE], "application/x-protobuf");
                    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some("s3cret==") {
                        return (StatusCode::UNAUTHORIZED, Vec::new());
                    }
                    let request = ExportLogsServiceRequest::decode(body).unwrap();
                    let mut lines = store.lock().unwrap();
                    for resource in request.resource_logs {
                        let attributes = resource.resource.unwrap_or_default().attributes;
                        let service = attribute(&attributes, "service.name").unwrap_or_default();
                        let instance =
                            attribute(&attributes, "service.instance.id").unwrap_or_default();
                        for record in resource.scope_logs.into_iter().flat_map(|s| s.log_records) {
                            lines.push(ReceivedLine {
                                service: service.clone(),
                                instance: instance.clone(),
                                record,
                            });
                        }
                    }
                    let answer = ExportLogsServiceResponse::default().encode_to_vec();
                    (StatusCode::OK, answer)
                }
            }),
        )
        .route(
            "/v1/traces",
            post(|| async {
                (
                    StatusCode::OK,
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// The sink's `/metrics`.
async fn sink_metrics(system: &System, sink: &str) -> String {
    let url = format!("{sink}/metrics");
    system
        .client(&url)
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// An OTLP JSON logs request of `n` lines from `service`, numbered from `from`.
fn lines_request(service: &str, from: usize, n: usize) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let records: Vec<Value> = (from..from + n)
        .map(|i| {
            json!({
                "timeUnixNano": (now + i as u64).to_string(),
                "severityNumber": 13,
                "body": {"stringValue": format!("line {i}")},
                "attributes": [
                    {"key": "order", "value": {"stringValue": format!("Ord-{i}")}},
                    {"key": "attempt", "value": {"intValue": "2"}}
                ],
                "traceId": "0af7651916cd43dd8448eb211c80319c",
                "spanId": "b7ad6b7169203331"
            })
        })
        .collect();
    json!({"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": service}},
            {"key": "service.instance.id", "value": {"stringValue": format!("{service}-1")}}
        ]},
        "scopeLogs": [{"scope": {"name": format!("{service}::api")}, "logRecords": records}]
    }]})
}

/// The sink forwards the log lines it stores to the collector (`<endpoint>/v1/logs`, with the
/// headers): lines posted to its intake, as they were sent, and the gateway's own lines about
/// a request, under its trace; the exported count is on `/metrics`.
#[tokio::test]
async fn the_sink_exports_log_lines_to_an_otlp_collector() {
    let (collector, received) = logs_collector().await;
    let (system, sink) = system_exporting_to(&collector).await;
    let response = system
        .internal()
        .post(format!("{sink}/v1/logs"))
        .json(&lines_request("shop-tool", 0, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = system
        .http
        .get(system.url("/api/catalog/products/no-such-product"))
        .header("cache-control", "no-store")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let deadline = Instant::now() + Duration::from_secs(15);
    let (posted, gateway) = loop {
        let lines = received.lock().unwrap().clone();
        let posted: Vec<ReceivedLine> = lines
            .iter()
            .filter(|l| l.service == "shop-tool")
            .cloned()
            .collect();
        let gateway = lines
            .iter()
            .find(|l| l.service == "gateway" && hex(&l.record.trace_id) == trace_id)
            .cloned();
        if let (3, Some(gateway)) = (posted.len(), gateway) {
            break (posted, gateway);
        }
        assert!(
            Instant::now() < deadline,
            "the collector's lines: {} from shop-tool, {lines:#?}",
            posted.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut bodies: Vec<String> = posted.iter().map(|l| body_text(&l.record)).collect();
    bodies.sort();
    assert_eq!(bodies, ["line 0", "line 1", "line 2"]);
    let first = posted
        .iter()
        .find(|l| body_text(&l.record) == "line 0")
        .unwrap();
    assert_eq!(first.instance, "shop-tool-1");
    let record = &first.record;
    assert_eq!(record.severity_number, 13);
    assert_eq!(record.severity_text, "WARN");
    assert_eq!(hex(&record.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(hex(&record.span_id), "b7ad6b7169203331");
    assert!(record.time_unix_nano > 0);
    assert_eq!(
        attribute(&record.attributes, "order").as_deref(),
        Some("Ord-0")
    );
    assert_eq!(
        attribute(&record.attributes, "attempt").as_deref(),
        Some("2")
    );
    assert_eq!(
        attribute(&record.attributes, "target").as_deref(),
        Some("shop-tool::api")
    );
    // The gateway's line about the 404, shipped to the sink and exported from there, with the
    // span of its hop.
    assert_eq!(body_text(&gateway.record), "request refused by the service");
    assert_eq!(gateway.record.span_id.len(), 8);
    assert_eq!(
        attribute(&gateway.record.attributes, "status").as_deref(),
        Some("404")
    );

    let text = sink_metrics(&system, &sink).await;
    assert!(
        support::metric_sum(&text, "events_log_lines_exported_total", "") >= 4.0,
        "{text}"
    );
    assert_eq!(
        support::metric_sum(
            &text,
            "events_log_lines_export_dropped_total",
            "reason=\"queue_full\""
        ),
        0.0,
        "{text}"
    );
}

/// A collector that never answers in time costs exported lines and nothing else: with the
/// export queue at 1,000 lines, 10,000 lines posted while the exporter waits on the collector
/// are all stored, each POST answered at once, and what did not fit in the queue is dropped
/// and counted (`reason="queue_full"`), then what the stalled requests carried
/// (`reason="unreachable"`). `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` is used as is, and with no
/// traces endpoint of their own and no base one, spans are not exported at all.
#[tokio::test]
async fn a_stalled_collector_costs_exported_lines_not_intake() {
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let app = axum::Router::new().route(
        "/stalled/v1/logs",
        post(move || {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(60)).await;
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}/stalled/v1/logs", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (system, sink) = sink_with(&[
        ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", collector.as_str()),
        ("STRATUS_EVENTS_EXPORT_QUEUE", "1000"),
    ])
    .await;

    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for batch in 0..40 {
        let sent = Instant::now();
        let response = system
            .internal()
            .post(format!("{sink}/v1/logs"))
            .json(&lines_request("flood", batch * 250, 250))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "batch {batch}");
        slowest = slowest.max(sent.elapsed());
    }
    let took = started.elapsed();
    println!("10,000 lines posted in {took:?}, the slowest POST {slowest:?}");
    // The exporter's request waits up to 5 s on the collector: intake did not.
    assert!(took < Duration::from_secs(4), "intake took {took:?}");

    let stored = system
        .get_json(format!("{sink}/v1/logs?service=flood&limit=1000"))
        .await["logs"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(stored, 1000);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = sink_metrics(&system, &sink).await;
        let metric = |name: &str, labels: &str| support::metric_sum(&text, name, labels);
        let full = metric(
            "events_log_lines_export_dropped_total",
            "reason=\"queue_full\"",
        );
        let unreachable = metric(
            "events_log_lines_export_dropped_total",
            "reason=\"unreachable\"",
        );
        assert!(metric("events_log_lines_total", "") >= 10_000.0, "{text}");
        assert_eq!(metric("events_log_lines_exported_total", ""), 0.0, "{text}");
        assert!(
            !text.contains("events_exported_total"),
            "spans are exported with no endpoint: {text}"
        );
        // At most one request's worth (4,096) and the queue's 1,000 were held when the queue
        // filled: the rest of the 10,000 was dropped at once.
        if full >= 4_000.0 && unreachable >= 1.0 {
            println!("export dropped {full} lines as queue_full, {unreachable} as unreachable");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dropped: {full} queue_full, {unreachable} unreachable\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(requests.load(Ordering::Relaxed) >= 1);
}
