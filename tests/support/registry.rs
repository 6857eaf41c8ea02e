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
