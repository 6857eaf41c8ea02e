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
                let response = http.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                served.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
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
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![Test::new(
        "the_dashboard_shows_live_topology_and_traces",
        the_dashboard_shows_live_topology_and_traces,
    )
    .needs(&[Need::Chromium, Need::Node])])
}
