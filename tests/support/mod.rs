//! Test harness: starts real Stratus processes (the `stratus` binary) on free loopback ports,
//! each with its own data directory, and stops them when dropped.

#![allow(dead_code)]

pub mod backend;
pub mod cut;
pub mod deltas;
pub mod failed_order;
pub mod mesh;
pub mod proxy;
pub mod registry;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN_EMAIL: &str = "admin@stratus.local";
pub const ADMIN_PASSWORD: &str = "test-admin-password";

/// A free port for a process that must listen on a known port (registry, gateway): from a range
/// that processes binding port 0 never get, see there.
pub use stratus_testing::free_port;

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_stratus")
}

pub struct Process {
    pub name: String,
    pub child: Child,
    pub instance_id: String,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running system: registry, auth, N catalogs and a gateway.
pub struct System {
    pub dir: tempfile::TempDir,
    pub registry_port: u16,
    pub gateway_port: u16,
    pub admin_port: u16,
    pub processes: Vec<Process>,
    /// Plain HTTP to the gateway's public port; to an internal port (https, with mutual TLS
    /// on) it goes as the operator, as an administrator's tools would.
    pub http: reqwest::Client,
    /// With mutual TLS on (every system but a plaintext one): the authority's files, join
    /// credentials, the operator's client.
    pub mesh: Option<Arc<mesh::TestMesh>>,
}

/// The test's client: the operator's under mutual TLS (plain http URLs go out plain all the
/// same), else a plain one.
fn client_for(mesh: Option<&mesh::TestMesh>) -> reqwest::Client {
    match mesh {
        Some(mesh) => mesh.operator_with_timeout(Duration::from_secs(10)),
        None => reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    }
}

/// Whose certificate authority a system's processes use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// The test binary's one authority ([`mesh::shared`]).
    Shared,
    /// An authority of the system's own, in its data directory (a test that rotates its root).
    Own,
    /// None: `STRATUS_MTLS=off`, plaintext inside.
    Off,
}

impl Trust {
    fn mesh(self, dir: &std::path::Path) -> Option<Arc<mesh::TestMesh>> {
        let mesh = match self {
            Trust::Shared => mesh::shared(),
            Trust::Own => Arc::new(mesh::TestMesh::init(dir, false)),
            Trust::Off => return None,
        };
        // The trust bundle where `up` leaves it, `<data dir>/identity/bundle.pem`, for
        // programs started by hand that look for it there.
        let bundle = dir.join("identity").join("bundle.pem");
        if !bundle.exists() {
            std::fs::create_dir_all(bundle.parent().unwrap()).unwrap();
            std::fs::write(&bundle, mesh.bundle()).unwrap();
        }
        Some(mesh)
    }
}

impl System {
    /// A system whose every internal hop is mutual TLS (`STRATUS_MTLS=required`), as
    /// `stratus up` runs it; the test's internal calls go out as an operator.
    pub async fn start(catalogs: usize) -> System {
        Self::start_with(catalogs, &[]).await
    }

    /// Starts a system whose services get extra environment: `(service, variable, value)`.
    pub async fn start_with(catalogs: usize, extra: &[(&str, &str, String)]) -> System {
        Self::start_system(catalogs, extra, Trust::Shared).await
    }

    /// The same as [`System::start`] (every system is meshed); kept for tests that say so.
    pub async fn start_meshed(catalogs: usize) -> System {
        Self::start(catalogs).await
    }

    /// The same as [`System::start_with`].
    pub async fn start_meshed_with(catalogs: usize, extra: &[(&str, &str, String)]) -> System {
        Self::start_with(catalogs, extra).await
    }

    /// As [`System::start_with`], with a certificate authority of the system's own (a test
    /// that rotates the root must not rotate it under every other test of its binary).
    pub async fn start_with_own_authority(
        catalogs: usize,
        extra: &[(&str, &str, String)],
    ) -> System {
        Self::start_system(catalogs, extra, Trust::Own).await
    }

    /// A system with `STRATUS_MTLS=off`: plaintext inside, nobody's identity checked. Only
    /// for tests about that mode.
    pub async fn start_plaintext(catalogs: usize) -> System {
        Self::start_system(catalogs, &[], Trust::Off).await
    }

    /// Like [`System::start_with`], with the registry on `registry_port` (chosen beforehand, so
    /// that something between it and the gateway can be set up first).
    pub async fn start_with_registry_on(
        catalogs: usize,
        extra: &[(&str, &str, String)],
        registry_port: u16,
    ) -> System {
        Self::start_system_on(catalogs, extra, Trust::Shared, registry_port).await
    }

    async fn start_system(catalogs: usize, extra: &[(&str, &str, String)], trust: Trust) -> System {
        Self::start_system_on(catalogs, extra, trust, free_port()).await
    }

