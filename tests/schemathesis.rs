//! API fuzzing: schemathesis (PyPI) reads each service's OpenAPI document through the gateway,
//! generates requests from it (valid ones and deliberately invalid ones) and checks every answer:
//! no 5xx, status codes, content types, headers and bodies as the document says, invalid input
//! refused with a 4xx, operations that need a token refusing a request without one.
//!
//! Each service's document is fuzzed with an admin's token and with a customer's; the platform
//! APIs (the event sink, the registry, the gateway's admin API) directly on their own ports.
//! Every run has a bounded number of examples per operation (`STRATUS_SCHEMATHESIS_EXAMPLES`,
//! default 25) and a fixed seed (`STRATUS_SCHEMATHESIS_SEED`), so a run is repeatable and the
//! test stays within a few minutes.
//! Needs schemathesis (`pip install schemathesis`): reported ignored where it is missing, a
//! failure under CI (`.ci/run` installs it).

mod support;

use std::process::Command;
use std::time::Instant;

use stratus_testing::{Need, Test};
use support::System;

/// A system with every shop service: registry, auth, catalog, orders, payments, notifications,
/// profile, the gateway and an event sink they report to. Returns the sink's port.
async fn shop() -> (System, u16) {
    let events_port = support::free_port();
    let sink = support::mesh::internal_url(events_port, "");
    let mut extra: Vec<(&str, &str, String)> = ["auth", "catalog", "gateway"]
        .into_iter()
        .map(|service| (service, "STRATUS_EVENTS_URL", sink.clone()))
        .collect();
    // Fuzzing loads a small machine hard (argon2 on every signup and login): a /healthz answer
    // slower than the default 300 ms must not take the one auth instance out of rotation
    // mid-run, which the gateway would rightly answer with a 503 that is no fault of auth's.
    extra.push(("auth", "STRATUS_HEALTH_TIMEOUT", "2s".to_string()));
    extra.push(("auth", "STRATUS_HEALTH_INTERVAL", "2s".to_string()));
    let mut system = System::start_with(1, &extra).await;
    let port = events_port.to_string();
    system.spawn("events", &[("PORT", port.as_str())]);
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    system.wait_registered("events", 1).await;
    for service in ["orders", "payments", "notifications", "profile"] {
        system.spawn(service, &[]);
    }
    for service in ["orders", "payments", "notifications", "profile"] {
        system.wait_registered(service, 1).await;
        system.wait_gateway_sees(service, 1).await;
    }
    (system, events_port)
}

/// What one schemathesis run reported.
struct Run {
    label: String,
    passed: bool,
    summary: String,
}

/// Runs schemathesis against the document at `base` + `document` as `token`'s holder (no token
/// when empty), with `extra` arguments (operations to leave out).
fn fuzz(
    program: &[&str],
    system: &System,
    label: &str,
    (base, document): (&str, &str),
    token: &str,
    extra: &[&str],
) -> Run {
    let examples =
        std::env::var("STRATUS_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".to_string());
    let seed = std::env::var("STRATUS_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".to_string());
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/schemathesis/schemathesis.toml"
    );
    let mut command = Command::new(program[0]);
    command
        .args(&program[1..])
        .args(["--config-file", config, "run"])
        .arg(format!("{base}{document}"))
        .args(["--url", base]);
    if base.starts_with("https://") {
        // An internal port: as the operator, over mutual TLS. The server's certificate names a
        // service, not a host, so Python's host name check cannot apply (as with curl -k).
        let operator = support::mesh::operator_files();
        command
            .arg("--request-cert")
            .arg(&operator.cert)
            .arg("--request-cert-key")
            .arg(&operator.key)
            .args(["--tls-verify", "false"]);
    }
    if !token.is_empty() {
        command
            .arg("--header")
            .arg(format!("Authorization: Bearer {token}"));
    }
    let output = command
        .args(["--max-examples", examples.as_str(), "--seed", seed.as_str()])
        .args(["--phases", "examples,coverage,fuzzing"])
        // Every check but positive_data_acceptance: a request the document allows may still be
        // refused by a rule no schema can say (an unknown product id, a reused Idempotency-Key,
        // an app without redirect URIs), and such a refusal is a documented 4xx.
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args([
            "--generation-database",
            "none",
            "--no-color",
            // One worker: schemathesis's generator is not reliably thread-safe on every Python.
            "--workers",
            "1",
        ])
        .args(["--request-timeout", "10"])
        .args(extra)
        .current_dir(system.dir.path())
        .output()
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprintln!("==== schemathesis {label}: FAILED\n{stdout}\n{stderr}");
    }
    // The counts: operations selected and tested, test cases generated, passed, failed.
    let summary = stdout
        .lines()
        .map(str::trim)
        .filter(|line| {
            line.starts_with("Selected:")
                || line.starts_with("Tested:")
                || line.contains(" generated,")
        })
        .collect::<Vec<_>>()
        .join(", ");
    // An operation selected but never tested (schemathesis could not build a request for it)
    // would pass unnoticed: every operation a document names must be fuzzed.
    let tested_all = tested_every_selected(&stdout);
    if !tested_all {
        eprintln!("==== schemathesis {label}: not every selected operation was tested\n{stdout}");
    }
    Run {
        label: label.to_string(),
        passed: output.status.success() && tested_all,
        summary,
    }
}

