//! Several hosts on one machine: each host a network namespace with its own address on a shared
//! bridge (`ip netns`, veth), so the registry, the catalogs and the gateway talk over a real
//! network rather than loopback, and a host can be cut off (a partition) and healed.
//!
//! ```text
//!   test client (root namespace, 10.x.y.1)
//!        │ bridge
//!   ├── control 10.x.y.11   registry, auth
//!   ├── web1    10.x.y.12   catalog
//!   ├── web2    10.x.y.13   catalog
//!   └── edge    10.x.y.14   gateway
//! ```
//!
//! What it shows (ARCHITECTURE.md, "Under partition"): the gateway routes around a catalog host
//! that is cut off without a failed GET; the registry forgets it and takes it back once healed;
//! with the registry's host cut off, the gateway keeps serving from its last view.
//!
//! Needs root and iproute2 (`ip`): reported ignored otherwise, a failure under CI.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use stratus_testing::{Need, Test};

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    assert!(ip(args), "ip {} failed", args.join(" "));
}

/// A bridge and one namespace per host; everything is deleted on drop.
struct Network {
    tag: String,
    subnet: String,
    hosts: Vec<String>,
}

impl Network {
    /// The bridge and the hosts' namespaces (the test declares `Need::NetworkNamespaces`).
    fn create(hosts: &[&str]) -> Network {
        let tag = format!("{}", std::process::id() % 100_000);
        let subnet = format!("10.203.{}", std::process::id() % 250 + 1);
        let network = Network {
            tag: tag.clone(),
            subnet: subnet.clone(),
            hosts: Vec::new(),
        };
        let bridge = network.bridge();
        must(&["link", "add", &bridge, "type", "bridge"]);
        must(&["addr", "add", &format!("{subnet}.1/24"), "dev", &bridge]);
        must(&["link", "set", &bridge, "up"]);
        let mut network = network;
        for (i, host) in hosts.iter().enumerate() {
            let namespace = network.namespace(host);
            must(&["netns", "add", &namespace]);
            network.hosts.push(host.to_string());
            let outside = network.outside(host);
            must(&[
                "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns",
                &namespace,
            ]);
            must(&["link", "set", &outside, "master", &bridge, "up"]);
            let address = format!("{subnet}.{}/24", 11 + i);
            must(&["-n", &namespace, "addr", "add", &address, "dev", "eth0"]);
            must(&["-n", &namespace, "link", "set", "eth0", "up"]);
            must(&["-n", &namespace, "link", "set", "lo", "up"]);
        }
        network
    }

    fn bridge(&self) -> String {
        format!("sbr{}", self.tag)
    }

    fn namespace(&self, host: &str) -> String {
        format!("stratus-{}-{host}", self.tag)
    }

    /// The root-side end of a host's cable.
    fn outside(&self, host: &str) -> String {
        let index = self
            .hosts
            .iter()
            .position(|h| h == host)
            .unwrap_or(self.hosts.len());
        format!("sv{}h{index}", self.tag)
    }

    fn address(&self, host: &str) -> String {
        let index = self.hosts.iter().position(|h| h == host).expect("a host");
        format!("{}.{}", self.subnet, 11 + index)
    }

    /// Unplugs a host's cable: its packets go nowhere (no refusal, no reset), as in a real
    /// partition.
    fn cut(&self, host: &str) {
        must(&["link", "set", &self.outside(host), "down"]);
    }

    fn heal(&self, host: &str) {
        must(&["link", "set", &self.outside(host), "up"]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in self.hosts.clone() {
            ip(&["link", "del", &self.outside(&host)]);
            ip(&["netns", "del", &self.namespace(&host)]);
        }
        ip(&["link", "del", &self.bridge()]);
    }
}

/// Stratus processes, each inside its host's namespace, with its own data directory (each host
/// its own disk).
struct Cluster {
    network: Network,
    dir: tempfile::TempDir,
    processes: Vec<Child>,
}

impl Cluster {
    fn start(&mut self, host: &str, component: &str, env: &[(&str, String)]) {
        let address = self.network.address(host);
        let data = self.dir.path().join(host);
        std::fs::create_dir_all(&data).unwrap();
        let log =
            std::fs::File::create(self.dir.path().join(format!("{host}-{component}.log"))).unwrap();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.network.namespace(host)])
            .arg(support::binary())
            .args(["serve", component])
            .envs(support::mesh::shared().env(component))
            .env("STRATUS_REGISTRY_URL", self.registry_url())
            .env("STRATUS_DATA_DIR", &data)
            .env("STRATUS_BIND", &address)
            .env("STRATUS_ADVERTISE_ADDRESS", &address)
            .env("STRATUS_LOG_FORMAT", "json")
            .env("STRATUS_ADMIN_PASSWORD", support::ADMIN_PASSWORD)
            .env("PORT", "0")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        self.processes
            .push(command.spawn().expect("starting stratus in a namespace"));
    }

    /// As configured (each process reaches it over mutual TLS all the same).
    fn registry_url(&self) -> String {
        format!("http://{}:8500", self.network.address("control"))
    }

    fn gateway_url(&self, path: &str) -> String {
        format!("http://{}:8080{path}", self.network.address("edge"))
    }

    fn logs(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failed run keeps its logs: the assertion message names this directory.
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
        }
    }
}

