//! The event sink with the real processes: services report every request, the sink answers
//! by service, by trace and with stats, a sink that is down breaks nothing, bad batches are
//! refused whole, and a flood is sampled to the storage budget, errors and slow traces kept.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stratus_kit::event_wire;
use stratus_testing::{Need, Test};
use support::System;

async fn get_json(system: &System, url: &str) -> (u16, Value) {
    let response = system.client(url).get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `url` until `done` holds for its JSON (10 s at most).
async fn wait_for(system: &System, url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get_json(system, url).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{url} never got there: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn services_report_every_request_to_the_sink() {
    let (system, events_port) = System::start_with_events(2, true).await;
    let sink = support::mesh::internal_url(events_port, "");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    for _ in 0..6 {
        let response = system
            .http
            .get(system.url("/api/catalog/products"))
            .header("traceparent", &traceparent)
            .header("cache-control", "no-store")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let missing = system
        .http
        .get(system.url("/api/catalog/products/nope"))
        .header("cache-control", "no-store")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let body = wait_for(
        &system,
        &format!("{sink}/v1/events?service=catalog&limit=1000"),
        // Both instances hand their records over on their own, so wait for every request's
        // own record (six listings and the 404), not for a count that client records can fill.
        |body| {
            body["events"].as_array().is_some_and(|e| {
                e.iter().filter(|e| e["kind"] == "server").count() >= 7
                    && e.iter().any(|e| e["status"] == 404)
            })
        },
    )
    .await;
    let events = body["events"].as_array().unwrap();
    let catalogs: Vec<String> = system
        .processes
        .iter()
        .filter(|p| p.name == "catalog")
        .map(|p| p.instance_id.clone())
        .collect();
    for event in events {
        assert_eq!(event["service"], "catalog");
        if event["kind"] == "client" {
            // A request's database work: one record after the request's own, naming the peer.
            assert_eq!(event["peer"], "catalog-db", "{event}");
            assert_eq!(event["name"], "sqlite", "{event}");
            continue;
        }
        assert_eq!(event["kind"], "server");
        assert!(
            catalogs.contains(&event["instance"].as_str().unwrap().to_string()),
            "{event}"
        );
        assert_ne!(event["name"], "/healthz");
        assert_ne!(event["name"], "/readyz");
    }
    let listed = events
        .iter()
        .filter(|e| e["name"] == "/api/catalog/products" && e["status"] == 200)
        .count();
    assert!(listed >= 6, "{body}");
    assert!(events
        .iter()
        .any(|e| e["name"] == "/api/catalog/products/{id}"
            && e["status"] == 404
            && e["ok"] == true));

    let (status, only_404) = get_json(
        &system,
        &format!("{sink}/v1/events?service=catalog&status=404"),
    )
    .await;
    assert_eq!(status, 200);
    let only_404 = only_404["events"].as_array().unwrap();
    assert!(!only_404.is_empty() && only_404.iter().all(|e| e["status"] == 404));

    // The trace the client started groups the catalog's records.
    // The gateway hands its records over in batches, a little later than the services.
    let trace = wait_for(&system, &format!("{sink}/v1/traces/{trace_id}"), |body| {
        body["records"].as_array().is_some_and(|r| {
            r.iter().filter(|r| r["service"] == "gateway").count() >= 6
                && r.iter().filter(|r| r["kind"] == "client").count() >= 6
                && r.iter().filter(|r| r["kind"] == "server").count() >= 6
        })
    })
    .await;
    let records = trace["records"].as_array().unwrap();
    let served = |r: &&Value| r["service"] == "catalog" && r["kind"] == "server";
    assert_eq!(records.iter().filter(served).count(), 6);
    // Each request's database work hangs under that request: catalog -> catalog-db.
    let catalog_spans: Vec<&str> = records
        .iter()
        .filter(served)
        .map(|r| r["span_id"].as_str().unwrap())
        .collect();
    let calls: Vec<&Value> = records.iter().filter(|r| r["kind"] == "client").collect();
    assert_eq!(calls.len(), 6, "{trace}");
    for call in calls {
        assert_eq!(call["service"], "catalog");
        assert_eq!(call["peer"], "catalog-db");
        assert!(
            catalog_spans.contains(&call["parent_span_id"].as_str().unwrap()),
            "{call}"
        );
    }
    for record in records {
        assert_eq!(record["trace_id"], trace_id);
        assert_eq!(record["parent_span_id"].as_str().unwrap().len(), 16);
    }
    // The gateway's own hops are in the trace too, children of the client's span, and each
    // catalog record hangs under one of them: gateway -> catalog.
    let gateway_spans: Vec<&str> = records
        .iter()
        .filter(|r| r["service"] == "gateway")
        .map(|r| {
            assert_eq!(r["kind"], "gateway");
            assert_eq!(r["parent_span_id"], "00f067aa0ba902b7");
            assert_eq!(r["name"], "catalog-read");
            r["span_id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(gateway_spans.len(), 6, "{trace}");
    for record in records.iter().filter(served) {
        assert!(
            gateway_spans.contains(&record["parent_span_id"].as_str().unwrap()),
            "{record}"
        );
    }

    let (status, stats) = get_json(&system, &format!("{sink}/v1/stats?window=5m")).await;
    assert_eq!(status, 200);
    let catalog = stats["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "catalog")
        .expect("catalog in the stats")
        .clone();
    assert!(catalog["count"].as_u64().unwrap() >= 7, "{catalog}");
    assert!(catalog["p99_ms"].as_f64().unwrap() >= catalog["p50_ms"].as_f64().unwrap());
    let instances = catalog["instances"].as_array().unwrap();
    assert!(!instances.is_empty());
    assert!(instances
        .iter()
        .all(|i| catalogs.contains(&i["instance"].as_str().unwrap().to_string())));

    let (status, _) = get_json(&system, &format!("{sink}/v1/stats?window=forever")).await;
    assert_eq!(status, 400);
    let (status, _) = get_json(&system, &format!("{sink}/v1/traces/not-a-trace")).await;
    assert_eq!(status, 400);
}

async fn a_sink_that_is_down_breaks_nothing() {
    let (system, _) = System::start_with_events(1, false).await;
    for _ in 0..20 {
        let response = system
            .http
            .get(system.url("/api/catalog/products"))
            .header("cache-control", "no-store")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let metrics = format!("{}/metrics", system.instance_url("catalog").await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = system
            .internal()
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // Nothing connects: every record is folded, kept for the sink's return, none lost.
        let folded = support::metric_sum(&text, "events_folded_total", "sink_unreachable");
        if folded >= 20.0 {
            assert!(text.contains("events_send_failures_total"), "{text}");
            assert_eq!(
                support::metric_sum(&text, "events_dropped_total", ""),
                0.0,
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events_folded_total never reached 20:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/metrics` says where a process's memory goes: resident and anonymous, SQLite's caches and
/// statements, and malloc's in-use and free bytes (what tells a leak from a cache filling up).
async fn every_process_reports_where_its_memory_goes() {
    let (system, _) = System::start_with_events(1, false).await;
    let response = system
        .http
        .get(system.url("/api/catalog/products"))
        .header("cache-control", "no-store")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = system
        .http
        .get(format!("{}/metrics", system.instance_url("catalog").await))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let resident = gauge("process_resident_memory_bytes");
    let anonymous = gauge("process_anonymous_memory_bytes");
    assert!(
        resident > 1e6 && anonymous > 0.0 && anonymous < resident,
        "{text}"
    );
    // The catalog has served a read from its SQLite file: SQLite holds pages and statements.
    assert!(gauge("sqlite_memory_bytes") > 10_000.0, "{text}");
    assert!(gauge("malloc_in_use_bytes") > 0.0, "{text}");
    assert!(gauge("malloc_free_bytes") >= 0.0, "{text}");
}

/// The sink goes away under load and comes back: the gateway serves every request meanwhile,
/// and records flow again (into the same database) once the sink is back.
async fn the_sink_can_stop_and_restart_under_load() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let (mut system, events_port) = System::start_with_events(2, true).await;
    let sink = support::mesh::internal_url(events_port, "");
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (http, url) = (system.http.clone(), system.url("/api/catalog/products"));
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http
                    .get(&url)
                    .header("cache-control", "no-store")
                    .send()
                    .await
                {
                    Ok(response) if response.status() == 200 => {
                        served.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let catalog_count = |body: &Value| -> usize {
        body["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["service"] == "catalog"))
            .and_then(|s| s["count"].as_u64())
            .unwrap_or(0) as usize
    };
    wait_for(&system, &format!("{sink}/v1/stats?window=1h"), |b| {
        catalog_count(b) > 0
    })
    .await;

    // Stop the sink (SIGKILL: no goodbye) and keep the load on for a while.
    system.process("events", 0).kill9();
    let before = served.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served.load(Ordering::Relaxed) < before + 500 {
        assert!(
            Instant::now() < deadline,
            "the gateway stalled without the sink"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed without the sink"
    );

    // Back on the same port and database: new records arrive.
    let port = events_port.to_string();
    system.spawn("events", &[("PORT", port.as_str())]);
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    let (_, body) = get_json(&system, &format!("{sink}/v1/stats?window=1h")).await;
    let after_restart = catalog_count(&body);
    wait_for(&system, &format!("{sink}/v1/stats?window=1h"), |b| {
        catalog_count(b) > after_restart + 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed while the sink restarted"
    );
}

/// Checks a refusal: its status, and a problem whose detail says `detail`.
async fn assert_refused(response: reqwest::Response, status: u16, detail: &str) {
    assert_eq!(response.status(), status);
    let problem: Value = response.json().await.unwrap();
    let text = problem["detail"].as_str().unwrap_or_default();
    assert!(text.contains(detail), "{problem}");
}

/// [`record`] in the binary format, under a trace of its own.
fn binary_record(span: u64) -> event_wire::RecordRef<'static> {
    event_wire::RecordRef {
        trace_id: 0x1af7651916cd43dd8448eb211c80319c,
        span_id: span,
        parent_span_id: None,
        service: "orders",
        instance: "o-1",
        kind: "server",
        name: "/api/orders",
        method: Some("POST"),
        status: 201,
        ok: true,
        started_us: 4_070_908_800_500_000,
        duration_us: 1500,
        retries: Some(2),
        cache: None,
        topic: None,
        breaker: None,
        peer: None,
    }
}

fn record(trace_id: &str, span: u64) -> Value {
    json!({
        "trace_id": trace_id,
        "span_id": format!("{span:016x}"),
        "service": "orders",
        "instance": "o-1",
        "kind": "server",
        "name": "/api/orders",
        "method": "POST",
        "status": 201,
        "ok": true,
        "started_at": "2099-01-01T00:00:00.5Z",
        "duration_us": 1500
    })
}

/// A registry, a gateway and a sink on a free port: the sink's base URL.
async fn edge_and_sink() -> (System, String) {
    let mut system = System::start_edge(None).await;
    let port = support::free_port();
    let sink = support::mesh::internal_url(port, "");
    let port_text = port.to_string();
    system.spawn("events", &[("PORT", port_text.as_str())]);
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    (system, sink)
}

async fn bad_batches_are_refused_whole() {
    let (system, sink) = edge_and_sink().await;
    let ingest = format!("{sink}/v1/events");
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let stored = |system: &System| {
        let url = format!("{sink}/v1/events?limit=1000");
        let client = system.http.clone();
        async move {
            let body: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            body["events"].as_array().unwrap().len()
        }
    };

    // A new connection per batch: a refused oversized body leaves its connection unusable.
    let fresh = support::mesh::operator_builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let post = |body: Vec<u8>| {
        fresh
            .post(&ingest)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let malformed = post(b"[{\"trace_id\": ".to_vec()).await.unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        malformed.headers()["content-type"],
        "application/problem+json"
    );
    let mut bad_trace = record("not-hex", 1);
    bad_trace["trace_id"] = json!("XYZ");
    let batch = serde_json::to_vec(&json!([record(trace, 1), bad_trace])).unwrap();
    assert_refused(post(batch).await.unwrap(), 422, "record 1: trace_id").await;
    match post(vec![b' '; 10 * 1024 * 1024]).await {
        Ok(response) => assert_eq!(response.status(), 413),
        // The sink may close the connection before the client has written it all.
        Err(error) => assert!(error.is_request() || error.is_body(), "{error}"),
    }
    let too_many: Vec<Value> = (1..=10_001).map(|i| record(trace, i)).collect();
    let too_many = post(serde_json::to_vec(&too_many).unwrap()).await.unwrap();
    assert!(too_many.status().is_client_error());
    let plain = system
        .internal()
        .post(&ingest)
        .body(serde_json::to_vec(&json!([record(trace, 1)])).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 415);

    // The binary format (what Stratus's own processes send): framing errors are 400, bad
    // values 422 naming the record, and a batch is stored whole or not at all.
    let post_binary = |body: Vec<u8>| {
        fresh
            .post(&ingest)
            .header("content-type", event_wire::CONTENT_TYPE)
            .body(body)
            .send()
    };
    let mut good_binary = event_wire::Batch::with_capacity(0);
    good_binary.push(&binary_record(4));
    good_binary.push(&binary_record(5));
    let whole = good_binary.bytes.clone();
    for cut in [0, 3, 4, 14, whole.len() - 1] {
        let refused = post_binary(whole[..cut].to_vec()).await.unwrap();
        let expected = if cut == 4 { 202 } else { 400 };
        assert_eq!(refused.status(), expected, "cut at {cut}");
        if expected == 400 {
            assert_eq!(
                refused.headers()["content-type"],
                "application/problem+json"
            );
        }
    }
    let mut bad_kind = good_binary.bytes.clone();
    bad_kind.extend_from_slice(&{
        let mut batch = event_wire::Batch::with_capacity(0);
        batch.push(&event_wire::RecordRef {
            kind: "internal",
            ..binary_record(6)
        });
        batch.records_bytes().to_vec()
    });
    assert_refused(post_binary(bad_kind).await.unwrap(), 422, "record 2: kind").await;
    assert_eq!(stored(&system).await, 0, "nothing stored from bad batches");

    let good: Vec<Value> = (1..=3).map(|i| record(trace, i)).collect();
    let accepted = post(serde_json::to_vec(&good).unwrap()).await.unwrap();
    assert_eq!(accepted.status(), 202);
    assert_eq!(stored(&system).await, 3);
    let accepted = post_binary(whole).await.unwrap();
    assert_eq!(accepted.status(), 202);
    assert_eq!(stored(&system).await, 5);
    // Read back in the JSON form, with the ids and the time as the binary record had them.
    let (_, body) = get_json(&system, &format!("{sink}/v1/events?limit=1000")).await;
    let span = format!("{:016x}", 4);
    let four = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["span_id"] == span.as_str())
        .expect("the binary record is stored");
    assert_eq!(four["trace_id"], "1af7651916cd43dd8448eb211c80319c");
    assert_eq!(four["started_at"], "2099-01-01T00:00:00.5Z");
    assert_eq!(four["retries"], 2);
    assert_eq!(four["parent_span_id"], Value::Null);

    // OTLP/HTTP JSON, as an OpenTelemetry SDK sends it.
    let otlp = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "payments"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": trace, "spanId": "1111111111111111", "parentSpanId": "0000000000000001",
            "name": "charge", "kind": 3,
            "startTimeUnixNano": "4070908800600000000", "endTimeUnixNano": "4070908800602000000",
            "status": {"code": 2}
        }]}]
    }]});
    let exported = system
        .internal()
        .post(format!("{sink}/v1/traces"))
        .json(&otlp)
        .send()
        .await
        .unwrap();
    assert_eq!(exported.status(), 200);
    let (status, body) = get_json(&system, &format!("{sink}/v1/traces/{trace}")).await;
    assert_eq!(status, 200);
    let records = body["records"].as_array().unwrap();
    assert_eq!(records.len(), 4);
    let payment = records.last().unwrap();
    assert_eq!(payment["service"], "payments");
    assert_eq!(payment["kind"], "client");
    assert_eq!(payment["ok"], false);
    assert_eq!(payment["duration_us"], 2000);
    assert_eq!(payment["root"], false);

    for bad in [
        "/v1/events?limit=0",
        "/v1/events?since=soon",
        "/v1/events?status=teapot",
        "/v1/events?colour=red",
    ] {
        let response = system
            .internal()
            .get(format!("{sink}{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
}

async fn the_sink_works_on_postgres() {
    let postgres = stratus_testing::servers::Postgres::start();
    let mut system = System::start_edge(None).await;
    let port = support::free_port();
    let sink = support::mesh::internal_url(port, "");
    let (port_text, database) = (port.to_string(), postgres.database("events"));
    system.spawn(
        "events",
        &[
            ("PORT", port_text.as_str()),
            ("DATABASE_URL", database.as_str()),
        ],
    );
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    let trace = "5b8efff798038103d269b633813fc60c";
    let now = stratus_kit::now_rfc3339();
    let batch: Vec<Value> = (1..=50)
        .map(|i| {
            let mut r = record(trace, i);
            r["started_at"] = json!(now);
            r["duration_us"] = json!(i * 1000);
            if i % 10 == 0 {
                r["status"] = json!(503);
                r["ok"] = json!(false);
                r["parent_span_id"] = json!("0000000000000001");
            }
            r
        })
        .collect();
    let response = system
        .internal()
        .post(format!("{sink}/v1/events"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let mut bad = batch.clone();
    bad[3]["kind"] = json!("internal");
    let response = system
        .internal()
        .post(format!("{sink}/v1/events"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);

    let (_, errors) = get_json(
        &system,
        &format!("{sink}/v1/events?service=orders&status=5xx"),
    )
    .await;
    assert_eq!(errors["events"].as_array().unwrap().len(), 5);
    let (_, body) = get_json(&system, &format!("{sink}/v1/traces/{trace}")).await;
    assert_eq!(body["records"].as_array().unwrap().len(), 50);
    let (_, stats) = get_json(&system, &format!("{sink}/v1/stats?window=1h")).await;
    let orders = &stats["services"][0];
    assert_eq!(orders["service"], "orders");
    assert_eq!(orders["count"], 50);
    assert_eq!(orders["errors"], 5);
    assert_eq!(orders["p50_ms"], 25.0);
    assert_eq!(orders["p99_ms"], 50.0);
    assert_eq!(orders["instances"][0]["instance"], "o-1");
}

/// Nearest-rank percentile of sorted values, the definition `/v1/stats` promises within 1%.
fn nearest_rank(sorted: &[i64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// One hop of `service`'s `instance` as a JSON record (span `span`, trace `trace`): whether it
/// succeeded, how long it took and when it started.
fn hop(trace: u64, span: u64, service: &str, instance: &str, ok: bool, us: i64, at: i64) -> Value {
    let mut r = record(&format!("{trace:032x}"), span);
    r["service"] = json!(service);
    r["instance"] = json!(instance);
    r["ok"] = json!(ok);
    r["status"] = json!(if ok { 200 } else { 503 });
    r["duration_us"] = json!(us);
    r["started_at"] = json!(stratus_events::record::format_micros(at));
    r
}

/// Posts JSON records to the sink in batches of 500, each stored (202).
async fn post_records(system: &System, sink: &str, records: &[Value]) {
    for batch in records.chunks(500) {
        let response = system
            .internal()
            .post(format!("{sink}/v1/events"))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
}

/// Checks one `/v1/stats` entry (a service's or an instance's) against the raw records.
fn check_summary(got: &Value, records: &[(bool, i64)], what: &str) {
    let mut durations: Vec<i64> = records.iter().map(|(_, d)| *d).collect();
    durations.sort_unstable();
    let errors = records.iter().filter(|(ok, _)| !ok).count();
    assert_eq!(got["count"], records.len(), "{what}: {got}");
    assert_eq!(got["errors"], errors, "{what}: {got}");
    for p in [50, 95, 99] {
        let want = nearest_rank(&durations, f64::from(p));
        let answered = got[format!("p{p}_ms")].as_f64().unwrap();
        assert!(
            (answered - want).abs() <= 0.01 * want,
            "{what}: p{p} is {answered}, the records' {want}"
        );
    }
}

/// `/v1/stats` is computed from aggregates kept as records are stored: its counts equal a
/// recount of the records posted and its percentiles are within 1% of theirs, before and after
/// the sink restarts (the aggregates are rebuilt from the stored records).
async fn the_stats_and_topology_equal_a_recount_and_survive_a_restart() {
    let mut system = System::start_edge(None).await;
    let port = support::free_port();
    let sink = support::mesh::internal_url(port, "");
    let port_text = port.to_string();
    system.spawn("events", &[("PORT", port_text.as_str())]);
    system.wait_http_ok(&format!("{sink}/readyz")).await;

    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let mut seed: u64 = 0x5eed_cafe;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // (service, instance) -> (ok, duration_us) of every hop it served.
    let mut expected: std::collections::BTreeMap<(String, String), Vec<(bool, i64)>> =
        Default::default();
    let mut records = Vec::new();
    for i in 0..4000u64 {
        let service = ["orders", "payments"][(next() % 2) as usize];
        let instance = format!("{service}-{}", next() % 2);
        let ok = next() % 9 != 0;
        let duration = ((next() % 10_000) as f64 / 10_000.0 * 14.0).exp() as i64;
        let started = now_us - (next() % 90_000_000) as i64;
        let mut r = hop(i / 4 + 1, i + 1, service, &instance, ok, duration, started);
        if i % 4 != 0 {
            // Called by the trace's previous record: an edge when the services differ.
            r["parent_span_id"] = json!(format!("{:016x}", i));
        }
        if i % 10 == 9 {
            // A call to the service's database: drawn in the topology, not a hop it served.
            r["kind"] = json!("client");
            r["name"] = json!("sqlite");
            r["peer"] = json!(format!("{service}-db"));
        } else {
            expected
                .entry((service.to_string(), instance))
                .or_default()
                .push((ok, duration));
        }
        records.push(r);
    }
    post_records(&system, &sink, &records).await;

    let check = |stats: &Value| {
        let services = stats["services"].as_array().unwrap();
        assert_eq!(services.len(), 2, "{stats}");
        for service in services {
            let name = service["service"].as_str().unwrap();
            let all: Vec<(bool, i64)> = expected
                .iter()
                .filter(|((s, _), _)| s == name)
                .flat_map(|(_, records)| records.iter().copied())
                .collect();
            check_summary(service, &all, name);
            let instances = service["instances"].as_array().unwrap();
            assert_eq!(instances.len(), 2, "{service}");
            for instance in instances {
                let id = instance["instance"].as_str().unwrap().to_string();
                check_summary(instance, &expected[&(name.to_string(), id.clone())], &id);
            }
        }
    };
    let (status, stats) = get_json(&system, &format!("{sink}/v1/stats?window=5m")).await;
    assert_eq!(status, 200);
    check(&stats);
    // The topology, kept as records arrive, equals the one computed from all of them.
    let hops: Vec<stratus_events::store::Hop> = records
        .iter()
        .map(|r| stratus_events::store::Hop {
            span_id: r["span_id"].as_str().unwrap().into(),
            parent_span_id: r["parent_span_id"].as_str().map(Into::into),
            service: r["service"].as_str().unwrap().into(),
            instance: r["instance"].as_str().unwrap().into(),
            kind: r["kind"].as_str().unwrap().into(),
            ok: r["ok"].as_bool().unwrap(),
            duration_us: r["duration_us"].as_i64().unwrap(),
            topic: None,
            name: r["name"].as_str().unwrap().into(),
            peer: r["peer"].as_str().map(Into::into),
            status: r["status"].as_i64().unwrap(),
        })
        .collect();
    let want = stratus_events::topology::compute(&hops, 300.0, &Default::default());
    assert!(want.edges.len() >= 6, "{want:?}");
    let check_topology = |topology: &Value| {
        let edges = topology["edges"].as_array().unwrap();
        assert_eq!(edges.len(), want.edges.len(), "{topology}");
        for (got, want) in edges.iter().zip(&want.edges) {
            assert_eq!(got["from"], want.from.as_str(), "{got}");
            assert_eq!(got["to"], want.to.as_str(), "{got}");
            assert_eq!(got["count"], want.count, "{got}");
            assert_eq!(got["errors"], want.errors, "{got}");
            let p99 = got["p99_ms"].as_f64().unwrap();
            assert!(
                (p99 - want.p99_ms).abs() <= 0.01 * want.p99_ms + 1e-9,
                "{got} vs {want:?}"
            );
        }
    };
    let (status, topology) = get_json(&system, &format!("{sink}/v1/topology?window=5m")).await;
    assert_eq!(status, 200);
    check_topology(&topology);
    // What they hold is on /metrics (two services, two instances and one route each).
    let metrics = format!("{sink}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = system.client(&metrics).get(&metrics).send().await.unwrap();
        let text = text.text().await.unwrap();
        let cells = text
            .lines()
            .find_map(|l| l.strip_prefix("events_stats_cells ")?.parse::<f64>().ok());
        if cells.is_some_and(|cells| cells >= 6.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no events_stats_cells: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGKILL, then back on the same database: the rebuilt aggregates say the same.
    system.process("events", 0).kill9();
    system.spawn("events", &[("PORT", port_text.as_str())]);
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    let total: usize = expected.values().map(Vec::len).sum();
    let stats = wait_for(&system, &format!("{sink}/v1/stats?window=5m"), |body| {
        let counted: u64 = body["services"]
            .as_array()
            .map(|s| s.iter().filter_map(|s| s["count"].as_u64()).sum())
            .unwrap_or(0);
        counted == total as u64
    })
    .await;
    check(&stats);
    let (_, topology) = get_json(&system, &format!("{sink}/v1/topology?window=5m")).await;
    check_topology(&topology);
}

/// The storage budget through the real sink: a flood of fast traces into an 8 MiB budget is
/// sampled, whole traces at a time, while the database and its WAL stay within the budget on
/// disk; an error trace and a slow trace stay, whole, until their retention ends.
async fn a_flood_is_sampled_to_the_budget_and_errors_and_slow_traces_stay() {
    flood_within_budget(None).await;
}

/// The same on PostgreSQL, but for the disk: deleted rows' space is reused only once
/// (auto)vacuum has been through, so the relation can outgrow the budget for a while (printed,
/// not asserted; README says so).
async fn a_flood_is_sampled_to_the_budget_on_postgres() {
    let postgres = stratus_testing::servers::Postgres::start();
    flood_within_budget(Some(postgres.database("events"))).await;
}

async fn flood_within_budget(database_url: Option<String>) {
    const BUDGET: u64 = 8 << 20;
    const RETENTION: Duration = Duration::from_secs(45);
    let mut system = System::start_edge(None).await;
    let port = support::free_port();
    let sink = support::mesh::internal_url(port, "");
    let port_text = port.to_string();
    let mut env = vec![
        ("PORT", port_text.as_str()),
        ("STRATUS_EVENTS_BUDGET", "8MiB"),
        ("STRATUS_EVENTS_RETENTION", "45s"),
        ("STRATUS_EVENTS_SLOW", "500ms"),
    ];
    if let Some(url) = &database_url {
        env.push(("DATABASE_URL", url.as_str()));
    }
    system.spawn("events", &env);
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    let started = Instant::now();
    let (database, wal) = (
        system.dir.path().join("events.db"),
        system.dir.path().join("events.db-wal"),
    );
    let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let storage_url = format!("{sink}/v1/storage");
    // SQLite: the files; PostgreSQL: the relation's size, as the sink measures it.
    let on_disk = |system: &System| {
        let (database, wal, storage_url) = (database.clone(), wal.clone(), storage_url.clone());
        let postgres = database_url.is_some();
        let client = system.http.clone();
        async move {
            if postgres {
                let body: Value = client
                    .get(&storage_url)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                body["bytes"]["database_file"].as_u64().unwrap()
            } else {
                size(&database) + size(&wal)
            }
        }
    };

    // Before the flood: a trace whose last record is an error, one whose middle one is slow.
    let (error_trace, slow_trace) = (
        "e0000000000000000000000000000001",
        "50000000000000000000000000000002",
    );
    let now = stratus_kit::now_rfc3339();
    let mut kept = Vec::new();
    for (trace, first_span) in [(error_trace, 1), (slow_trace, 4)] {
        for i in 0..3u64 {
            let mut r = record(trace, first_span + i);
            r["started_at"] = json!(now);
            kept.push(r);
        }
    }
    kept[2]["status"] = json!(503);
    kept[2]["ok"] = json!(false);
    kept[4]["duration_us"] = json!(800_000);
    let response = system
        .internal()
        .post(format!("{sink}/v1/events"))
        .json(&kept)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    // The flood: 40,000 records of fast three-record traces (half as much again as the budget
    // holds), about 2,000 a second (at most 30 s on a slow machine), the disk measured after
    // every batch.
    let flood_id = |n: u64| (0xf100du128 << 64) | u128::from(n + 1);
    let (mut traces, mut largest, mut largest_wal) = (0u64, 0u64, 0u64);
    let mut pace = tokio::time::interval(Duration::from_millis(250));
    let flood_started = Instant::now();
    while traces * 3 < 40_000 && flood_started.elapsed() < Duration::from_secs(30) {
        pace.tick().await;
        let started_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let mut batch = event_wire::Batch::with_capacity(0);
        for _ in 0..170 {
            for span in 0..3u64 {
                batch.push(&event_wire::RecordRef {
                    trace_id: flood_id(traces),
                    span_id: traces * 3 + span + 1,
                    parent_span_id: (span > 0).then_some(traces * 3 + 1),
                    started_us: started_us as i64,
                    duration_us: 2_000,
                    status: 200,
                    ..binary_record(1)
                });
            }
            traces += 1;
        }
        let response = system
            .internal()
            .post(format!("{sink}/v1/events"))
            .header("content-type", event_wire::CONTENT_TYPE)
            .body(batch.bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        largest = largest.max(on_disk(&system).await);
        largest_wal = largest_wal.max(size(&wal));
    }
    let (_, storage) = get_json(&system, &storage_url).await;
    eprintln!(
        "flood: {} records, disk at most {largest} bytes (the WAL {largest_wal}; budget {BUDGET}); {storage}",
        traces * 3
    );
    // SQLite: the database file and its WAL, within the budget. PostgreSQL: the table with its
    // indexes (the WAL is the server's), which reuses a deleted row's space only once a vacuum
    // has been through: it may pass the budget by up to a quarter in this flood (without the
    // pruner's vacuums it reached 10.5 MB, a quarter and more).
    let bound = if database_url.is_some() {
        BUDGET * 5 / 4
    } else {
        BUDGET
    };
    assert!(
        largest <= bound,
        "the database reached {largest} bytes with a budget of {BUDGET}"
    );
    assert!(
        storage["sampling_rate"].as_f64().unwrap() < 1.0,
        "{storage}"
    );
    assert!(
        storage["pruned"]["sampled"].as_u64().unwrap() > 0,
        "{storage}"
    );
    assert_eq!(
        storage["pruned"]["budget"], 0,
        "kept traces were pruned: {storage}"
    );
    assert_eq!(storage["budget_bytes"], BUDGET);
    assert!(storage["kept_traces"].as_u64().unwrap() >= 2, "{storage}");
    assert!(
        storage["rows"].as_u64().unwrap() < traces * 3,
        "nothing was pruned: {storage}"
    );

    // Kept traces are whole; every flood trace is there whole or gone whole.
    for trace in [error_trace, slow_trace] {
        let (status, body) = get_json(&system, &format!("{sink}/v1/traces/{trace}")).await;
        assert_eq!(status, 200, "kept trace {trace}: {body}");
        assert_eq!(body["records"].as_array().unwrap().len(), 3, "{body}");
    }
    let (mut whole, mut gone) = (0, 0);
    for n in (0..traces).step_by(23) {
        let id = format!("{:032x}", flood_id(n));
        let (status, body) = get_json(&system, &format!("{sink}/v1/traces/{id}")).await;
        match status {
            404 => gone += 1,
            200 => {
                assert_eq!(body["records"].as_array().unwrap().len(), 3, "{body}");
                whole += 1;
            }
            other => panic!("trace {id}: {other} {body}"),
        }
    }
    assert!(whole > 0 && gone > 0, "held {whole}, pruned {gone}");

    // On /metrics too.
    let metrics_url = format!("{sink}/metrics");
    let metrics = system
        .client(&metrics_url)
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rate = metrics
        .lines()
        .find_map(|l| l.strip_prefix("events_sampling_rate ")?.parse::<f64>().ok())
        .expect("events_sampling_rate on /metrics");
    assert!(rate < 1.0, "{rate}");

    // The retention ends: the kept traces go (whole), and the disk is still within budget.
    let expiry = RETENTION + Duration::from_secs(1);
    if let Some(wait) = expiry.checked_sub(started.elapsed()) {
        tokio::time::sleep(wait).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for trace in [error_trace, slow_trace] {
        loop {
            let (status, _) = get_json(&system, &format!("{sink}/v1/traces/{trace}")).await;
            if status == 404 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace} outlived its retention"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let after = on_disk(&system).await;
    eprintln!("after the retention: {after} bytes");
    assert!(after <= bound, "{after} bytes after the flood");
}

/// Reporters whose queues are too small for the load (`STRATUS_EVENTS_QUEUE`: the catalog's
/// takes 2 records, one request's pair; the gateway's 100, less than a worker's batch of 128)
/// fold what does not fit into summaries, and the sink's stats, instances and edges still count
/// every request exactly: the same numbers as requests sent, not what arrived as records.
async fn every_request_is_counted_when_the_reporters_fold() {
    let events_port = support::free_port();
    let sink_url = format!("http://127.0.0.1:{events_port}");
    let extra = [
        ("catalog", "STRATUS_EVENTS_URL", sink_url.clone()),
        ("catalog", "STRATUS_EVENTS_QUEUE", "2".to_string()),
        ("gateway", "STRATUS_EVENTS_URL", sink_url.clone()),
        ("gateway", "STRATUS_EVENTS_QUEUE", "100".to_string()),
    ];
    let mut system = System::start_with(2, &extra).await;
    let port = events_port.to_string();
    system.spawn("events", &[("PORT", port.as_str())]);
    let sink = support::mesh::internal_url(events_port, "");
    system.wait_http_ok(&format!("{sink}/readyz")).await;

    // 3,000 requests, 48 at a time: far more than a 2-record queue takes between flushes.
    const REQUESTS: usize = 3_000;
    let url = system.url("/api/catalog/products");
    let mut tasks = Vec::new();
    for worker in 0..48 {
        let (client, url) = (system.http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in (worker..REQUESTS).step_by(48) {
                // Past the edge cache: every request reaches catalog and leaves its records.
                let response = client
                    .get(&url)
                    .header("cache-control", "no-store")
                    .send()
                    .await
                    .unwrap();
                statuses.push(response.status().as_u16());
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(task.await.unwrap());
    }
    assert_eq!(statuses.len(), REQUESTS);
    let failed = statuses.iter().filter(|s| **s >= 500).count() as u64;
    let sent = REQUESTS as u64;

    let counted = |stats: &Value, service: &str| {
        stats["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["service"] == service))
            .map_or(0, |s| s["count"].as_u64().unwrap_or(0))
    };
    wait_for(&system, &format!("{sink}/v1/stats?window=5m"), |stats| {
        counted(stats, "catalog") >= sent && counted(stats, "gateway") >= sent
    })
    .await;
    // Nothing late arrives to count twice.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, stats) = get_json(&system, &format!("{sink}/v1/stats?window=5m")).await;
    for service in ["catalog", "gateway"] {
        let entry = stats["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == service)
            .unwrap();
        assert_eq!(entry["count"], sent, "{service}: {stats}");
        assert_eq!(entry["errors"], failed, "{service}: {stats}");
        let instances = entry["instances"].as_array().unwrap();
        let total: u64 = instances.iter().map(|i| i["count"].as_u64().unwrap()).sum();
        assert_eq!(total, sent, "{service}'s instances: {stats}");
        assert!(entry["p99_ms"].as_f64().unwrap() >= entry["p50_ms"].as_f64().unwrap());
    }
    let catalogs = stats["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "catalog")
        .unwrap()["instances"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(catalogs, 2, "{stats}");
    let (_, instances) = get_json(&system, &format!("{sink}/v1/instances?window=5m")).await;
    let catalog = instances["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "catalog")
        .unwrap();
    assert_eq!(catalog["count"], sent, "{instances}");
    let shares: u64 = catalog["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["count"].as_u64().unwrap())
        .sum();
    assert_eq!(shares, sent, "{instances}");
    // The edges: every request came from clients to the gateway, and went on to the catalog
    // (which knew the gateway by its certificate), and each listing read the catalog's file.
    // A catalog record whose gateway record was folded waits for it (links.rs, 10 s), then is
    // placed by the certificate.
    let edge = |topology: &Value, from: &str, to: &str| {
        topology["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["from"] == from && e["to"] == to)
            .map_or(0, |e| e["count"].as_u64().unwrap())
    };
    let edges = [
        ("clients", "gateway"),
        ("gateway", "catalog"),
        ("catalog", "catalog-db"),
    ];
    let topology_url = format!("{sink}/v1/topology?window=5m");
    let deadline = Instant::now() + Duration::from_secs(20);
    let topology = loop {
        let (_, topology) = get_json(&system, &topology_url).await;
        if edges.iter().all(|(f, t)| edge(&topology, f, t) >= sent) || Instant::now() > deadline {
            break topology;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (from, to) in edges {
        assert_eq!(
            edge(&topology, from, to),
            sent,
            "{from} -> {to}: {topology}"
        );
    }

    // Folding happened, at both reporters, and the sink merged it.
    let metrics_of = |url: String| {
        let client = system.client(&url).clone();
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let gateway = metrics_of(system.admin_url("/metrics")).await;
    let sink_metrics = metrics_of(format!("{sink}/metrics")).await;
    let mut catalog_folded = 0.0;
    let mut catalog_dropped = 0.0;
    let registered = system.registered("catalog").await;
    assert_eq!(registered.len(), 2);
    for instance in registered {
        let (address, port) = (&instance["address"], &instance["port"]);
        let url = support::mesh::internal_url(port.as_u64().unwrap() as u16, "/metrics");
        let url = url.replace("127.0.0.1", address.as_str().unwrap());
        let text = metrics_of(url).await;
        catalog_folded += support::metric_sum(&text, "events_folded_total", "queue_full");
        catalog_dropped += support::metric_sum(&text, "events_dropped_total", "") + 0.0;
    }
    let gateway_folded = support::metric_sum(&gateway, "events_folded_total", "");
    let merged = support::metric_sum(&sink_metrics, "events_summary_records_total", "");
    // Dropped (a batch that timed out, which the sink may still have stored: the counts above
    // are exact either way) is shown, not asserted: it depends on the machine's load.
    // (+ 0.0: an empty sum is -0.)
    let gateway_dropped = support::metric_sum(&gateway, "events_dropped_total", "") + 0.0;
    eprintln!(
        "folded: catalog {catalog_folded}, gateway {gateway_folded}; merged at the sink {merged}; \
         dropped: catalog {catalog_dropped}, gateway {gateway_dropped}"
    );
    assert!(catalog_folded > 0.0, "the catalog folded nothing");
    assert!(merged >= catalog_folded, "{sink_metrics}");
    assert!(support::metric_sum(&sink_metrics, "events_summaries_total", "") > 0.0);
    // Batches refused for lack of room in the writer's queue (folded by their reporters: the
    // counts above hold either way; the writer's unit test refuses one).
    assert!(
        sink_metrics.contains("events_batches_refused_total "),
        "{sink_metrics}"
    );
}

/// Records stored and records a reporter folded count together: `/v1/stats` over both equals a
/// recount of every record, counts exact and percentiles within 1% of the exact nearest-rank
/// ones, though half of them never reached the sink as records.
async fn stats_over_records_and_summaries_equal_a_recount() {
    let (system, sink) = edge_and_sink().await;
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let mut rng = stratus_kit::sketch::Rng(0xf01d);
    let mut expected: std::collections::BTreeMap<String, Vec<(bool, i64)>> = Default::default();
    let mut stored = Vec::new();
    let mut fold = stratus_kit::fold::Fold::default();
    for i in 0..4000u64 {
        let instance = format!("o-{}", rng.next() % 2);
        let ok = rng.next() % 9 != 0;
        let duration = rng.duration().max(1);
        let started = now_us - (rng.next() % 60_000_000) as i64;
        let r = hop(i + 1, i + 1, "orders", &instance, ok, duration, started);
        expected.entry(instance).or_default().push((ok, duration));
        if i % 2 == 0 {
            stored.push(r);
        } else {
            let record: stratus_kit::events::EventRecord = serde_json::from_value(r).unwrap();
            assert!(fold.add(&record.as_ref_with(1, i + 1, None, started)));
        }
    }
    post_records(&system, &sink, &stored).await;
    let merged = system
        .internal()
        .post(format!("{sink}/v1/summaries"))
        .header("content-type", stratus_kit::fold::CONTENT_TYPE)
        .body(fold.encode())
        .send()
        .await
        .unwrap();
    assert_eq!(merged.status(), 202);

    let (_, stats) = get_json(&system, &format!("{sink}/v1/stats?window=5m")).await;
    let orders = &stats["services"][0];
    assert_eq!(orders["service"], "orders", "{stats}");
    let all: Vec<(bool, i64)> = expected.values().flatten().copied().collect();
    check_summary(orders, &all, "orders");
    let instances = orders["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2, "{orders}");
    for instance in instances {
        let id = instance["instance"].as_str().unwrap();
        check_summary(instance, &expected[id], id);
    }
}

/// `POST /v1/summaries` refuses bad input whole with a problem, and a service may post only
/// its own summaries.
async fn bad_summaries_are_refused_and_change_nothing() {
    let (system, sink) = edge_and_sink().await;
    let url = format!("{sink}/v1/summaries");
    let summary = |service: &str, kind: &str| {
        let mut fold = stratus_kit::fold::Fold::default();
        let started_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        for duration_us in [1_000, 2_000, 3_000] {
            fold.add(&event_wire::RecordRef {
                service,
                kind,
                started_us,
                duration_us,
                ..binary_record(1)
            });
        }
        fold.encode()
    };
    let post = |client: reqwest::Client, body: Vec<u8>, content_type: &'static str| {
        let url = url.clone();
        async move {
            client
                .post(url)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let orders = support::mesh::client_as("orders");
    let typed = stratus_kit::fold::CONTENT_TYPE;
    let good = summary("orders", "server");
    let cut = post(orders.clone(), good[..good.len() - 2].to_vec(), typed).await;
    assert_refused(cut, 400, "entry 0").await;
    assert_refused(
        post(orders.clone(), b"SEV1".to_vec(), typed).await,
        400,
        "SSU1",
    )
    .await;
    let mut lying = good.clone();
    lying[4 + 16] = 200; // more errors than records
    assert_refused(
        post(orders.clone(), lying, typed).await,
        400,
        "counts disagree",
    )
    .await;
    let bad_kind = summary("orders", "internal");
    assert_refused(
        post(orders.clone(), bad_kind, typed).await,
        422,
        "entry 0: kind",
    )
    .await;
    let wrong_type = post(orders.clone(), good.clone(), "application/json").await;
    assert_eq!(wrong_type.status(), 415);
    let others = summary("payments", "server");
    assert_refused(post(orders.clone(), others, typed).await, 403, "payments").await;
    let (_, stats) = get_json(&system, &format!("{sink}/v1/stats?window=5m")).await;
    assert_eq!(
        stats["services"],
        json!([]),
        "nothing counted from bad summaries"
    );

    let accepted = post(orders, good, typed).await;
    assert_eq!(accepted.status(), 202);
    let body: Value = accepted.json().await.unwrap();
    assert_eq!(body, json!({"merged": 1, "records": 3}));
    let (_, stats) = get_json(&system, &format!("{sink}/v1/stats?window=5m")).await;
    assert_eq!(stats["services"][0]["service"], "orders");
    assert_eq!(stats["services"][0]["count"], 3);
    assert_eq!(stats["services"][0]["p50_ms"], 2.0);
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![
        Test::new(
            "services_report_every_request_to_the_sink",
            services_report_every_request_to_the_sink,
        ),
        Test::new(
            "a_sink_that_is_down_breaks_nothing",
            a_sink_that_is_down_breaks_nothing,
        ),
        Test::new(
            "every_process_reports_where_its_memory_goes",
            every_process_reports_where_its_memory_goes,
        ),
        Test::new(
            "the_sink_can_stop_and_restart_under_load",
            the_sink_can_stop_and_restart_under_load,
        ),
        Test::new(
            "the_stats_and_topology_equal_a_recount_and_survive_a_restart",
            the_stats_and_topology_equal_a_recount_and_survive_a_restart,
        ),
        Test::new(
            "a_flood_is_sampled_to_the_budget_and_errors_and_slow_traces_stay",
            a_flood_is_sampled_to_the_budget_and_errors_and_slow_traces_stay,
        ),
        Test::new(
            "bad_batches_are_refused_whole",
            bad_batches_are_refused_whole,
        ),
        Test::new(
            "every_request_is_counted_when_the_reporters_fold",
            every_request_is_counted_when_the_reporters_fold,
        ),
        Test::new(
            "stats_over_records_and_summaries_equal_a_recount",
            stats_over_records_and_summaries_equal_a_recount,
        ),
        Test::new(
            "bad_summaries_are_refused_and_change_nothing",
            bad_summaries_are_refused_and_change_nothing,
        ),
        Test::new("the_sink_works_on_postgres", the_sink_works_on_postgres)
            .needs(&[Need::Postgres]),
        Test::new(
            "a_flood_is_sampled_to_the_budget_on_postgres",
            a_flood_is_sampled_to_the_budget_on_postgres,
        )
        .needs(&[Need::Postgres]),
    ])
}
