//! Log lines in the event sink, with real sink processes over loopback (mutual TLS on): OTLP
//! logs as JSON and protobuf stored and found by every filter of `GET /v1/logs`; bad input a
//! problem+json 4xx that stores nothing; a service posts only its own lines; the intake's
//! counters on `/metrics`; retention and the storage budget prune lines, oldest first; a live
//! tail; the OpenTelemetry Python SDK's exporter (tests/otel/send_logs.py); the same store
//! and queries on PostgreSQL; and Stratus's own processes shipping their lines (a failed
//! request's, under its trace; a sink that is down costing lines, not requests).

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use serde_json::{json, Value};
use stratus_events::proto::{AnyValue, KeyValue, Resource, Value as ProtoValue};
use stratus_events::proto_logs::{
    ExportLogsServiceRequest, ExportLogsServiceResponse, LogRecord, ResourceLogs, ScopeLogs,
};
use stratus_testing::{Need, Test};
use support::System;

const TRACE: &str = "5b8efff798038103d269b633813fc60c";

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A sink (SQLite in the system's directory unless `database` is given) with `env`.
async fn sink(database: Option<&str>, env: &[(&str, &str)]) -> (System, String) {
    let mut system = System::start_edge(None).await;
    let port = support::free_port();
    let sink = support::mesh::internal_url(port, "");
    let port_text = port.to_string();
    let mut all = vec![("PORT", port_text.as_str())];
    if let Some(url) = database {
        all.push(("DATABASE_URL", url));
    }
    all.extend_from_slice(env);
    system.spawn("events", &all);
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    (system, sink)
}

/// An OTLP JSON logs request: one resource, its records.
fn export(service: &str, instance: &str, records: Vec<Value>) -> Value {
    json!({"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": service}},
            {"key": "service.instance.id", "value": {"stringValue": instance}}
        ]},
        "scopeLogs": [{"scope": {"name": format!("{service}::api")}, "logRecords": records}]
    }]})
}

/// A JSON log record `at` nanoseconds, of `severity`, saying `message`.
fn record(at: u64, severity: i64, message: &str) -> Value {
    json!({
        "timeUnixNano": at.to_string(),
        "severityNumber": severity,
        "body": {"stringValue": message},
        "attributes": [{"key": "order", "value": {"stringValue": format!("Ord-{at}")}}]
    })
}

