//! DNS as the discovery source: a gateway and a kit client that take their instances from
//! `stratus serve dns` (SRV records) instead of the registry API, and drop a killed instance
//! within the detection time.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use stratus_kit::discovery::Discovery;
use stratus_kit::dns_discovery::DnsSettings;
use support::{free_port, System};

/// Polls `check` every 20 ms until it holds; panics after `within`. Returns the time it took.
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How the DNS source names an instance in `x-served-by`: its address and port.
fn served_by(port: u64) -> String {
    format!("catalog/127.0.0.1-{port}")
}

/// The number of `catalog` instances the gateway on `admin_port` routes to.
async fn gateway_sees(http: &reqwest::Client, admin_port: u16) -> Option<usize> {
    let response = http
        .get(support::mesh::internal_url(admin_port, "/v1/upstreams"))
        .send()
        .await
        .ok()?;
    let body: Value = response.json().await.ok()?;
    body["services"]["catalog"].as_array().map(Vec::len)
}

#[tokio::test]
async fn the_gateway_and_the_kit_client_follow_dns() {
    let mut system = System::start(2).await;
    let dns_port = free_port();
    let dns_port_text = dns_port.to_string();
    system.spawn("dns", &[("PORT", dns_port_text.as_str())]);
    let dns_server = format!("127.0.0.1:{dns_port}");

    // A second gateway, which knows the registry only for its own registration and JWKS: its
    // upstreams come from DNS.
    let (port, admin_port) = (free_port(), free_port());
    let (port_text, admin_text) = (port.to_string(), admin_port.to_string());
    system.spawn(
        "gateway",
        &[
            ("PORT", port_text.as_str()),
            ("STRATUS_ADMIN_PORT", admin_text.as_str()),
            ("STRATUS_DISCOVERY", "dns"),
            ("STRATUS_DNS_SERVER", dns_server.as_str()),
            ("STRATUS_DNS_REFRESH", "1s"),
        ],
    );
    system
        .wait_http_ok(&system.internal_url(admin_port, "/readyz"))
        .await;

    // The kit client in DNS mode, asking for the one service it calls (over the mesh, as in
    // any Stratus process).
    support::mesh::join_test_process("tester");
    let settings = DnsSettings {
        server: dns_server.parse().unwrap(),
        template: "{service}.service.stratus".into(),
        default_port: 80,
        refresh: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
    };
    let discovery =
        Discovery::start_dns(settings, vec!["catalog".into()], Duration::from_secs(2)).unwrap();
    assert!(
        discovery
            .wait_for("catalog", 2, Duration::from_secs(10))
            .await,
        "the kit client never found both catalog instances through DNS"
    );
    assert!(discovery.registry_up());

    // Both instances take traffic through the DNS-fed gateway.
    let registered = system.registered("catalog").await;
    let expected: BTreeSet<String> = registered
        .iter()
        .map(|i| served_by(i["port"].as_u64().unwrap()))
        .collect();
    let url = format!("http://127.0.0.1:{port}/api/catalog/products");
    let mut seen = BTreeSet::new();
    let started = Instant::now();
    while seen != expected {
        let response = system
            .http
            .get(&url)
            .header("cache-control", "no-store")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        seen.insert(
            response.headers()["x-served-by"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        assert!(seen.is_subset(&expected), "{seen:?} vs {expected:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "only {seen:?} answered"
        );
    }
    // So does the kit client.
    let mut answered = BTreeSet::new();
    for _ in 0..4 {
        answered.insert(discovery.pick("catalog").unwrap().port);
    }
    assert_eq!(answered.len(), 2, "round robin over both");
    for _ in 0..4 {
        let response = discovery.get("catalog", "/healthz").await.unwrap();
        assert_eq!(response.status(), 200);
    }

    // Kill one: it leaves DNS with the registry's health check, then each follower's next round.
    let victim = system.process("catalog", 0).instance_id.clone();
    let victim_port = registered
        .iter()
        .find(|i| i["id"] == victim.as_str())
        .and_then(|i| i["port"].as_u64())
        .unwrap();
    system.process("catalog", 0).kill9();
    let killed = Instant::now();
    let d = &discovery;
    eventually(
        Duration::from_secs(5),
        "the kit client dropping the killed instance",
        || async move {
            let instances = d.instances("catalog");
            instances.len() == 1 && instances[0].port as u64 != victim_port
        },
    )
    .await;
    let client_took = killed.elapsed();
    let http = &system.http;
    eventually(
        Duration::from_secs(5),
        "the gateway dropping the killed instance",
        || async move { gateway_sees(http, admin_port).await == Some(1) },
    )
    .await;
    let gateway_took = killed.elapsed();
    eprintln!("killed instance gone: kit client {client_took:?}, gateway {gateway_took:?}");
    // Detection (about 0.6 s) plus one refresh (1 s); the margin is for a busy machine.
    assert!(client_took < Duration::from_millis(3000), "{client_took:?}");
    assert!(
        gateway_took < Duration::from_millis(3000),
        "{gateway_took:?}"
    );
    for _ in 0..10 {
        let response = system
            .http
            .get(&url)
            .header("cache-control", "no-store")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_ne!(
            response.headers()["x-served-by"],
            served_by(victim_port).as_str()
        );
    }

    // DNS goes away: both keep the last answer (fail static) and say the source is down.
    let dns = system
        .processes
        .iter()
        .position(|p| p.name == "dns")
        .unwrap();
    system.processes[dns].kill9();
    eventually(
        Duration::from_secs(5),
        "the kit client noticing DNS is gone",
        || async move { !d.registry_up() },
    )
    .await;
    assert_eq!(discovery.instances("catalog").len(), 1);
    assert_eq!(
        discovery.get("catalog", "/healthz").await.unwrap().status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let response = system
        .http
        .get(&url)
        .header("cache-control", "no-store")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the gateway routes with its last answer"
    );
    assert_eq!(gateway_sees(&system.http, admin_port).await, Some(1));
}