    async fn start_system_on(
        catalogs: usize,
        extra: &[(&str, &str, String)],
        trust: Trust,
        registry_port: u16,
    ) -> System {
        stratus_kit::install_crypto_provider();
        let dir = tempfile::tempdir().expect("a temp dir");
        let mesh = trust.mesh(dir.path());
        let mut system = System {
            dir,
            registry_port,
            gateway_port: free_port(),
            admin_port: free_port(),
            processes: Vec::new(),
            http: client_for(mesh.as_deref()),
            mesh,
        };
        let env_for = |service: &str| -> Vec<(&str, &str)> {
            extra
                .iter()
                .filter(|(s, _, _)| *s == service)
                .map(|(_, k, v)| (*k, v.as_str()))
                .collect()
        };
        let registry_port = system.registry_port.to_string();
        let mut registry_env = env_for("registry");
        registry_env.push(("PORT", registry_port.as_str()));
        system.spawn("registry", &registry_env);
        system
            .wait_http_ok(&format!("{}/readyz", system.registry_url()))
            .await;
        let mut auth_env = env_for("auth");
        auth_env.push(("STRATUS_ADMIN_PASSWORD", ADMIN_PASSWORD));
        system.spawn("auth", &auth_env);
        for _ in 0..catalogs {
            system.spawn("catalog", &env_for("catalog"));
        }
        let gateway_port = system.gateway_port.to_string();
        let admin_port = system.admin_port.to_string();
        let mut gateway_env = env_for("gateway");
        gateway_env.push(("PORT", gateway_port.as_str()));
        gateway_env.push(("STRATUS_ADMIN_PORT", admin_port.as_str()));
        system.spawn("gateway", &gateway_env);
        system.wait_registered("auth", 1).await;
        system.wait_registered("catalog", catalogs).await;
        system.wait_http_ok(&system.admin_url("/readyz")).await;
        // Tests log in first thing: the gateway must route /auth before start returns, not
        // merely the registry know of auth (the gateway learns of it a watch round later).
        system.wait_gateway_sees("auth", 1).await;
        system.wait_gateway_sees("catalog", catalogs).await;
        system
    }

    /// A system whose services report to an event sink at `127.0.0.1:<events port>`; with
    /// `run_sink` false nothing listens there (a sink that is down). Returns the events port.
    pub async fn start_with_events(catalogs: usize, run_sink: bool) -> (System, u16) {
        let events_port = free_port();
        // As configured: the services reach it over mutual TLS all the same (the mesh makes
        // internal URLs https).
        let sink = format!("http://127.0.0.1:{events_port}");
        let extra = [
            ("auth", "STRATUS_EVENTS_URL", sink.clone()),
            ("catalog", "STRATUS_EVENTS_URL", sink.clone()),
            ("gateway", "STRATUS_EVENTS_URL", sink.clone()),
        ];
        let mut system = Self::start_with(catalogs, &extra).await;
        if run_sink {
            let port = events_port.to_string();
            system.spawn("events", &[("PORT", port.as_str())]);
            system
                .wait_http_ok(&system.internal_url(events_port, "/readyz"))
                .await;
            system.wait_registered("events", 1).await;
        }
        (system, events_port)
    }

    /// Just the edge: a registry and a gateway (with `routes` as its route file, if given).
    pub async fn start_edge(routes: Option<&std::path::Path>) -> System {
        Self::start_edge_with(routes, &[]).await
    }

    /// The edge, with extra environment for the gateway.
    pub async fn start_edge_with(
        routes: Option<&std::path::Path>,
        gateway_env: &[(&str, &str)],
    ) -> System {
        Self::start_edge_trusting(routes, gateway_env, Trust::Shared).await
    }

    /// The edge with `STRATUS_MTLS=off` (tests about plaintext upstreams).
    pub async fn start_edge_plaintext(
        routes: Option<&std::path::Path>,
        gateway_env: &[(&str, &str)],
    ) -> System {
        Self::start_edge_trusting(routes, gateway_env, Trust::Off).await
    }

