//! The dashboard in a real browser: with load running through the gateway, Chromium (driven by
//! playwright-core, tests/dashboard/dashboard.mjs) sees the gateway and the catalog in the
//! topology with figures that change, opens a trace into its waterfall and saves a screenshot.
//!
//! Needs `chromium` (Debian) and `node`; outside CI the test is skipped when either is missing,
//! under `CI=true` it fails. `npm ci` runs in tests/dashboard when its node_modules is missing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::System;

fn found(program: &str) -> Option<PathBuf> {
    let path = Path::new(program);
    if path.is_absolute() {
        return path.is_file().then(|| path.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[tokio::test]
async fn the_dashboard_shows_live_topology_and_traces() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let Some(chromium) = support::servers::require("chromium", found(&chromium)) else {
        return;
    };
    let Some(node) = support::servers::require("node", found("node")) else {
        return;
    };
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
    let dashboard = format!("http://127.0.0.1:{events_port}/");
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
