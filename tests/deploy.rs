//! Deployment strategies through a real gateway: a weighted canary, A/B routing by header and
//! cookie, a blue-green switch (through the admin API and through the route file) under load with
//! no failed request, and the automatic rollback of a canary that answers 500.
//!
//! The backends are small HTTP servers that answer with their name; each is registered with the
//! version it stands for, as `STRATUS_VERSION` makes a Stratus service register.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{backend, System};

fn write(path: &std::path::Path, text: &str) {
    // Write then rename, as editors and config tools do, so the gateway never reads half a file.
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// Registers a test backend as an instance of `service` running `version`.
async fn register(system: &System, service: &str, name: &'static str, version: &str, port: u16) {
    let response = system
        .internal()
        .put(format!(
            "{}/v1/services/{service}/instances/{name}",
            system.registry_url()
        ))
        .json(
            &json!({"address": "127.0.0.1", "port": port, "version": version, "ttl_seconds": 600}),
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "registering {name}");
}

/// An edge (registry + gateway) with `routes` as its route file, and `backends` registered as
/// instances of `web`: (name, version, answer status).
async fn edge(routes: &str, backends: &[(&'static str, &str, u16)]) -> (System, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    write(&file, routes);
    let system = System::start_edge(Some(&file)).await;
    for (name, version, status) in backends {
        let port = match status {
            200 => backend::start("web", name, Duration::ZERO).await,
            status => backend::start_with_status("web", name, *status).await,
        };
        register(&system, "web", name, version, port).await;
    }
    system.wait_gateway_sees("web", backends.len()).await;
    (system, dir)
}

fn admin(system: &System, path: &str) -> String {
    system.admin_url(path)
}

async fn get(system: &System, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = system.http.get(system.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Sends `total` requests to `path`, `concurrency` at a time; counts the answers by body.
async fn spread(
    system: &System,
    path: &str,
    total: usize,
    concurrency: usize,
) -> Vec<(String, usize)> {
    let next = Arc::new(AtomicUsize::new(0));
    let counts = Arc::new(Mutex::new(
        std::collections::BTreeMap::<String, usize>::new(),
    ));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url) = (system.http.clone(), system.url(path));
        let (next, counts) = (next.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let response = http.get(&url).send().await.unwrap();
                let key = format!(
                    "{} {}",
                    response.status().as_u16(),
                    response.text().await.unwrap()
                );
                *counts.lock().unwrap().entry(key).or_insert(0) += 1;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let counts = counts.lock().unwrap();
    counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_at_ten_percent_gets_ten_percent_of_ten_thousand_requests() {
    let (system, _dir) = edge(
        "[[routes]]\nname = \"web\"\nprefix = \"/\"\nservice = \"web\"\nauth = \"none\"\n\
         split = { stable = \"1.0\", canary = \"1.1\", canary_weight = 10 }\n",
        &[
            ("stable-a", "1.0", 200),
            ("stable-b", "1.0", 200),
            ("canary", "1.1", 200),
        ],
    )
    .await;
    let counts = spread(&system, "/x", 10_000, 16).await;
    let count = |key: &str| counts.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v);
    let canary = count("200 canary");
    let stable = count("200 stable-a") + count("200 stable-b");
    assert_eq!(
        canary + stable,
        10_000,
        "every request answered: {counts:?}"
    );
    assert!(
        (800..=1200).contains(&canary),
        "the canary got {canary} of 10,000: {counts:?}"
    );
    // Stable traffic is still balanced over both stable instances.
    assert!(
        count("200 stable-a").abs_diff(count("200 stable-b")) < 200,
        "{counts:?}"
    );
    eprintln!("canary share: {canary} of 10,000 ({counts:?})");
    let report: Value = system
        .internal()
        .get(admin(&system, "/v1/routes/web/split"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The gateway's own count of canary answers agrees with what the clients saw.
    let counted = report["requests"]["canary"]["total"].as_u64().unwrap();
    assert!(counted.abs_diff(canary as u64) <= 5, "{report}");
    assert_eq!(report["source"], "file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_b_routing_by_header_and_cookie_is_deterministic() {
    let (system, _dir) = edge(
        "[[routes]]\nname = \"web\"\nprefix = \"/\"\nservice = \"web\"\nauth = \"none\"\n\
         split = { stable = \"1.0\", canary = \"2.0\", canary_header = \"x-variant: b\", canary_cookie = \"variant=b\" }\n",
        &[("a-1", "1.0", 200), ("a-2", "1.0", 200), ("b", "2.0", 200)],
    )
    .await;
    for i in 0..200 {
        assert_eq!(
            get(&system, "/x", &[("x-variant", "b")]).await,
            (200, "b".into()),
            "request {i}"
        );
        assert_eq!(
            get(&system, "/x", &[("cookie", "theme=dark; variant=b")]).await,
            (200, "b".into()),
            "request {i}"
        );
        let (status, body) = get(&system, "/x", &[]).await;
        assert!(
            status == 200 && body.starts_with("a-"),
            "request {i}: {body}"
        );
        let (status, body) = get(
            &system,
            "/x",
            &[("x-variant", "a"), ("cookie", "variant=bb")],
        )
        .await;
        assert!(
            status == 200 && body.starts_with("a-"),
            "request {i}: {body}"
        );
    }
}

/// Requests in a loop from several tasks until stopped: counts failures and the answers seen.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    answered: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(system: &System, path: &str, concurrency: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicUsize::new(0));
        let tasks = (0..concurrency)
            .map(|_| {
                let (http, url) = (system.http.clone(), system.url(path));
                let (stop, failures, answered) = (stop.clone(), failures.clone(), answered.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match http.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {
                                let _ = r.text().await;
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failures
                                .lock()
                                .unwrap()
                                .push(format!("status {}", r.status())),
                            Err(e) => failures.lock().unwrap().push(format!("{e}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            failures,
            answered,
            tasks,
        }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.answered.load(Ordering::Relaxed), failures)
    }
}

/// Waits until every one of 20 requests in a row is answered by `color`.
async fn wait_for_color(system: &System, color: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = true;
        for _ in 0..20 {
            all &= get(system, "/x", &[]).await == (200, color.to_string());
        }
        if all {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "traffic never moved to {color}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_through_the_admin_api_and_the_route_file_with_no_failed_request() {
    let route = |stable: &str| {
        format!(
            "[[routes]]\nname = \"web\"\nprefix = \"/\"\nservice = \"web\"\nauth = \"none\"\n\
             split = {{ stable = \"{stable}\" }}\n"
        )
    };
    let (system, dir) = edge(
        &route("blue"),
        &[("blue", "blue", 200), ("green", "green", 200)],
    )
    .await;
    let file = dir.path().join("routes.toml");
    wait_for_color(&system, "blue", Duration::from_secs(1)).await;
    let load = Load::start(&system, "/x", 6);

    // Through the admin API: in force by the time the PUT answers.
    let put = |stable: &'static str| {
        system
            .internal()
            .put(admin(&system, "/v1/routes/web/split"))
            .json(&json!({"stable": stable}))
            .send()
    };
    assert_eq!(put("green").await.unwrap().status(), 200);
    wait_for_color(&system, "green", Duration::from_millis(100)).await;
    assert_eq!(put("blue").await.unwrap().status(), 200);
    wait_for_color(&system, "blue", Duration::from_millis(100)).await;

    // Through the route file: the reload swaps the table atomically.
    write(&file, &route("green"));
    let took = wait_for_color(&system, "green", Duration::from_secs(3)).await;
    eprintln!("blue-green switch through the route file took {took:?}");
    write(&file, &route("blue"));
    wait_for_color(&system, "blue", Duration::from_secs(3)).await;

    let (answered, failures) = load.finish().await;
    assert!(answered > 100, "the load loop ran: {answered}");
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        answered,
        &failures[..failures.len().min(5)]
    );
    eprintln!("blue-green: {answered} requests during four switches, 0 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answering_500_is_rolled_back_automatically() {
    let (system, _dir) = edge(
        "[[routes]]\nname = \"web\"\nprefix = \"/\"\nservice = \"web\"\nauth = \"none\"\n\
         split = { stable = \"1.0\", canary = \"1.1\", canary_weight = 10, max_error_rate = 0.05, window = \"10s\", min_requests = 20 }\n",
        &[("stable", "1.0", 200), ("broken", "1.1", 500)],
    )
    .await;
    // Traffic until the canary is rolled back; the first 500 a client sees starts the clock.
    let started = Instant::now();
    let mut first_error: Option<Instant> = None;
    let rolled_back = loop {
        let (status, body) = get(&system, "/x", &[]).await;
        match (status, body.as_str()) {
            (200, "stable") => {}
            (500, "broken") => {
                first_error.get_or_insert_with(Instant::now);
            }
            other => panic!("unexpected answer {other:?}"),
        }
        let report: Value = system
            .internal()
            .get(admin(&system, "/v1/routes/web/split"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if report["source"] == "rollback" {
            break report;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never rolled back: {report}"
        );
    };
    let took = first_error.expect("the canary got traffic").elapsed();
    eprintln!(
        "failing canary rolled back {took:?} after the first 500 a client saw: {rolled_back}"
    );
    assert!(took < Duration::from_secs(10), "rollback took {took:?}");
    let rollback = &rolled_back["last_rollback"];
    assert_eq!(rollback["reason"], "error_rate");
    assert_eq!(rollback["canary"], "1.1");
    assert!(
        rollback["error_rate"].as_f64().unwrap() > 0.05,
        "{rollback}"
    );
    assert!(rolled_back["split"]["canary"].is_null(), "{rolled_back}");

    // From now on every request goes to stable.
    for i in 0..100 {
        assert_eq!(
            get(&system, "/x", &[]).await,
            (200, "stable".into()),
            "request {i}"
        );
    }
    let metrics = system
        .internal()
        .get(admin(&system, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gateway_canary_rollbacks_total{route=\"web\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("canary"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_bad_splits_and_changes_nothing() {
    let (system, _dir) = edge(
        "[[routes]]\nname = \"web\"\nprefix = \"/\"\nservice = \"web\"\nauth = \"none\"\n",
        &[("one", "1.0", 200), ("two", "2.0", 200)],
    )
    .await;
    let split = admin(&system, "/v1/routes/web/split");
    for (body, status) in [
        (json!({"stable": "1.0", "canary": "1.0"}), 422),
        (json!({"stable": "1.0", "canary_weight": 10}), 422),
        (json!({"stable": "1.0", "colour": "red"}), 422),
        (json!({"canary": "2.0"}), 422),
    ] {
        let response = system
            .internal()
            .put(&split)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let response = system
        .internal()
        .put(&split)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let unchanged: Value = system
        .internal()
        .get(&split)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(unchanged["split"].is_null(), "{unchanged}");
    let unknown = system
        .internal()
        .put(admin(&system, "/v1/routes/nope/split"))
        .json(&json!({"stable": "1.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let nothing_to_roll_back = system
        .internal()
        .post(admin(&system, "/v1/routes/web/rollback"))
        .send()
        .await
        .unwrap();
    assert_eq!(nothing_to_roll_back.status(), 409);

    // A canary set through the API, then rolled back by hand.
    let response = system
        .internal()
        .put(&split)
        .json(&json!({"stable": "1.0", "canary": "2.0", "canary_weight": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(get(&system, "/x", &[]).await, (200, "two".into()));
    let rolled: Value = system
        .internal()
        .post(admin(&system, "/v1/routes/web/rollback"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rolled["last_rollback"]["reason"], "manual");
    for _ in 0..10 {
        assert_eq!(get(&system, "/x", &[]).await, (200, "one".into()));
    }
    let deleted = system.internal().delete(&split).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    let counts = spread(&system, "/x", 20, 1).await;
    assert_eq!(counts.len(), 2, "both versions again: {counts:?}");
}
