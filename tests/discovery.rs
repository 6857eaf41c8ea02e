//! Service discovery's health and client side: active health checks in the registry, the kit's
//! client-side discovery, and routing that carries on (fail static) while the registry is down.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use stratus_kit::discovery::Discovery;
use stratus_kit::registry_client::RegistryClient;
use support::registry::{instance_ids, Registry};
use support::System;

/// A backend of `shop` whose `/healthz` answers 200 or 503 as `healthy` says; returns its port.
async fn switchable_backend(healthy: Arc<AtomicBool>) -> u16 {
    let app = Router::new()
        .route(
            "/healthz",
            get(move || {
                let healthy = healthy.clone();
                async move {
                    if healthy.load(Ordering::SeqCst) {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        )
        .fallback(|| async { "switchable" });
    support::backend::serve_app(Some("shop"), app).await
}

/// Whether the registry lists catalog instance `id` (`true`) or not (`false`), as `expected`.
async fn is_listed(system: &System, id: &str, expected: bool) -> bool {
    let listed = system
        .registered("catalog")
        .await
        .iter()
        .any(|i| i["id"] == id);
    listed == expected
}

async fn put_registration(registry: &Registry, service: &str, id: &str, body: Value) -> u16 {
    registry
        .http
        .put(registry.url(&format!("/v1/services/{service}/instances/{id}")))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls `check` every 10 ms until it holds; panics after `within`. Returns the time it took.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_failing_check_hides_an_instance_from_lists_and_watchers_until_it_passes() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    let healthy = Arc::new(AtomicBool::new(true));
    let port = switchable_backend(healthy.clone()).await;
    let other = support::backend::start("shop", "steady", Duration::ZERO).await;
    let checked = json!({"address": "127.0.0.1", "port": port, "ttl_seconds": 60,
        "check": {"http": "/healthz"}, "interval": "200ms", "timeout": "100ms"});
    assert_eq!(
        put_registration(&registry, "shop", "flaky", checked).await,
        201
    );
    let steady = json!({"address": "127.0.0.1", "port": other, "ttl_seconds": 60,
        "check": {"tcp": true}, "interval": "200ms"});
    assert_eq!(
        put_registration(&registry, "shop", "steady", steady).await,
        201
    );
    assert_eq!(registry.ids("shop").await, ["flaky", "steady"]);
    let service: Value = registry
        .http
        .get(registry.url("/v1/services/shop"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(service["instances"][0]["health"], "passing");

    let mut events = registry.events().await;
    events.next_catalog(Duration::from_secs(5)).await;
    let index = registry.catalog().await["index"].as_u64().unwrap();
    let blocking = {
        let http = registry.http.clone();
        let url = registry.url(&format!("/v1/services?index={index}&wait=30s"));
        tokio::spawn(async move {
            let started = Instant::now();
            let _ = http.get(url).send().await;
            started.elapsed()
        })
    };

    healthy.store(false, Ordering::SeqCst);
    let r = &registry;
    let took = eventually(Duration::from_secs(3), "leaving the list", || async move {
        r.ids("shop").await == ["steady"]
    })
    .await;
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let woke = blocking.await.unwrap();
    assert!(
        woke < Duration::from_secs(2),
        "the blocking query waited {woke:?}"
    );
    // Every event stream drops it too (a warning comes first, then the critical one is gone).
    loop {
        let catalog = events.next_catalog(Duration::from_secs(5)).await;
        if instance_ids(&catalog["services"]["shop"]) == ["steady"] {
            break;
        }
    }
    assert_eq!(
        instance_ids(&registry.catalog().await["services"]["shop"]),
        ["steady"]
    );

    healthy.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(3), "coming back", || async move {
        r.ids("shop").await == ["flaky", "steady"]
    })
    .await;
    loop {
        let catalog = events.next_catalog(Duration::from_secs(5)).await;
        if instance_ids(&catalog["services"]["shop"]).len() == 2 {
            break;
        }
    }
}

/// A gRPC-only instance declares `{"grpc": ""}`: the registry asks gRPC's health service over
/// HTTP/2, lists the instance while it says SERVING and hides it while NOT_SERVING.
#[tokio::test]
async fn a_grpc_check_asks_the_standard_health_service() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    // Four steady instances, so the failing checks below (at most three) are those instances'
    // failures and not a sign of the registry being cut off (which would make it hold every
    // verdict).
    for id in ["steady-1", "steady-2", "steady-3", "steady-4"] {
        let port = support::backend::start("rpc", "steady", Duration::ZERO).await;
        let steady = json!({"address": "127.0.0.1", "port": port, "ttl_seconds": 60,
            "check": {"tcp": true}, "interval": "100ms"});
        assert_eq!(put_registration(&registry, "rpc", id, steady).await, 201);
    }
    let serving = Arc::new(std::sync::atomic::AtomicU8::new(1));
    let port = support::backend::start_grpc_health("rpc", serving.clone()).await;
    let checked = json!({"address": "127.0.0.1", "port": port, "ttl_seconds": 60,
        "check": {"grpc": ""}, "interval": "100ms"});
    assert_eq!(
        put_registration(&registry, "rpc", "grpc-only", checked).await,
        201
    );
    // The same server checked over HTTP/1.1 cannot answer: it is hidden within a few probes.
    let asked_wrongly = json!({"address": "127.0.0.1", "port": port, "ttl_seconds": 60,
        "check": {"http": "/healthz"}, "interval": "100ms"});
    assert_eq!(
        put_registration(&registry, "rpc", "asked-wrongly", asked_wrongly).await,
        201
    );
    // A gRPC server that says SERVING with another service's certificate: the probe goes over
    // mutual TLS and checks whom it reached, so it is hidden as well.
    let impostor = support::backend::start_grpc_health("impostor", serving.clone()).await;
    let impostor = json!({"address": "127.0.0.1", "port": impostor, "ttl_seconds": 60,
        "check": {"grpc": ""}, "interval": "100ms"});
    assert_eq!(
        put_registration(&registry, "rpc", "impostor", impostor).await,
        201
    );
    let r = &registry;
    let steady = ["steady-1", "steady-2", "steady-3", "steady-4"];
    let all = ["grpc-only", "steady-1", "steady-2", "steady-3", "steady-4"];
    eventually(
        Duration::from_secs(3),
        "the HTTP-checked one and the impostor hidden",
        || async move { r.ids("rpc").await == all },
    )
    .await;
    // A few more rounds: the gRPC-checked one stays listed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(registry.ids("rpc").await, all);

    serving.store(2, Ordering::SeqCst);
    eventually(
        Duration::from_secs(3),
        "NOT_SERVING hidden",
        || async move { r.ids("rpc").await == steady },
    )
    .await;
    serving.store(1, Ordering::SeqCst);
    eventually(Duration::from_secs(3), "SERVING again", || async move {
        r.ids("rpc").await == all
    })
    .await;
}

#[tokio::test]
async fn bad_checks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    for check in [
        json!({"check": {"http": "healthz"}}),
        json!({"check": {"http": "/healthz"}, "interval": "5ms"}),
        json!({"check": {"http": "/healthz"}, "interval": "1s", "timeout": "2s"}),
        json!({"check": {"http": "/healthz"}, "interval": "often"}),
        json!({"check": {"tcp": false}}),
        json!({"check": {"grpc": 5}}),
        json!({"check": {"grpc": "two words"}}),
        json!({"check": {"sql": "SELECT 1"}}),
        json!({"interval": "1s"}),
    ] {
        let mut body = json!({"address": "127.0.0.1", "port": 9});
        body.as_object_mut()
            .unwrap()
            .extend(check.as_object().unwrap().clone());
        let status = put_registration(&registry, "shop", "bad", body).await;
        assert!((400..500).contains(&status), "{check}: {status}");
    }
    assert!(registry.ids("shop").await.is_empty());
}

#[tokio::test]
async fn a_killed_instance_leaves_discovery_within_a_second() {
    a_killed_instance_leaves_discovery(System::start(2).await).await;
}

/// With the mesh off the registry probes with its own HTTP/1.1 client on a kept connection; a
/// killed instance's kept connection is reset, and the fresh one is refused.
#[tokio::test]
async fn a_killed_instance_leaves_discovery_within_a_second_in_plaintext() {
    a_killed_instance_leaves_discovery(System::start_plaintext(2).await).await;
}

async fn a_killed_instance_leaves_discovery(mut system: System) {
    let victim = system.process("catalog", 0).instance_id.clone();
    system.process("catalog", 0).kill9();
    let took = eventually(Duration::from_secs(3), "the dead instance leaving", || {
        is_listed(&system, &victim, false)
    })
    .await;
    // The target is under a second; the margin is for a busy test machine.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    system.wait_gateway_sees("catalog", 1).await;
}

#[tokio::test]
async fn a_stopped_instance_leaves_discovery_and_comes_back() {
    a_stopped_instance_leaves_and_comes_back(System::start(2).await).await;
}

/// In plaintext a frozen instance's kept probe connection takes the request and never answers:
/// the probe times out, twice, and passes again once the instance runs.
#[tokio::test]
async fn a_stopped_instance_leaves_discovery_and_comes_back_in_plaintext() {
    a_stopped_instance_leaves_and_comes_back(System::start_plaintext(2).await).await;
}

async fn a_stopped_instance_leaves_and_comes_back(mut system: System) {
    let victim = system.process("catalog", 0).instance_id.clone();
    system.process("catalog", 0).signal(libc::SIGSTOP);
    let took = eventually(
        Duration::from_secs(4),
        "the stopped instance leaving",
        || is_listed(&system, &victim, false),
    )
    .await;
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    system.process("catalog", 0).signal(libc::SIGCONT);
    eventually(Duration::from_secs(10), "the instance coming back", || {
        is_listed(&system, &victim, true)
    })
    .await;
}

#[tokio::test]
async fn the_kit_client_keeps_routing_while_the_registry_is_down() {
    let metrics = stratus_kit::metrics::install();
    // The kit's clients go over the mesh, as in any Stratus process.
    support::mesh::join_test_process("tester");
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start("registry", "memory", dir.path()).await;
    let a = support::backend::start("shop", "a", Duration::ZERO).await;
    let b = support::backend::start("shop", "b", Duration::ZERO).await;
    assert_eq!(registry.register("shop", "a", a, 600.0).await, 201);
    assert_eq!(registry.register("shop", "b", b, 600.0).await, 201);

    let client = RegistryClient::new(registry.url("")).unwrap();
    let discovery = Discovery::start(client, Duration::from_secs(2)).unwrap();
    assert!(discovery.wait_for("shop", 2, Duration::from_secs(5)).await);
    assert!(discovery.registry_up());

    registry.process.kill9();
    let d = &discovery;
    eventually(
        Duration::from_secs(5),
        "noticing the registry is down",
        || async move { !d.registry_up() },
    )
    .await;
    let mut served = Vec::new();
    for _ in 0..20 {
        let response = discovery
            .get("shop", "/anything")
            .await
            .expect("fail static");
        assert_eq!(response.status(), 200);
        served.push(response.text().await.unwrap());
    }
    assert!(served.contains(&"a".to_string()) && served.contains(&"b".to_string()));
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The gauge is the process's: another test's Discovery in this process, whose registry is
    // up, sets it to 1 now and then, while this one sets 0 at each failed retry (at least
    // once a second). So wait to see this one's 0 rather than read it once.
    let m = &metrics;
    eventually(
        Duration::from_secs(5),
        "discovery_registry_up 0",
        || async move { m.render().contains("discovery_registry_up 0") },
    )
    .await;
    let rendered = metrics.render();
    assert!(
        rendered.contains("discovery_view_age_seconds"),
        "{rendered}"
    );
    assert!(discovery.view_age().unwrap() >= Duration::from_millis(500));

    let port = registry.port;
    let registry = Registry::start_on("registry", "memory", dir.path(), port).await;
    let c = support::backend::start("shop", "c", Duration::ZERO).await;
    assert_eq!(registry.register("shop", "c", c, 600.0).await, 201);
    eventually(
        Duration::from_secs(5),
        "seeing the new instance",
        || async move { d.instances("shop").iter().any(|i| i.id == "c") },
    )
    .await;
    assert!(discovery.registry_up());
    // `a` and `b` were registered by hand and never come back: the view converges to what the
    // restarted registry really holds.
    eventually(
        Duration::from_secs(15),
        "the view converging",
        || async move {
            let instances = d.instances("shop");
            instances.len() == 1 && instances[0].id == "c"
        },
    )
    .await;
    let response = discovery.get("shop", "/anything").await.unwrap();
    assert_eq!(response.text().await.unwrap(), "c");
}

#[tokio::test]
async fn the_gateway_keeps_routing_while_the_registry_is_down() {
    let mut system = System::start(2).await;
    system.process("registry", 0).kill9();
    for i in 0..40 {
        let response = system
            .http
            .get(system.url("/api/catalog/products"))
            .header("cache-control", "no-store")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {i} with the registry down");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Back on the same port: the instances find out from their next heartbeat and register
    // again by themselves.
    let port = system.registry_port.to_string();
    system.spawn("registry", &[("PORT", port.as_str())]);
    system
        .wait_http_ok(&format!("{}/readyz", system.registry_url()))
        .await;
    system.wait_registered("catalog", 2).await;
    system.wait_registered("auth", 1).await;

    let newcomer = system.spawn("catalog", &[]).instance_id.clone();
    system.wait_registered("catalog", 3).await;
    system.wait_gateway_sees("catalog", 3).await;
    let expected = format!("catalog/{newcomer}");
    let started = Instant::now();
    loop {
        let response = system
            .http
            .get(system.url("/api/catalog/products"))
            .header("cache-control", "no-store")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        if response.headers()["x-served-by"] == expected.as_str() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new instance got no traffic"
        );
    }
}

/// Requests through the gateway, counted, until `stop` is set.
async fn load(http: reqwest::Client, url: String, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let mut sent = 0;
    let mut failures = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        sent += 1;
        match http.get(&url).send().await {
            Ok(response) if response.status() == 200 => {}
            Ok(response) => failures.push(format!("{}", response.status())),
            Err(error) => failures.push(error.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (sent, failures)
}

/// The slow heartbeater's registration: a 60 s lease (so it renews rarely).
async fn register_slow(system: &System, port: u16) -> u16 {
    system
        .internal()
        .put(format!(
            "{}/v1/services/slow/instances/hand",
            system.registry_url()
        ))
        .json(&json!({"address": "127.0.0.1", "port": port, "ttl_seconds": 60}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_registry_restart_under_load_fails_no_request_and_converges() {
    // Besides the catalogs (which heartbeat every second), a service `slow` whose one instance
    // renews its lease rarely, so it comes back to a restarted registry only at its next
    // heartbeat, well after the restart: the view without it must never be adopted.
    let routes = tempfile::NamedTempFile::new().unwrap();
    let table = format!(
        "{}\n[[routes]]\nname = \"slow\"\nprefix = \"/api/slow\"\nservice = \"slow\"\nauth = \"none\"\n",
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/stratus.toml")).unwrap()
    );
    std::fs::write(routes.path(), table).unwrap();
    let extra = [(
        "gateway",
        "STRATUS_ROUTES",
        routes.path().display().to_string(),
    )];
    let mut system = System::start_with(2, &extra).await;
    let slow = support::backend::start("slow", "slow", Duration::ZERO).await;
    assert_eq!(register_slow(&system, slow).await, 201);
    system.wait_gateway_sees("slow", 1).await;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = [
        tokio::spawn(load(
            system.http.clone(),
            system.url("/api/catalog/products"),
            stop.clone(),
        )),
        tokio::spawn(load(
            system.http.clone(),
            system.url("/api/slow/anything"),
            stop.clone(),
        )),
    ];
    // A kit client follows the same registry; the smallest view it holds is recorded.
    support::mesh::join_test_process("tester");
    let discovery = Discovery::start(
        RegistryClient::new(system.registry_url()).unwrap(),
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(
        discovery
            .wait_for("catalog", 2, Duration::from_secs(5))
            .await
    );
    assert!(discovery.wait_for("slow", 1, Duration::from_secs(5)).await);
    let discovery = Arc::new(discovery);
    let smallest = {
        let discovery = discovery.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut smallest = (usize::MAX, usize::MAX);
            while !stop.load(Ordering::SeqCst) {
                smallest.0 = smallest.0.min(discovery.instances("catalog").len());
                smallest.1 = smallest.1.min(discovery.instances("slow").len());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            smallest
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    system.process("registry", 0).kill9();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let port = system.registry_port.to_string();
    system.spawn("registry", &[("PORT", port.as_str())]);
    system
        .wait_http_ok(&format!("{}/readyz", system.registry_url()))
        .await;
    // Straight after the restart the registry is empty, and says it is warming.
    let fresh: Value = system
        .internal()
        .get(format!("{}/v1/services", system.registry_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fresh["warming"], true, "{fresh}");

    // The catalogs re-register by themselves (a heartbeat answered 404, or a failed one, makes
    // them). The slow instance's next heartbeat comes 2 s later: a 404, so it registers again.
    system.wait_registered("catalog", 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let beat = system
        .internal()
        .put(format!(
            "{}/v1/services/slow/instances/hand/heartbeat",
            system.registry_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(beat.status(), 404);
    assert_eq!(register_slow(&system, slow).await, 201);

    // The registry settles once its warm-up is over, and every view converges on it.
    let registry = &system.registry_url();
    let http = system.internal();
    eventually(
        Duration::from_secs(15),
        "the registry settling",
        || async move {
            let body: Value = match http.get(format!("{registry}/v1/services")).send().await {
                Ok(response) => response.json().await.unwrap_or_default(),
                Err(_) => return false,
            };
            body.get("warming").is_none()
                && body["services"]["catalog"].as_array().map(Vec::len) == Some(2)
        },
    )
    .await;
    system.wait_gateway_sees("catalog", 2).await;
    system.wait_gateway_sees("slow", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for (what, task) in ["catalog", "slow"].into_iter().zip(traffic) {
        let (sent, failures) = task.await.unwrap();
        assert!(sent > 50, "only {sent} requests to {what}");
        assert!(
            failures.is_empty(),
            "{} of {sent} requests to {what} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }
    let smallest = smallest.await.unwrap();
    assert_eq!(
        smallest,
        (2, 1),
        "the kit client's view shrank during the restart"
    );
    assert_eq!(discovery.instances("catalog").len(), 2);
    assert_eq!(discovery.instances("slow").len(), 1);
}

/// The sum of `name`'s samples on the registry's /metrics.
async fn registry_metric(system: &System, name: &str) -> f64 {
    let url = format!("{}/metrics", system.registry_url());
    let text = system
        .client(&url)
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    support::metric_sum(&text, name, "")
}

/// The gateway follows the registry's incremental watch: cut off from the registry (its
/// connections dropped, new ones refused) it keeps routing, and once the network is back it
/// resumes from the index its view is at: the change it missed arrives as a change, with no
/// snapshot of the whole view again.
#[tokio::test]
async fn the_gateway_resumes_the_registry_watch_after_a_partition_without_a_snapshot() {
    let registry_port = support::free_port();
    let hop = support::cut::Cuttable::to(registry_port).await;
    let via_hop = support::mesh::internal_url(hop.port, "");
    let extra = [("gateway", "STRATUS_REGISTRY_URL", via_hop)];
    let mut system = System::start_with_registry_on(1, &extra, registry_port).await;
    let snapshots = registry_metric(&system, "registry_watch_snapshots_total").await;
    let deltas = registry_metric(&system, "registry_watch_deltas_sent_total").await;
    assert!(
        snapshots >= 1.0,
        "the gateway's watch began with a snapshot"
    );

    hop.cut();
    system.spawn("catalog", &[]);
    system.wait_registered("catalog", 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = system
        .http
        .get(system.url("/api/catalog/products"))
        .header("cache-control", "no-store")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "cut off, the gateway routes with what it had"
    );

    hop.restore();
    system.wait_gateway_sees("catalog", 2).await;
    assert_eq!(
        registry_metric(&system, "registry_watch_snapshots_total").await,
        snapshots,
        "the gateway resumed with a snapshot, not from its index"
    );
    assert!(registry_metric(&system, "registry_watch_deltas_sent_total").await > deltas);
}

/// The kit's discovery follows the registry's incremental watch: one snapshot, then each new
/// instance arrives as a change.
#[tokio::test]
async fn the_kit_client_follows_the_incremental_watch() {
    support::mesh::join_test_process("tester");
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    assert_eq!(registry.register("shop", "a", 9001, 600.0).await, 201);
    let client = RegistryClient::new(registry.url("")).unwrap();
    let discovery = Discovery::start(client, Duration::from_secs(2)).unwrap();
    assert!(discovery.wait_for("shop", 1, Duration::from_secs(5)).await);
    let metric = |name: &'static str| support::registry::counter(&registry, name, "");
    let snapshots = metric("registry_watch_snapshots_total").await;
    let deltas = metric("registry_watch_deltas_sent_total").await;
    assert_eq!(snapshots, 1.0, "one watcher, one snapshot");

    for (n, id) in ["b", "c"].into_iter().enumerate() {
        assert_eq!(
            registry.register("shop", id, 9002 + n as u16, 600.0).await,
            201
        );
    }
    assert!(discovery.wait_for("shop", 3, Duration::from_secs(5)).await);
    assert_eq!(
        metric("registry_watch_deltas_sent_total").await - deltas,
        2.0
    );
    assert_eq!(metric("registry_watch_snapshots_total").await, snapshots);
}

/// A kit client that names the services it calls follows only those: another service's
/// changes are neither sent to it nor in its view.
#[tokio::test]
async fn the_kit_client_follows_only_the_services_it_calls() {
    support::mesh::join_test_process("tester");
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    assert_eq!(registry.register("shop", "a", 9001, 600.0).await, 201);
    assert_eq!(registry.register("other", "x", 9101, 600.0).await, 201);
    let client = RegistryClient::new(registry.url("")).unwrap();
    let discovery =
        Discovery::start_for(client, vec!["shop".into()], Duration::from_secs(2)).unwrap();
    assert!(discovery.wait_for("shop", 1, Duration::from_secs(5)).await);
    assert!(discovery.instances("other").is_empty(), "not followed");
    let metric = |name: &'static str| support::registry::counter(&registry, name, "");
    let deltas = metric("registry_watch_deltas_sent_total").await;

    for n in 0..5u16 {
        let id = format!("y{n}");
        assert_eq!(registry.register("other", &id, 9102 + n, 600.0).await, 201);
    }
    assert_eq!(registry.register("shop", "b", 9002, 600.0).await, 201);
    assert!(discovery.wait_for("shop", 2, Duration::from_secs(5)).await);
    assert_eq!(
        metric("registry_watch_deltas_sent_total").await - deltas,
        1.0,
        "only shop's change was sent"
    );
    assert!(discovery.instances("other").is_empty());
}