    async fn start_edge_trusting(
        routes: Option<&std::path::Path>,
        gateway_env: &[(&str, &str)],
        trust: Trust,
    ) -> System {
        stratus_kit::install_crypto_provider();
        let dir = tempfile::tempdir().expect("a temp dir");
        let mesh = trust.mesh(dir.path());
        let mut system = System {
            dir,
            registry_port: free_port(),
            gateway_port: free_port(),
            admin_port: free_port(),
            processes: Vec::new(),
            http: client_for(mesh.as_deref()),
            mesh,
        };
        let registry_port = system.registry_port.to_string();
        system.spawn("registry", &[("PORT", registry_port.as_str())]);
        system
            .wait_http_ok(&format!("{}/readyz", system.registry_url()))
            .await;
        let (gateway_port, admin_port) = (
            system.gateway_port.to_string(),
            system.admin_port.to_string(),
        );
        let routes = routes.map(|p| p.display().to_string());
        let mut env = vec![
            ("PORT", gateway_port.as_str()),
            ("STRATUS_ADMIN_PORT", admin_port.as_str()),
        ];
        if let Some(routes) = &routes {
            env.push(("STRATUS_ROUTES", routes.as_str()));
        }
        env.extend_from_slice(gateway_env);
        system.spawn("gateway", &env);
        system.wait_http_ok(&system.admin_url("/readyz")).await;
        system
    }

