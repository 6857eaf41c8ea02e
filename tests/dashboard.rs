//! The dashboard in a real browser: with load running through the gateway, Chromium (driven by
//! playwright-core, tests/dashboard/dashboard.mjs) sees the gateway and the catalog in the
//! topology with figures that change, opens a trace into its waterfall and saves a screenshot.
//! And its logs (tests/dashboard/logs.mjs): an order for a product that does not exist, sent
//! with a known `traceparent`, leaves the gateway's and orders' lines that `GET /v1/logs` finds
//! by the trace, and the dashboard shows them in the logs view and under their spans in the
//! trace's waterfall, with a live tail; a screenshot of that too.
//!
//! Needs Chromium (`$CHROMIUM`, else /usr/bin/chromium) and Node.js with npm: where either is
//! missing the test is reported ignored, under CI it fails. `npm ci` runs in tests/dashboard
//! when its node_modules is missing (playwright-core, from package-lock.json).

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stratus_testing::{Need, Test};
use support::System;

/// tests/dashboard, with playwright-core installed from its lock file if it is not yet.
fn scripts() -> std::path::PathBuf {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard");
    if !scripts.join("node_modules/playwright-core").is_dir() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&scripts)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci in {} failed", scripts.display());
    }
    scripts
}

/// Runs `script` in tests/dashboard with `env` (and CHROMIUM), off the runtime's threads;
/// prints what it printed and fails the test if it failed.
async fn run_script(script: &'static str, env: Vec<(&'static str, String)>) {
    let (node, chromium, scripts) = (Need::Node.path(), Need::Chromium.path(), scripts());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(node)
            .arg(script)
            .current_dir(&scripts)
            .envs(env)
            .env("CHROMIUM", &chromium)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser check {script} failed:\n{stdout}\n{stderr}"
    );
}

async fn the_dashboard_shows_live_topology_and_traces() {
    let (system, events_port) = System::start_with_events(2, true).await;
    // The sink takes only operators; the browser goes through a proxy that is one, as it
    // does through `stratus up`'s dashboard port.
    let proxy = support::proxy::operator_proxy(support::mesh::internal_url(events_port, "")).await;
    let dashboard = format!("http://127.0.0.1:{proxy}/");
    let page = system.http.get(&dashboard).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/dashboard/app.js"));

    // Steady load through the gateway for as long as the browser looks.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (http, url) = (system.http.clone(), system.url("/api/catalog/products"));
        let (stop, served) = (stop.clone(), served.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let response = http
                    .get(&url)
                    .header("cache-control", "no-store")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                served.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    // And the sink ingesting as fast as it takes records (issue 23: the dashboard froze under
    // load): batches of 1,000 from three operator clients, for as long as the browser looks.
    // The page checks that a snapshot still comes every second.
    let stored = Arc::new(AtomicU64::new(0));
    let flood_started = std::time::Instant::now();
    for task in 0..3u64 {
        let (client, ingest) = (
            system.internal().clone(),
            support::mesh::internal_url(events_port, "/v1/events"),
        );
        let (stop, stored) = (stop.clone(), stored.clone());
        load.push(tokio::spawn(async move {
            let mut trace = task << 40;
            while !stop.load(Ordering::Relaxed) {
                let batch = flood_batch(&mut trace, 1_000);
                let response = client.post(&ingest).json(&batch).send().await.unwrap();
                assert_eq!(response.status(), 202);
                stored.fetch_add(1_000, Ordering::Relaxed);
            }
        }));
    }

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    run_script(
        "dashboard.mjs",
        vec![
            ("DASHBOARD_URL", dashboard),
            ("SCREENSHOT", screenshot.display().to_string()),
        ],
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    println!("screenshot: {}", screenshot.display());
    assert!(served.load(Ordering::Relaxed) > 0);
    let stored = stored.load(Ordering::Relaxed);
    println!(
        "the sink took {stored} flooded records, {:.0} a second, while the page looked",
        stored as f64 / flood_started.elapsed().as_secs_f64()
    );
    assert!(stored >= 10_000, "the flood hardly ran: {stored}");
}

/// Acceptance 1 of centralized logs, in the browser: a request that fails in orders, under a
/// known trace, leaves lines from the gateway and orders that the sink finds by the trace, and
/// the dashboard shows each under its span.
async fn the_dashboard_shows_a_failed_requests_lines_under_its_spans() {
    let trace = "7e57da5b0a2d4c1f9e8b6a4d2c0f1e3a";
    // The API first: both services' lines under the trace (the helper waits for them).
    let support::failed_order::FailedOrder { system, sink, .. } =
        support::failed_order::failed_order_under_trace(
            "grace@example.com",
            trace,
            "dashboard-no-such-product",
        )
        .await;
    let records = support::failed_order::records_of(&system, &sink, trace).await;
    let span_of = |service: &str, kind: &str| {
        records
            .iter()
            .find(|r| r["service"] == service && r["kind"] == kind)
            .and_then(|r| r["span_id"].as_str())
            .unwrap_or_else(|| panic!("no {service} {kind} record: {records:#?}"))
            .to_string()
    };
    let (gateway_span, orders_span) = (span_of("gateway", "gateway"), span_of("orders", "server"));

    // Requests the gateway logs (each a 404 from the catalog) while the browser looks, for
    // its live tail.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (http, stop) = (system.http.clone(), stop.clone());
        let url = system.url("/api/catalog/products/tail-");
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 2_000 {
                n += 1;
                let response = http
                    .get(format!("{url}{n}"))
                    .header("cache-control", "no-store")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 404);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        })
    };

    let proxy = support::proxy::operator_proxy(sink.clone()).await;
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-logs.png");
    run_script(
        "logs.mjs",
        vec![
            ("DASHBOARD_URL", format!("http://127.0.0.1:{proxy}/")),
            ("SCREENSHOT", screenshot.display().to_string()),
            ("TRACE", trace.to_string()),
            ("GATEWAY_SPAN", gateway_span),
            ("ORDERS_SPAN", orders_span),
        ],
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap();
    assert!(sent > 0);
    println!("screenshot: {}", screenshot.display());
}

/// `n` records of one-record traces, started now: what a busy system's reporters send.
fn flood_batch(trace: &mut u64, n: usize) -> Vec<serde_json::Value> {
    let now = stratus_events::record::format_micros(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64,
    );
    (0..n)
        .map(|_| {
            *trace += 1;
            serde_json::json!({
                "trace_id": format!("{:032x}", *trace),
                "span_id": format!("{:016x}", *trace),
                "service": "flood",
                "instance": "flood-1",
                "kind": "server",
                "name": "/flood",
                "status": 200,
                "ok": true,
                "started_at": now,
                "duration_us": 100 + *trace % 900
            })
        })
        .collect()
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![
        Test::new(
            "the_dashboard_shows_live_topology_and_traces",
            the_dashboard_shows_live_topology_and_traces,
        )
        .needs(&[Need::Chromium, Need::Node]),
        Test::new(
            "the_dashboard_shows_a_failed_requests_lines_under_its_spans",
            the_dashboard_shows_a_failed_requests_lines_under_its_spans,
        )
        .needs(&[Need::Chromium, Need::Node]),
    ])
}