async fn post_json(system: &System, sink: &str, body: &Value) -> reqwest::Response {
    system
        .internal()
        .post(format!("{sink}/v1/logs"))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn query(system: &System, sink: &str, params: &str) -> Vec<Value> {
    let body = system.get_json(format!("{sink}/v1/logs?{params}")).await;
    body["logs"].as_array().unwrap().clone()
}

fn messages(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect()
}

/// `/metrics` of the process whose base URL is `base` (the sink's, the gateway's admin port...).
async fn metrics(system: &System, base: &str) -> String {
    let url = format!("{base}/metrics");
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

async fn assert_refused(response: reqwest::Response, status: u16, what: &str) {
    assert_eq!(response.status().as_u16(), status, "{what}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
}

/// The lines every store test sends: orders (two instances, info to error, one trace) and
/// catalog (protobuf), a second apart from `base`.
async fn send_the_lines(system: &System, sink: &str, base: u64) {
    let second = 1_000_000_000;
    let mut first = record(base, 9, "order accepted");
    first["traceId"] = json!(TRACE);
    first["spanId"] = json!("eee19b7ec3c1b174");
    let mut failed = record(base + second, 17, "No such product 42");
    failed["traceId"] = json!(TRACE);
    let response = post_json(
        system,
        sink,
        &export("orders", "orders-1", vec![first, failed]),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"partialSuccess": {}})
    );
    let mut warned = record(base + 2 * second, 0, "stock is low");
    warned["severityText"] = json!("WARN");
    let response = post_json(system, sink, &export("orders", "orders-2", vec![warned])).await;
    assert_eq!(response.status(), 200);

    let protobuf = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    KeyValue::string("service.name", "catalog"),
                    KeyValue::string("service.instance.id", "catalog-1"),
                ],
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: base + 3 * second,
                    severity_number: 5,
                    body: Some(AnyValue {
                        value: Some(ProtoValue::StringValue("products listed".into())),
                    }),
                    attributes: vec![KeyValue::int("count", 12)],
                    trace_id: vec![0xab; 16],
                    span_id: vec![0x01; 8],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let response = system
        .internal()
        .post(format!("{sink}/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .body(protobuf.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    ExportLogsServiceResponse::decode(response.bytes().await.unwrap()).unwrap();
}

/// Every filter of `GET /v1/logs` over the lines of [`send_the_lines`].
async fn every_filter_finds_its_lines(system: &System, sink: &str, base: u64) {
    let all = query(system, sink, "").await;
    assert_eq!(
        messages(&all),
        [
            "products listed",
            "stock is low",
            "No such product 42",
            "order accepted"
        ],
        "newest first"
    );
    let failed = &all[2];
    assert_eq!(failed["service"], "orders");
    assert_eq!(failed["instance"], "orders-1");
    assert_eq!(failed["level"], "error");
    assert_eq!(failed["severity"], 17);
    assert_eq!(failed["target"], "orders::api");
    assert_eq!(failed["trace_id"], TRACE);
    assert_eq!(failed["span_id"], Value::Null);
    assert_eq!(
        failed["fields"],
        json!({"order": format!("Ord-{}", base + 1_000_000_000)})
    );
    assert_eq!(all[0]["fields"], json!({"count": 12}));
    assert_eq!(all[0]["trace_id"], "ab".repeat(16));
    assert_eq!(all[0]["level"], "debug");
    assert_eq!(all[3]["span_id"], "eee19b7ec3c1b174");

    let find = |params: &'static str| async move { query(system, sink, params).await };
    assert_eq!(
        messages(&find("service=catalog").await),
        ["products listed"]
    );
    assert_eq!(messages(&find("instance=orders-2").await), ["stock is low"]);
    assert_eq!(
        messages(&find("level=warn").await),
        ["stock is low", "No such product 42"]
    );
    assert_eq!(messages(&find("level=ERROR").await), ["No such product 42"]);
    let traced = query(system, sink, &format!("trace_id={TRACE}")).await;
    assert_eq!(messages(&traced), ["No such product 42", "order accepted"]);
    // Text search: the message, any case; and the fields.
    assert_eq!(messages(&find("q=NO%20SUCH").await), ["No such product 42"]);
    let by_field = query(system, sink, &format!("q=ord-{base}")).await;
    assert_eq!(messages(&by_field), ["order accepted"]);
    // A literal % matches nothing here (not every line).
    assert!(find("q=%25").await.is_empty());
    let time = |nanos: u64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos as i128)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let window = query(
        system,
        sink,
        &format!(
            "since={}&until={}",
            time(base + 1_000_000_000),
            time(base + 3_000_000_000)
        ),
    )
    .await;
    assert_eq!(messages(&window), ["stock is low", "No such product 42"]);
    assert_eq!(
        messages(&find("service=orders&level=info&limit=1").await),
        ["stock is low"]
    );
}

async fn logs_are_stored_and_found_by_every_filter() {
    let (system, sink) = sink(None, &[]).await;
    let base = now_nanos() - 60_000_000_000;
    send_the_lines(&system, &sink, base).await;
    every_filter_finds_its_lines(&system, &sink, base).await;
    let text = metrics(&system, &sink).await;
    assert_eq!(
        support::metric_sum(&text, "events_log_lines_total", ""),
        4.0,
        "{text}"
    );
}

/// Bad input to the intake is a problem+json 4xx and stores nothing; bad query parameters are
/// a 400; a service posts only lines naming itself.
async fn bad_input_is_refused_and_stores_nothing() {
    let (system, sink) = sink(None, &[]).await;
    let now = now_nanos();
    let good = record(now, 9, "fine");
    let with = |bad: Value| export("orders", "orders-1", vec![good.clone(), bad]);
    let raw = |content_type: &'static str, body: Vec<u8>| {
        let request = system
            .internal()
            .post(format!("{sink}/v1/logs"))
            .header("content-type", content_type)
            .body(body);
        async move { request.send().await.unwrap() }
    };
    // (what, status, lines counted as refused)
    let mut refused_lines = 0;
    let mut refused_requests = 0;
    // A 10 MB line: refused as too large. The sink stops reading at its limit, so the client may
    // see its write cut off rather than the 413 (as for the record intake in tests/events.rs).
    let ten_mb = "x".repeat(10 << 20);
    let huge = system
        .internal()
        .post(format!("{sink}/v1/logs"))
        .json(&with(record(now, 9, &ten_mb)))
        .send()
        .await;
    match huge {
        Ok(response) => assert_refused(response, 413, "a 10 MB line").await,
        Err(error) => assert!(error.is_request() || error.is_body(), "{error}"),
    }
    refused_requests += 1;
    let cases: Vec<(&str, u16, usize, reqwest::Response)> = vec![
        (
            "a 70 KB line",
            413,
            2,
            post_json(&system, &sink, &with(record(now, 9, &"y".repeat(70_000)))).await,
        ),
        (
            "70 KB of attributes",
            413,
            2,
            post_json(
                &system,
                &sink,
                &with(json!({"attributes": [{"key": "big", "value": {"stringValue": "z".repeat(70_000)}}]})),
            )
            .await,
        ),
        (
            "10,001 records",
            413,
            10_001,
            post_json(
                &system,
                &sink,
                &export("orders", "o", vec![json!({}); 10_001]),
            )
            .await,
        ),
        ("malformed JSON", 400, 0, raw("application/json", b"{\"resourceLogs\": [".to_vec()).await),
        (
            "a string severity",
            422,
            0,
            post_json(&system, &sink, &with(json!({"severityNumber": "9"}))).await,
        ),
        (
            "a severity out of range",
            422,
            2,
            post_json(&system, &sink, &with(json!({"severityNumber": 99}))).await,
        ),
        (
            "a number as a string value",
            422,
            2,
            post_json(&system, &sink, &with(json!({"body": {"stringValue": 5}}))).await,
        ),
        (
            "a time that is not nanoseconds",
            422,
            2,
            post_json(&system, &sink, &with(json!({"timeUnixNano": "soon"}))).await,
        ),
        (
            "a short trace id",
            422,
            2,
            post_json(&system, &sink, &with(json!({"traceId": "abc"}))).await,
        ),
        ("not protobuf", 400, 0, raw("application/x-protobuf", vec![0xff, 0xff, 0xff]).await),
        ("not JSON at all", 415, 0, raw("text/plain", b"order accepted".to_vec()).await),
    ];
    for (what, status, lines, response) in cases {
        assert_refused(response, status, what).await;
        refused_lines += lines;
        refused_requests += 1;
    }
    // Protobuf with a bad span id: refused whole like JSON.
    let protobuf = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    LogRecord::default(),
                    LogRecord {
                        span_id: vec![1; 3],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let response = raw("application/x-protobuf", protobuf.encode_to_vec()).await;
    assert_refused(response, 422, "protobuf with a short span id").await;
    refused_lines += 2;
    refused_requests += 1;

    // A service's certificate: its own lines, yes; another service's, no (and none stored).
    let catalog = support::mesh::client_as("catalog");
    let post_as = |service: &str| {
        catalog
            .post(format!("{sink}/v1/logs"))
            .json(&export(
                service,
                "c-1",
                vec![record(now, 9, "from catalog")],
            ))
            .send()
    };
    assert_refused(
        post_as("orders").await.unwrap(),
        403,
        "posting as another service",
    )
    .await;
    refused_lines += 1;
    refused_requests += 1;
    assert_eq!(post_as("catalog").await.unwrap().status(), 200);

    let lines = query(&system, &sink, "limit=1000").await;
    assert_eq!(
        messages(&lines),
        ["from catalog"],
        "nothing else was stored"
    );

    for params in [
        "level=loud",
        "trace_id=ABC",
        "limit=0",
        "limit=5000",
        "since=later",
        "until=never",
        "since=1m&until=5m",
        "q=",
        "colour=red",
    ] {
        let url = format!("{sink}/v1/logs?{params}");
        assert_refused(
            system.internal().get(&url).send().await.unwrap(),
            400,
            params,
        )
        .await;
    }

    let text = metrics(&system, &sink).await;
    assert_eq!(
        support::metric_sum(&text, "events_log_lines_total", ""),
        1.0
    );
    assert_eq!(
        support::metric_sum(&text, "events_log_lines_rejected_total", ""),
        refused_lines as f64,
        "{text}"
    );
    assert_eq!(
        support::metric_sum(&text, "events_log_requests_rejected_total", ""),
        refused_requests as f64
    );
}

/// Retention deletes old lines; a budget far under what is sent keeps the newest lines, the
/// oldest going first, and the files within the budget.
async fn retention_and_the_budget_prune_lines_oldest_first() {
    let (system, sink) = sink(
        None,
        &[
            ("STRATUS_EVENTS_RETENTION", "30s"),
            ("STRATUS_EVENTS_BUDGET", "2MiB"),
        ],
    )
    .await;
    let now = now_nanos();
    let old: Vec<Value> = (0..100)
        .map(|i| record(now - 120_000_000_000 + i, 9, "an old line"))
        .collect();
    assert_eq!(
        post_json(&system, &sink, &export("orders", "o-1", old))
            .await
            .status(),
        200
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !query(&system, &sink, "q=an%20old%20line").await.is_empty() {
        assert!(Instant::now() < deadline, "lines past the retention stayed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 20,000 lines of 500 bytes: five times the budget.
    let filler = "f".repeat(500);
    for batch in 0..10u64 {
        let records: Vec<Value> = (0..2_000u64)
            .map(|i| {
                let n = batch * 2_000 + i;
                // A microsecond apart: the order lines are pruned in is their time's.
                record(now + n * 1_000, 9, &format!("{n} {filler}"))
            })
            .collect();
        let response = post_json(&system, &sink, &export("orders", "o-1", records)).await;
        assert_eq!(response.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let pruned = loop {
        let text = metrics(&system, &sink).await;
        let pruned = support::metric_sum(&text, "events_log_lines_pruned_total", "budget");
        let used = support::metric_sum(&text, "events_storage_bytes", "db");
        if pruned > 0.0 && used <= (2 << 20) as f64 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the budget did not prune lines: {text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(support::metric_sum(&pruned, "events_log_lines_pruned_total", "expired") >= 100.0);
    let newest = query(&system, &sink, "limit=1").await;
    assert!(
        messages(&newest)[0].starts_with("19999 "),
        "the newest line stays: {newest:?}"
    );
    // What is held is the newest lines, without a gap.
    let held = query(&system, &sink, "limit=1000").await;
    assert_eq!(held.len(), 1000);
    for (i, line) in held.iter().enumerate() {
        let expected = format!("{} ", 19_999 - i);
        assert!(
            line["message"].as_str().unwrap().starts_with(&expected),
            "{i}"
        );
    }
}

/// Live tail: a follower of `GET /v1/logs/stream?service=orders&level=warn` gets the lines
/// committed after it connected that pass, and no other.
async fn the_live_tail_sends_committed_lines_that_pass() {
    let (system, sink) = sink(None, &[]).await;
    let url = format!("{sink}/v1/logs/stream?service=orders&level=warn");
    let mut response = system.internal().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let now = now_nanos();
    // Posted until one arrives: the follower is subscribed once its answer's head is sent.
    let mut received = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !received.contains("stock is low") {
        let lines = vec![
            record(now, 9, "an info line"),
            record(now + 1_000, 13, "stock is low"),
        ];
        let sent = post_json(&system, &sink, &export("orders", "o-1", lines)).await;
        assert_eq!(sent.status(), 200);
        let other = export("catalog", "c-1", vec![record(now, 17, "catalog failed")]);
        assert_eq!(post_json(&system, &sink, &other).await.status(), 200);
        while let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_millis(300), response.chunk()).await
        {
            received.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(Instant::now() < deadline, "no line came: {received:?}");
    }
    let events: Vec<Value> = received
        .split("\n\n")
        .filter(|e| e.contains("event: logs"))
        .map(|e| {
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            serde_json::from_str(data).unwrap()
        })
        .collect();
    assert!(!events.is_empty(), "{received}");
    for batch in &events {
        assert_eq!(
            messages(batch.as_array().unwrap()),
            ["stock is low"],
            "{received}"
        );
        assert_eq!(batch[0]["service"], "orders");
        assert_eq!(batch[0]["level"], "warn");
    }
    drop(response);
    let bad = format!("{sink}/v1/logs/stream?limit=5");
    assert_refused(
        system.internal().get(&bad).send().await.unwrap(),
        400,
        "limit on a tail",
    )
    .await;
}

/// The OpenTelemetry Python SDK (from PyPI) ships its log records to the sink over OTLP/HTTP
/// protobuf, and they are found by service, trace and level. The sink runs without mutual TLS
/// here: the SDK's exporter is a plain HTTP client.
async fn an_opentelemetry_sdk_ships_its_logs() {
    let mut system = System::start_edge_plaintext(None, &[]).await;
    let port = support::free_port();
    let sink = format!("http://127.0.0.1:{port}");
    system.spawn("events", &[("PORT", port.to_string().as_str())]);
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otel/send_logs.py");
    let output = tokio::process::Command::new("python3")
        .args([script, &format!("{sink}/v1/logs")])
        .kill_on_drop(true)
        .output()
        .await
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(!stderr.contains("Failed to export"), "{stderr}");
    let (trace_id, span_id) = stdout.trim().split_once(' ').expect("ids printed");

    let lines = query(&system, &sink, "service=pyshop").await;
    assert_eq!(messages(&lines), ["order accepted", "stock is low for tea"]);
    let warning = &lines[1];
    assert_eq!(warning["instance"], "py-1");
    assert_eq!(warning["level"], "warn");
    assert_eq!(warning["target"], "pyshop.orders");
    assert_eq!(warning["trace_id"], trace_id);
    assert_eq!(warning["span_id"], span_id);
    assert_eq!(warning["fields"]["product"], 42);
    assert_eq!(lines[0]["level"], "info");
    assert_eq!(lines[0]["trace_id"], Value::Null);
    let traced = query(&system, &sink, &format!("trace_id={trace_id}&level=warn")).await;
    assert_eq!(messages(&traced), ["stock is low for tea"]);
}

async fn logs_work_on_postgres() {
    let postgres = stratus_testing::servers::Postgres::start();
    let database = postgres.database("events");
    let (system, sink) = sink(Some(&database), &[]).await;
    let base = now_nanos() - 60_000_000_000;
    send_the_lines(&system, &sink, base).await;
    every_filter_finds_its_lines(&system, &sink, base).await;
}

/// Stratus's own processes ship their lines: an order for a product the catalog does not have,
/// sent with a known `traceparent`, leaves the gateway's line and orders' line about it on the
/// sink under that trace, each with the span of its hop's record; the gateway counts what it
/// shipped.
async fn a_failed_request_leaves_its_lines_under_its_trace() {
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let support::failed_order::FailedOrder {
        system,
        sink,
        lines,
    } = support::failed_order::failed_order_under_trace(
        "ada@example.com",
        trace,
        "no-such-product-1",
    )
    .await;
    let line_of = |service: &str| {
        lines
            .iter()
            .find(|l| l["service"] == service)
            .unwrap()
            .clone()
    };
    let gateway = line_of("gateway");
    assert_eq!(gateway["message"], "request refused by the service");
    assert_eq!(gateway["level"], "info");
    assert_eq!(gateway["target"], "stratus_gateway::report");
    assert_eq!(gateway["fields"]["status"], 422);
    assert_eq!(gateway["fields"]["service"], "orders");
    assert_eq!(gateway["fields"]["method"], "POST");
    let orders = line_of("orders");
    assert_eq!(
        orders["message"],
        "order refused: the catalog has no such product"
    );
    assert_eq!(orders["fields"]["product"], "no-such-product");
    assert_eq!(orders["target"], "stratus_orders::pricing");

    // Each line's span is its hop's record's, on the same instance.
    let records = support::failed_order::records_of(&system, &sink, trace).await;
    for (line, kind) in [(&gateway, "gateway"), (&orders, "server")] {
        let record = records
            .iter()
            .find(|r| r["service"] == line["service"] && r["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} record: {records:#?}"));
        assert_eq!(line["span_id"], record["span_id"], "{line}");
        assert_eq!(line["instance"], record["instance"], "{line}");
    }

    let text = metrics(&system, &system.admin_url("")).await;
    assert!(
        support::metric_sum(&text, "logs_shipped_total", "") >= 1.0,
        "{text}"
    );
    // Lines logged before the sink was up were dropped as unreachable; none was refused (the
    // gateway posts as itself over mutual TLS) and the queue never filled.
    for reason in ["sink_refused", "queue_full"] {
        let labels = format!("reason=\"{reason}\"");
        assert_eq!(
            support::metric_sum(&text, "logs_dropped_total", &labels),
            0.0,
            "{text}"
        );
    }
}

/// A sink that is down costs the lines, counted, and no request: every request through the
/// gateway (each a 404, so each a gateway line) is answered as it would be with the sink up.
async fn a_sink_that_is_down_costs_lines_not_requests() {
    let (system, _events_port) = System::start_with_events(1, false).await;
    for i in 0..200 {
        let response = system
            .http
            .get(system.url(&format!("/api/catalog/products/nope-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "request {i}");
    }
    let admin = system.admin_url("");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = metrics(&system, &admin).await;
        let dropped =
            support::metric_sum(&text, "logs_dropped_total", "reason=\"sink_unreachable\"");
        if dropped >= 200.0 {
            assert_eq!(support::metric_sum(&text, "logs_shipped_total", ""), 0.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lines dropped: {dropped}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `STRATUS_LOG_SHIP=off` keeps a process's lines on stdout only, and `STRATUS_LOG_SHIP_LEVEL`
/// ships only its level and above: the gateway at warn ships its line about a 503 and not the
/// one about a 404 (info) before it; catalog, off, never queues a line (its lines from before
/// the sink was up would otherwise be counted as dropped).
async fn shipping_can_be_turned_off_or_raised() {
    let events_port = support::free_port();
    let reporting = format!("http://127.0.0.1:{events_port}");
    let extra = [
        ("catalog", "STRATUS_EVENTS_URL", reporting.clone()),
        ("catalog", "STRATUS_LOG_SHIP", "off".to_string()),
        ("gateway", "STRATUS_EVENTS_URL", reporting.clone()),
        ("gateway", "STRATUS_LOG_SHIP_LEVEL", "warn".to_string()),
    ];
    let mut system = System::start_with(1, &extra).await;
    system.spawn("events", &[("PORT", events_port.to_string().as_str())]);
    let sink = support::mesh::internal_url(events_port, "");
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    let trace = "7e2d7a6a1bd94d2e8d8a3c5f0b6e4a21";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let token = system.customer_token("ada@example.com").await;
    let get = |path: &str| {
        system
            .http
            .get(system.url(path))
            .bearer_auth(&token)
            .header("traceparent", &traceparent)
            .send()
    };
    assert_eq!(
        get("/api/catalog/products/nope").await.unwrap().status(),
        404
    );
    // No orders instance: the gateway answers 503 and logs it at warn.
    assert_eq!(get("/api/orders").await.unwrap().status(), 503);
    let deadline = Instant::now() + Duration::from_secs(15);
    let lines = loop {
        let lines = query(&system, &sink, &format!("trace_id={trace}")).await;
        if !lines.is_empty() {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway's warning never came"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Queued in order: the 404's line would be there by now.
    assert_eq!(messages(&lines), ["request failed"], "{lines:#?}");
    assert_eq!(lines[0]["service"], "gateway");
    assert_eq!(lines[0]["fields"]["status"], 503);

    let text = metrics(&system, &system.instance_url("catalog").await).await;
    for family in ["logs_shipped_total", "logs_dropped_total"] {
        assert_eq!(support::metric_sum(&text, family, ""), 0.0, "{text}");
    }
}

/// A process that stops on an error sends the line saying why before it exits.
async fn a_process_that_exits_ships_why() {
    let (mut system, sink) = sink(None, &[]).await;
    let port = sink
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let reporting = format!("http://127.0.0.1:{port}");
    system.spawn(
        "catalog",
        &[
            ("STRATUS_EVENTS_URL", reporting.as_str()),
            ("DATABASE_URL", "sqlite:///proc/no-such-dir/catalog.db"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let lines = query(&system, &sink, "service=catalog&level=error").await;
        if !lines.is_empty() {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "no line said why catalog stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(messages(&lines), ["exiting"]);
    assert!(
        lines[0]["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("database"),
        "{lines:#?}"
    );
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![
        Test::new(
            "logs_are_stored_and_found_by_every_filter",
            logs_are_stored_and_found_by_every_filter,
        ),
        Test::new(
            "bad_input_is_refused_and_stores_nothing",
            bad_input_is_refused_and_stores_nothing,
        ),
        Test::new(
            "retention_and_the_budget_prune_lines_oldest_first",
            retention_and_the_budget_prune_lines_oldest_first,
        ),
        Test::new(
            "the_live_tail_sends_committed_lines_that_pass",
            the_live_tail_sends_committed_lines_that_pass,
        ),
        Test::new(
            "an_opentelemetry_sdk_ships_its_logs",
            an_opentelemetry_sdk_ships_its_logs,
        )
        .needs(&[Need::Python(&[
            "opentelemetry.sdk._logs",
            "opentelemetry.exporter.otlp.proto.http._log_exporter",
        ])]),
        Test::new("logs_work_on_postgres", logs_work_on_postgres).needs(&[Need::Postgres]),
        Test::new(
            "a_failed_request_leaves_its_lines_under_its_trace",
            a_failed_request_leaves_its_lines_under_its_trace,
        ),
        Test::new(
            "a_sink_that_is_down_costs_lines_not_requests",
            a_sink_that_is_down_costs_lines_not_requests,
        ),
        Test::new(
            "shipping_can_be_turned_off_or_raised",
            shipping_can_be_turned_off_or_raised,
        ),
        Test::new(
            "a_process_that_exits_ships_why",
            a_process_that_exits_ships_why,
        ),
    ])
}