    /// Registers an instance by hand (for test backends that do not register themselves).
    pub async fn register(&self, service: &str, id: &str, port: u16, metadata: serde_json::Value) {
        let url = format!(
            "{}/v1/services/{service}/instances/{id}",
            self.registry_url()
        );
        let response = self
            .client(&url)
            .put(&url)
            .json(&serde_json::json!({"address": "127.0.0.1", "port": port, "ttl_seconds": 600, "metadata": metadata}))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "registering {service}/{id}: {}",
            response.status()
        );
    }

    pub fn registry_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.registry_port)
    }

    /// `https` with mutual TLS on, else `http`: the scheme of every internal port.
    pub fn scheme(&self) -> &'static str {
        if self.mesh.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// A URL on the gateway's admin port.
    pub fn admin_url(&self, path: &str) -> String {
        self.internal_url(self.admin_port, path)
    }

    /// A URL on an internal port (the registry, the sink, an instance, the gateway's admin
    /// port): https with mutual TLS on.
    pub fn internal_url(&self, port: u16, path: &str) -> String {
        format!("{}://127.0.0.1:{port}{path}", self.scheme())
    }

    /// The operator's client (with mutual TLS on), else the plain one: for internal ports.
    pub fn internal(&self) -> &reqwest::Client {
        match &self.mesh {
            Some(mesh) => &mesh.operator,
            None => &self.http,
        }
    }

    /// The client for `url`: the operator's for an internal port under mutual TLS, else plain.
    pub fn client(&self, url: &str) -> &reqwest::Client {
        match &self.mesh {
            Some(mesh) if url.starts_with("https://") => &mesh.operator,
            _ => &self.http,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway_port)
    }

    pub fn log_path(&self, name: &str, index: usize) -> PathBuf {
        self.dir.path().join(format!("{name}-{index}.log"))
    }

    /// Starts `stratus serve <name>` with the system's registry and data directory.
    pub fn spawn(&mut self, name: &str, env: &[(&str, &str)]) -> &mut Process {
        let index = self.processes.iter().filter(|p| p.name == name).count();
        let log = std::fs::File::create(self.log_path(name, index)).unwrap();
        let instance_id = stratus_kit::new_id();
        let mut command = Command::new(binary());
        command
            .args(["serve", name])
            .env("STRATUS_REGISTRY_URL", self.registry_url())
            .env("STRATUS_DATA_DIR", self.dir.path())
            .env("STRATUS_INSTANCE_ID", &instance_id)
            .env("STRATUS_LOG_FORMAT", "json")
            .env("STRATUS_LOG", "info")
            .env("PORT", "0")
            // A process that fails to start prints its error, not a page of backtrace that
            // pushes the error out of the log tails a failing test shows.
            .env("RUST_LIB_BACKTRACE", "0")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        match &self.mesh {
            Some(mesh) => {
                command.envs(mesh.env(name));
                // The intentions `stratus up` gives them (stratus.toml's [[intentions]]).
                if name == "catalog" {
                    command.env("STRATUS_ALLOWED_CALLERS", "gateway,orders");
                }
            }
            // Said, not left to the default (which is `required`).
            None => {
                command.env("STRATUS_MTLS", "off");
            }
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("starting stratus");
        self.processes.push(Process {
            name: name.into(),
            child,
            instance_id,
        });
        self.processes.last_mut().unwrap()
    }

    pub fn process(&mut self, name: &str, index: usize) -> &mut Process {
        self.processes
            .iter_mut()
            .filter(|p| p.name == name)
            .nth(index)
            .expect("such a process")
    }

    /// GETs `url` and returns its JSON body; any other answer than a 2xx with JSON fails the test.
    pub async fn get_json(&self, url: impl AsRef<str>) -> Value {
        let url = url.as_ref();
        let response = self.client(url).get(url).send().await.expect("GET");
        let status = response.status();
        assert!(status.is_success(), "GET {}: {status}", response.url());
        response.json().await.expect("a JSON body")
    }

    pub async fn wait_http_ok(&self, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = self.client(url).get(url).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{url} never answered 200; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn registered(&self, service: &str) -> Vec<Value> {
        let url = format!("{}/v1/services/{service}", self.registry_url());
        let response = self.client(&url).get(&url).send().await;
        match response {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["instances"].as_array().cloned())
                .unwrap_or_default(),
            Err(_) => vec![],
        }
    }

    pub async fn wait_registered(&self, service: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.registered(service).await.len() < count {
            assert!(
                Instant::now() < deadline,
                "{service} never had {count} instances; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts `count` instances of each of `services` (with `env`) and waits until the gateway
    /// routes to every one of them.
    pub async fn add_services(&mut self, services: &[(&str, usize)], env: &[(&str, &str)]) {
        for (service, count) in services {
            for _ in 0..*count {
                self.spawn(service, env);
            }
        }
        for (service, count) in services {
            self.wait_registered(service, *count).await;
            self.wait_gateway_sees(service, *count).await;
        }
    }

    /// The base URL of one registered instance of `service`: to call it directly, around the
    /// gateway, as something inside the network could.
    pub async fn instance_url(&self, service: &str) -> String {
        let instances = self.registered(service).await;
        let instance = instances
            .first()
            .unwrap_or_else(|| panic!("no instance of {service} registered"));
        format!(
            "{}://{}:{}",
            self.scheme(),
            instance["address"].as_str().expect("an address"),
            instance["port"].as_u64().expect("a port")
        )
    }

    /// Waits until the gateway's admin API lists `count` instances of `service`.
    pub async fn wait_gateway_sees(&self, service: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = self.admin_url("/v1/upstreams");
            let seen = self.client(&url).get(&url).send().await.ok();
            let seen = match seen {
                Some(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["services"][service].as_array().map(Vec::len)),
                None => None,
            };
            if seen == Some(count) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway never saw {count} {service}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let response = self
            .http
            .post(self.url("/auth/login"))
            .json(&serde_json::json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "login of {email}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer");
        body["access_token"].as_str().unwrap().to_string()
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Signs up a new customer and returns their access token.
    pub async fn customer_token(&self, email: &str) -> String {
        let response = self
            .http
            .post(self.url("/auth/signup"))
            .json(&serde_json::json!({"email": email, "password": "customer-password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "signup of {email}");
        self.login(email, "customer-password").await
    }

    /// The catalog's products as an instance has them now (past the gateway's edge cache).
    pub async fn products(&self) -> Vec<Value> {
        let response = self
            .http
            .get(self.url("/api/catalog/products"))
            .header("cache-control", "no-store")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }
}

impl Drop for System {
    /// When a test fails, the processes' logs are the first thing anyone needs: print their tails.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for process in &mut self.processes {
            let _ = process.child.kill();
        }
        let mut entries: Vec<_> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let errors: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains(r#""level":"ERROR""#) || l.starts_with("Error: "))
                    .take(5)
                    .collect();
                if !errors.is_empty() {
                    eprintln!("--- {} (first errors)", entry.path().display());
                    for line in errors {
                        eprintln!("{line}");
                    }
                }
                eprintln!("--- {} (last lines)", entry.path().display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// `application/x-www-form-urlencoded` bodies (reqwest is built without its `form` feature).
pub trait FormBody {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self {
        let encode = |text: &str| {
            text.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        let body = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }
}

/// Auth's current signing key, read from its SQLite database (where it is stored sealed) and
/// opened with the data dir's seal key: what an attacker holding both files has, and what a test
/// needs to make a token auth would have signed (an expired one, say).
pub async fn auth_signing_key(system: &System) -> stratus_token::SigningKey {
    use base64::Engine;
    use sqlx::Row;
    let path = system.dir.path().join("auth.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .unwrap();
    let row = sqlx::query(
        "SELECT kid, pkcs8 FROM signing_keys WHERE retire_at IS NULL ORDER BY created_unix DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let kid: String = row.get("kid");
    let sealed: String = row.get("pkcs8");
    let seal_key = stratus_kit::seal_key::default_file(system.dir.path());
    let sealer =
        stratus_identity::Sealer::parse(&std::fs::read_to_string(seal_key).unwrap()).unwrap();
    let pkcs8 = stratus_auth::sealed::SIGNING_KEY
        .open(&sealer, &kid, &sealed)
        .unwrap();
    assert_ne!(pkcs8, sealed, "the key is stored sealed");
    let der = base64::engine::general_purpose::STANDARD
        .decode(pkcs8)
        .unwrap();
    stratus_token::SigningKey::from_pkcs8(kid, &der).unwrap()
}

/// The sum of a Prometheus text page's samples of `name` whose labels contain `labels` (0 when
/// there is none yet).
pub fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
