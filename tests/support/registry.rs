//! Registry processes on their own (no system around them), and the clients tests use on them:
//! JSON calls, blocking queries and the server-sent-events watch. Each registry runs with mutual
//! TLS required and the test binary's authority (`super::mesh::shared`); the tests call it as
//! an operator.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{binary, free_port, Process};

pub struct Registry {
    pub port: u16,
    pub process: Process,
    pub http: reqwest::Client,
}

impl Registry {
    /// Starts `stratus serve registry` with `STRATUS_REGISTRY_STORE=store`, logging to
    /// `<dir>/<name>.log`, and waits until it is ready.
    pub async fn start(name: &str, store: &str, dir: &Path) -> Registry {
        Self::start_on(name, store, dir, free_port()).await
    }

    /// Like [`Registry::start`], on a given port (to bring a registry back where it was). The
    /// log is appended to, so a restarted registry's log follows its predecessor's.
    pub async fn start_on(name: &str, store: &str, dir: &Path, port: u16) -> Registry {
        Self::start_with(name, store, dir, port, &[]).await
    }

    /// Like [`Registry::start_on`], with more environment (`STRATUS_REGISTRY_CHANGE_RING`, say).
    pub async fn start_with(
        name: &str,
        store: &str,
        dir: &Path,
        port: u16,
        env: &[(&str, &str)],
    ) -> Registry {
        stratus_kit::install_crypto_provider();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
            .unwrap();
        let child = Command::new(binary())
            .args(["serve", "registry"])
            .env("PORT", port.to_string())
            .env("STRATUS_REGISTRY_STORE", store)
            // Registries driven by hand hold instances that never heartbeat, so no warm-up: the
            // catalog is settled from the start (restarts with warming: tests/discovery.rs).
            .env("STRATUS_REGISTRY_WARMUP", "0s")
            .env("STRATUS_DATA_DIR", dir)
            .env("STRATUS_LOG_FORMAT", "json")
            .env("STRATUS_LOG", "info")
            .envs(super::mesh::shared().env("registry"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting stratus serve registry");
        let registry = Registry {
            port,
            process: Process {
                name: name.into(),
                child,
                instance_id: name.into(),
            },
            http: super::mesh::shared().operator_with_timeout(Duration::from_secs(30)),
        };
        registry.wait_ready(Duration::from_secs(30)).await;
        registry
    }

    pub fn url(&self, path: &str) -> String {
        super::mesh::internal_url(self.port, path)
    }

    pub async fn readyz(&self) -> u16 {
        match self.http.get(self.url("/readyz")).send().await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.readyz().await != 200 {
            assert!(
                Instant::now() < deadline,
                "registry {} never became ready",
                self.process.name
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Registers `service/id` on `port` with a lease of `ttl` seconds; returns the status.
    pub async fn register(&self, service: &str, id: &str, port: u16, ttl: f64) -> u16 {
        self.http
            .put(self.url(&format!("/v1/services/{service}/instances/{id}")))
            .json(&json!({"address": "127.0.0.1", "port": port, "ttl_seconds": ttl}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn catalog(&self) -> Value {
        let response = self
            .http
            .get(self.url("/v1/services"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// `GET /v1/services/<service>`.
    pub async fn service(&self, service: &str) -> Value {
        let response = self
            .http
            .get(self.url(&format!("/v1/services/{service}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// The ids of `service`'s instances, sorted.
    pub async fn ids(&self, service: &str) -> Vec<String> {
        let response = self
            .http
            .get(self.url(&format!("/v1/services/{service}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        instance_ids(&body["instances"])
    }

    /// Opens the server-sent-events watch.
    pub async fn events(&self) -> Events {
        let response = self
            .http
            .get(self.url("/v1/watch"))
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Events {
            response,
            buffer: String::new(),
        }
    }
}

/// The ids in a JSON array of instances, sorted.
pub fn instance_ids(instances: &Value) -> Vec<String> {
    let mut ids: Vec<String> = instances
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// A reader of `text/event-stream`.
pub struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    /// The next `catalog` event's data as JSON; panics if none comes within `within`.
    pub async fn next_catalog(&mut self, within: Duration) -> Value {
        tokio::time::timeout(within, self.next_catalog_inner())
            .await
            .expect("a catalog event in time")
    }

    async fn next_catalog_inner(&mut self) -> Value {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut kind = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        kind = if value.trim() == "catalog" {
                            "catalog"
                        } else {
                            "other"
                        };
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if kind == "catalog" {
                    return serde_json::from_str(&data).expect("catalog JSON in the event");
                }
            }
            let chunk = self
                .response
                .chunk()
                .await
                .expect("reading the event stream")
                .expect("the event stream ended");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// A blocking query on one service is not woken by changes to another, and is woken at once by
/// a change to its own; the index it gets back is that service's (`watched` and `writer` may be
/// two registries on one etcd). The whole-catalog query still wakes on any change.
pub async fn one_service_watch_wakes_for_that_service_only(writer: &Registry, watched: &Registry) {
    assert_eq!(writer.register("alpha", "a1", 9101, 60.0).await, 201);
    let alpha = watched.service("alpha").await;
    let index = alpha["index"].as_u64().unwrap();
    let catalog_index = watched.catalog().await["index"].as_u64().unwrap();
    let blocked = |url: String| {
        let http = watched.http.clone();
        tokio::spawn(async move {
            let response = http.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            (response.json::<Value>().await.unwrap(), Instant::now())
        })
    };
    let on_alpha = blocked(watched.url(&format!("/v1/services/alpha?index={index}&wait=60s")));
    let on_catalog = blocked(watched.url(&format!("/v1/services?index={catalog_index}&wait=60s")));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 50 changes to beta: registrations, then deregistrations.
    for n in 0..25 {
        assert_eq!(
            writer
                .register("beta", &format!("b{n}"), 9200 + n, 60.0)
                .await,
            201
        );
    }
    for n in 0..25 {
        let deleted = writer
            .http
            .delete(writer.url(&format!("/v1/services/beta/instances/b{n}")))
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 204);
    }
    let (catalog, _) = tokio::time::timeout(Duration::from_secs(5), on_catalog)
        .await
        .expect("the whole-catalog query wakes on beta's changes")
        .unwrap();
    assert!(catalog["index"].as_u64().unwrap() > catalog_index);
    // Long enough for the last of beta's changes to have reached every waiter.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !on_alpha.is_finished(),
        "50 changes to beta woke a watcher of alpha"
    );
    assert_eq!(
        watched.service("alpha").await["index"],
        index,
        "alpha's index moved with beta"
    );

    let changed = Instant::now();
    assert_eq!(writer.register("alpha", "a2", 9102, 60.0).await, 201);
    let (answer, at) = tokio::time::timeout(Duration::from_secs(5), on_alpha)
        .await
        .expect("a change to alpha wakes its watcher")
        .unwrap();
    let woke = at.duration_since(changed);
    assert!(
        woke < Duration::from_secs(1),
        "alpha's watcher woke {woke:?} after its change"
    );
    assert_eq!(instance_ids(&answer["instances"]), ["a1", "a2"]);
    let now = watched.service("alpha").await;
    assert!(answer["index"].as_u64().unwrap() > index);
    assert_eq!(
        answer["index"], now["index"],
        "the index returned is alpha's"
    );
    assert!(
        now["index"].as_u64() < watched.catalog().await["index"].as_u64().map(|i| i + 1),
        "a service's index is a registry index, never ahead of it"
    );
}

/// The value of `name{labels}` on the registry's /metrics (0 when it is not there yet).
pub async fn counter(registry: &Registry, name: &str, labels: &str) -> f64 {
    let text = registry
        .http
        .get(registry.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    super::metric_sum(&text, name, labels)
}

/// 20 watchers of the catalog and 20 of one service, woken by one change, get byte-equal
/// answers, and each answer is encoded once (`registry_answer_encodings_total`).
pub async fn one_change_is_encoded_once_for_every_watcher(registry: &Registry) {
    const WATCHERS: usize = 20;
    for n in 0..30 {
        assert_eq!(
            registry
                .register("catalog", &format!("c{n}"), 9000 + n, 60.0)
                .await,
            201
        );
    }
    let catalog_index = registry.catalog().await["index"].as_u64().unwrap();
    let service_index = registry.service("catalog").await["index"].as_u64().unwrap();
    let metric = "registry_answer_encodings_total";
    let catalogs = counter(registry, metric, "answer=\"catalog\"").await;
    let services = counter(registry, metric, "answer=\"service\"").await;
    assert!(
        catalogs >= 1.0 && services >= 1.0,
        "the reads above were encoded"
    );

    let mut watchers = Vec::new();
    for n in 0..2 * WATCHERS {
        let url = if n % 2 == 0 {
            registry.url(&format!("/v1/services?index={catalog_index}&wait=30s"))
        } else {
            registry.url(&format!(
                "/v1/services/catalog?index={service_index}&wait=30s"
            ))
        };
        let http = registry.http.clone();
        watchers.push(tokio::spawn(async move {
            let response = http.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "application/json");
            response.bytes().await.unwrap()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(registry.register("catalog", "new", 9100, 60.0).await, 201);
    let mut answers = Vec::new();
    for watcher in watchers {
        answers.push(
            tokio::time::timeout(Duration::from_secs(5), watcher)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let (on_catalog, on_service): (Vec<_>, Vec<_>) = answers
        .into_iter()
        .enumerate()
        .partition(|(n, _)| n % 2 == 0);
    for group in [&on_catalog, &on_service] {
        let first = &group[0].1;
        assert!(
            group.iter().all(|(_, answer)| answer == first),
            "watchers got different bytes"
        );
        let json: Value = serde_json::from_slice(first).unwrap();
        let instances = json
            .get("instances")
            .unwrap_or(&json["services"]["catalog"]);
        assert_eq!(instances.as_array().unwrap().len(), 31);
    }
    assert_eq!(
        counter(registry, metric, "answer=\"catalog\"").await - catalogs,
        1.0,
        "{WATCHERS} watchers of the catalog, one encoding"
    );
    assert_eq!(
        counter(registry, metric, "answer=\"service\"").await - services,
        1.0,
        "{WATCHERS} watchers of one service, one encoding"
    );
    // The same answer read again is not encoded again.
    assert!(registry.catalog().await["services"]["catalog"].is_array());
    assert_eq!(
        counter(registry, metric, "answer=\"catalog\"").await - catalogs,
        1.0
    );
}

/// `GET /v1/services?services=alpha,gamma`: only those services, and a blocking query on them
/// is woken by their changes only (`watched` and `writer` may be two registries on one etcd).
pub async fn part_of_the_catalog_wakes_for_its_services_only(
    writer: &Registry,
    watched: &Registry,
) {
    assert_eq!(writer.register("alpha", "a1", 9101, 60.0).await, 201);
    assert_eq!(writer.register("beta", "b1", 9201, 60.0).await, 201);
    let part = |index: Option<u64>| {
        let query = match index {
            Some(index) => format!("services=alpha,gamma&index={index}&wait=60s"),
            None => "services=alpha,gamma".to_string(),
        };
        let http = watched.http.clone();
        let url = watched.url(&format!("/v1/services?{query}"));
        tokio::spawn(async move {
            let response = http.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        })
    };
    let first = part(None).await.unwrap();
    let names: Vec<&String> = first["services"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["alpha"], "only the named services (gamma has none)");
    let index = first["index"].as_u64().unwrap();

    let blocked = part(Some(index));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 0..20 {
        assert_eq!(
            writer
                .register("beta", &format!("b{n}x"), 9300 + n, 60.0)
                .await,
            201
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !blocked.is_finished(),
        "changes to beta woke a query on alpha and gamma"
    );
    assert_eq!(writer.register("gamma", "g1", 9401, 60.0).await, 201);
    let answer = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .expect("a change to gamma wakes it")
        .unwrap();
    assert!(answer["index"].as_u64().unwrap() > index);
    assert_eq!(instance_ids(&answer["services"]["gamma"]), ["g1"]);
    assert!(answer["services"].get("beta").is_none());

    // Index 0 is "nothing seen yet": answered at once, even for services that never changed.
    for path in [
        "/v1/services?services=never-changed&index=0&wait=30s",
        "/v1/services/never-changed?index=0&wait=30s",
    ] {
        let asked = Instant::now();
        let answer = watched.http.get(watched.url(path)).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert!(asked.elapsed() < Duration::from_secs(5), "{path} waited");
    }

    // Names are checked.
    let bad = watched
        .http
        .get(watched.url("/v1/services?services=alpha,Not%20A%20Name"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
