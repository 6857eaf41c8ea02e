//! The dashboard in a real browser: with load running through the gateway, Chromium (driven by
//! playwright-core, tests/dashboard/dashboard.mjs) sees the gateway and the catalog in the
//! topology with figures that change, opens a trace into its waterfall and saves a screenshot.
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

async fn the_dashboard_shows_live_topology_and_traces() {
    let chromium = Need::Chromium.path();
    let node = Need::Node.path();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard");
    if !scripts.join("node_modules/playwright-core").is_dir() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&scripts)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci in {} failed", scripts.display());
    }

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
    let output = tokio::task::spawn_blocking(move || {
        Command::new(node)
            .arg("dashboard.mjs")
            .current_dir(&scripts)
            .env("DASHBOARD_URL", &dashboard)
            .env("SCREENSHOT", &screenshot)
            .env("CHROMIUM", &chromium)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser check failed:\n{stdout}\n{stderr}"
    );
    println!(
        "screenshot: {}",
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("dashboard.png")
            .display()
    );
    assert!(served.load(Ordering::Relaxed) > 0);
    let stored = stored.load(Ordering::Relaxed);
    println!(
        "the sink took {stored} flooded records, {:.0} a second, while the page looked",
        stored as f64 / flood_started.elapsed().as_secs_f64()
    );
    assert!(stored >= 10_000, "the flood hardly ran: {stored}");
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
    stratus_testing::run(vec![Test::new(
        "the_dashboard_shows_live_topology_and_traces",
        the_dashboard_shows_live_topology_and_traces,
    )
    .needs(&[Need::Chromium, Need::Node])])
}