async fn wait_until<F, Fut>(what: &str, logs: &Path, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}; logs in {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The catalog instances the registry lists as passing.
async fn registered(http: &reqwest::Client, registry: &str) -> usize {
    let Ok(response) = http
        .get(format!("{registry}/v1/services/catalog"))
        .send()
        .await
    else {
        return usize::MAX;
    };
    let body: Value = response.json().await.unwrap_or(Value::Null);
    body["instances"].as_array().map_or(0, Vec::len)
}

/// Who served a GET through the gateway (`x-served-by`), or None when it failed.
async fn served_by(http: &reqwest::Client, url: &str) -> Option<String> {
    let response = http.get(url).send().await.ok()?;
    if response.status() != 200 {
        return None;
    }
    response
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// Waits until GETs through the gateway have been served by two different catalog instances.
async fn both_serving(http: &reqwest::Client, url: &str, logs: &Path) {
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 {
        if let Some(instance) = served_by(http, url).await {
            seen.insert(instance);
        }
        assert!(
            Instant::now() < deadline,
            "both catalog hosts never served (saw {seen:?}); logs in {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs in a loop until stopped; counts requests and failures.
fn load(http: reqwest::Client, url: String) -> (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) {
    let (sent, failed, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    for _ in 0..2 {
        let (http, url) = (http.clone(), url.clone());
        let (sent, failed, stop) = (sent.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            while stop.load(Ordering::SeqCst) == 0 {
                sent.fetch_add(1, Ordering::SeqCst);
                if served_by(&http, &url).await.is_none() {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    (sent, failed, stop)
}

async fn across_hosts_the_gateway_routes_around_a_partition_and_heals() {
    let network = Network::create(&["control", "web1", "web2", "edge"]);
    let mut cluster = Cluster {
        network,
        dir: tempfile::tempdir().unwrap(),
        processes: Vec::new(),
    };
    stratus_kit::install_crypto_provider();
    // The operator's client: plain HTTP to the gateway, mutual TLS to the registry.
    let http = support::mesh::operator_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    cluster.start("control", "registry", &[("PORT", "8500".into())]);
    let registry = cluster.registry_url().replacen("http://", "https://", 1);
    let logs = cluster.logs().to_path_buf();
    wait_until(
        "the registry answering",
        &logs,
        Duration::from_secs(30),
        || {
            let (http, url) = (http.clone(), format!("{registry}/readyz"));
            async move { http.get(url).send().await.is_ok_and(|r| r.status() == 200) }
        },
    )
    .await;
    cluster.start("control", "auth", &[]);
    cluster.start("web1", "catalog", &[]);
    cluster.start("web2", "catalog", &[]);
    // A per-try timeout and retries: a request on a kept-alive connection to a host that has
    // gone silent is tried again elsewhere after one second.
    let routes = cluster.dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        "[[routes]]\nprefix = \"/api/catalog\"\nservice = \"catalog\"\nauth = \"none\"\ntimeout = \"1s\"\nretries = 2\n",
    )
    .unwrap();
    cluster.start(
        "edge",
        "gateway",
        &[
            ("PORT", "8080".into()),
            ("STRATUS_ADMIN_PORT", "8081".into()),
            ("STRATUS_ROUTES", routes.display().to_string()),
        ],
    );
    let url = cluster.gateway_url("/api/catalog/products");

    // Both catalog hosts serve through the gateway host.
    both_serving(&http, &url, &logs).await;

    let (sent, failed, stop) = load(http.clone(), url.clone());
    let mut table = vec![];
    let mut mark = |name: &str, since: (u64, u64)| {
        let row = (
            name.to_string(),
            sent.load(Ordering::SeqCst) - since.0,
            failed.load(Ordering::SeqCst) - since.1,
        );
        table.push(row);
        (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
    };
    let start = (0, 0);

    // web1 is cut off: no refusal, no reset, just silence. The gateway's connect timeout and
    // passive checks route around it; the registry drops it when its heartbeats stop.
    cluster.network.cut("web1");
    let cut_at = Instant::now();
    wait_until(
        "the registry forgetting web1",
        &logs,
        Duration::from_secs(15),
        || {
            let (http, registry) = (http.clone(), registry.clone());
            async move { registered(&http, &registry).await == 1 }
        },
    )
    .await;
    let forgotten = cut_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_cut = mark("web1 cut off", start);

    // Healed: web1's next heartbeat finds itself unknown and registers again.
    cluster.network.heal("web1");
    wait_until(
        "web1 back in the registry",
        &logs,
        Duration::from_secs(15),
        || {
            let (http, registry) = (http.clone(), registry.clone());
            async move { registered(&http, &registry).await == 2 }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_heal = mark("web1 healed", after_cut);

    // The registry's host is cut off: the gateway keeps its last view and keeps serving.
    cluster.network.cut("control");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after_control = mark("registry host cut off", after_heal);
    cluster.network.heal("control");
    tokio::time::sleep(Duration::from_secs(2)).await;
    mark("registry host healed", after_control);
    stop.store(1, Ordering::SeqCst);

    println!("\n{:<24} {:>6} {:>6}", "scenario", "GETs", "failed");
    for (name, requests, failures) in &table {
        println!("{name:<24} {requests:>6} {failures:>6}");
    }
    println!("web1 left the registry {forgotten:?} after its cable was cut");
    for (name, requests, failures) in &table {
        assert!(*requests > 20, "{name}: too little load to mean anything");
        assert_eq!(
            *failures,
            0,
            "{name}: GETs failed; logs in {}",
            logs.display()
        );
    }
    // And after it all, both hosts serve again.
    both_serving(&http, &url, &logs).await;
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![Test::new(
        "across_hosts_the_gateway_routes_around_a_partition_and_heals",
        across_hosts_the_gateway_routes_around_a_partition_and_heals,
    )
    .worker_threads(2)
    .needs(&[Need::NetworkNamespaces])])
}