/// Whether `Tested: N` equals the N of `Selected: N/M` in schemathesis's summary.
fn tested_every_selected(stdout: &str) -> bool {
    let count = |prefix: &str| {
        stdout.lines().map(str::trim).find_map(|line| {
            let digits = line.strip_prefix(prefix)?.trim_start();
            let end = digits
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(digits.len());
            digits[..end].parse::<usize>().ok()
        })
    };
    matches!((count("Selected:"), count("Tested:")), (Some(selected), Some(tested)) if selected == tested)
}

async fn every_document_holds_under_schemathesis_through_the_gateway() {
    let program = stratus_testing::needs::schemathesis();
    let (system, events_port) = shop().await;
    let admin = system.admin_token().await;
    let customer = system.customer_token("fuzz@example.com").await;
    // A product, so reads and orders have something real next to what is generated.
    let created = system
        .http
        .post(system.url("/api/catalog/products"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "Tea", "price_cents": 450, "stock": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let documents = [
        ("catalog", "/api/catalog/openapi.json"),
        ("profile", "/api/profile/openapi.json"),
        ("orders", "/api/orders/openapi.json"),
        ("payments", "/api/payments/openapi.json"),
        ("notifications", "/api/notifications/openapi.json"),
        // Auth last: it rotates signing keys and throttles the logins it fuzzes.
        ("auth", "/auth/openapi.json"),
    ];
    let gateway = system.url("");
    let started = Instant::now();
    let mut runs = Vec::new();
    for (service, document) in documents {
        let response = system.http.get(system.url(document)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{document} through the gateway");
        for (who, token) in [("customer", &customer), ("admin", &admin)] {
            let label = format!("{service} as {who}");
            // Blocking here is fine: every process it talks to is a process of its own.
            let target = (gateway.as_str(), document);
            // The gateway authorizes a route before the service sees the method, so a
            // customer's TRACE on an admin-only route is a 403, not the service's 405: the
            // unsupported-method check is for the admin's runs, which reach the service.
            let extra: &[&str] = match who {
                "customer" => &[
                    "--exclude-checks",
                    "positive_data_acceptance,unsupported_method",
                ],
                _ => &[],
            };
            runs.push(fuzz(program, &system, &label, target, token, extra));
        }
    }
    // The platform APIs, on their own ports: the sink, the registry and the gateway's admin API.
    // Left out: the streams (they never end), the sink's summaries (only a binary format, which
    // schemathesis cannot write: the `event_summary` fuzz target covers it) and the registry's
    // reads, whose blocking queries may wait minutes by design (their parameters are covered by
    // tests/bad_input.rs).
    let events = support::mesh::internal_url(events_port, "");
    let target = (events.as_str(), "/openapi.json");
    let skip_stream = [
        "--exclude-path",
        "/v1/stream",
        "--exclude-path",
        "/v1/logs/stream",
        "--exclude-path",
        "/v1/summaries",
    ];
    runs.push(fuzz(program, &system, "events", target, "", &skip_stream));
    let registry = system.registry_url();
    let target = (registry.as_str(), "/openapi.json");
    let skip_reads = ["--exclude-method", "GET"];
    runs.push(fuzz(program, &system, "registry", target, "", &skip_reads));
    // The gateway's admin API last: a split it manages to set would steer the routes above.
    let admin = system.admin_url("");
    let target = (admin.as_str(), "/openapi.json");
    runs.push(fuzz(program, &system, "gateway admin", target, "", &[]));
    for run in &runs {
        eprintln!(
            "schemathesis {}: {} {}",
            run.label,
            if run.passed { "ok" } else { "FAILED" },
            run.summary
        );
    }
    eprintln!(
        "schemathesis: {} runs in {:?}",
        runs.len(),
        started.elapsed()
    );
    let failed: Vec<&str> = runs
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.label.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "schemathesis found problems in: {failed:?} (details above)"
    );
}

fn a_run_that_tests_fewer_operations_than_it_selects_fails() {
    assert!(tested_every_selected("  Selected: 11/12\n  Tested: 11\n"));
    assert!(!tested_every_selected("Selected: 21/21\nTested: 18\n"));
    assert!(!tested_every_selected("no summary at all"));
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![
        Test::new(
            "every_document_holds_under_schemathesis_through_the_gateway",
            every_document_holds_under_schemathesis_through_the_gateway,
        )
        .needs(&[Need::Schemathesis]),
        Test::sync(
            "a_run_that_tests_fewer_operations_than_it_selects_fails",
            a_run_that_tests_fewer_operations_than_it_selects_fails,
        ),
    ])
}
