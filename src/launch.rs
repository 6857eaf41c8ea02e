//! Starting one replica of a component and asking whether it is ready.
//!
//! The launcher knows the fixed parts of the local system (the binary, the data dir, the ports
//! `up` hands to the registry, gateway, DNS and event sink) and nothing about what is running:
//! the supervisor (`supervisor.rs`) decides what to start and stop, and calls this to do it.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use stratus_identity::Expect;
use stratus_kit::registry_client::RegistryClient;

use crate::manifest::ComponentSpec;
use crate::trust::Trust;

pub struct Launcher {
    pub exe: PathBuf,
    pub data_dir: PathBuf,
    pub log_dir: PathBuf,
    /// The copy of stratus.toml the gateway watches for its routes.
    pub routes_file: PathBuf,
    pub registry_url: String,
    pub gateway_port: u16,
    pub admin_port: u16,
    pub registry_port: u16,
    pub dns_port: u16,
    pub events_port: u16,
    pub admin_password: Option<String>,
    pub trust: Arc<Trust>,
    registry: RegistryClient,
    http: reqwest::Client,
}

/// What a readiness probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    NotYet,
    /// Ready, listening on this port.
    Ready(u16),
}

impl Launcher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        exe: PathBuf,
        data_dir: PathBuf,
        routes_file: PathBuf,
        gateway_port: u16,
        admin_port: u16,
        registry_port: u16,
        dns_port: u16,
        events_port: u16,
        admin_password: Option<String>,
        trust: Arc<Trust>,
    ) -> anyhow::Result<Self> {
        let registry_url = format!("http://127.0.0.1:{registry_port}");
        Ok(Self {
            exe,
            log_dir: data_dir.join("logs"),
            data_dir,
            routes_file,
            registry: RegistryClient::new(&registry_url)?,
            registry_url,
            gateway_port,
            admin_port,
            registry_port,
            dns_port,
            events_port,
            admin_password,
            trust,
            // Probes reach every kind of component: any certificate of the system will do.
            http: stratus_kit::mesh::current()
                .client_builder_expecting(Expect::AnyService)
                .timeout(Duration::from_secs(1))
                .build()?,
        })
    }

    /// Where a replica's stdout and stderr go (appended across restarts).
    pub fn log_path(&self, name: &str, ordinal: usize) -> PathBuf {
        self.log_dir.join(format!("{name}-{ordinal}.log"))
    }

    /// Starts one process for `spec` with the given instance id; `callers` are the services
    /// whose instances may call it (`STRATUS_ALLOWED_CALLERS`).
    pub fn spawn(
        &self,
        spec: &ComponentSpec,
        ordinal: usize,
        instance_id: &str,
        callers: &[String],
    ) -> anyhow::Result<tokio::process::Child> {
        let mut command = match &spec.command {
            Some(argv) => {
                let mut command = tokio::process::Command::new(&argv[0]);
                command.args(&argv[1..]);
                command
            }
            None => {
                let mut command = tokio::process::Command::new(&self.exe);
                command.arg("serve").arg(&spec.name);
                command
            }
        };
        let log_path = self.log_path(&spec.name, ordinal);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        command
            .env("STRATUS_REGISTRY_URL", &self.registry_url)
            .env("STRATUS_DATA_DIR", &self.data_dir)
            .env("STRATUS_INSTANCE_ID", instance_id)
            .env(
                "STRATUS_EVENTS_URL",
                format!("http://127.0.0.1:{}", self.events_port),
            )
            .env("STRATUS_LOG_FORMAT", "json")
            .envs(self.trust.child_env(&spec.name)?)
            .env("STRATUS_ALLOWED_CALLERS", callers.join(","))
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        match spec.name.as_str() {
            "registry" => command.env("PORT", self.registry_port.to_string()),
            "dns" => command.env("PORT", self.dns_port.to_string()),
            "events" => command.env("PORT", self.events_port.to_string()),
            "gateway" => command
                .env("PORT", self.gateway_port.to_string())
                .env("STRATUS_ADMIN_PORT", self.admin_port.to_string())
                .env("STRATUS_ROUTES", &self.routes_file),
            _ => command.env("PORT", "0"),
        };
        if spec.name == "auth" {
            if let Some(password) = &self.admin_password {
                command.env("STRATUS_ADMIN_PASSWORD", password);
            }
        }
        // Children get their own process group so a Ctrl-C at the terminal reaches only `up`,
        // which then stops them in order; and they die with `up` if it is killed outright.
        #[cfg(unix)]
        command.process_group(0);
        #[cfg(target_os = "linux")]
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        command
            .spawn()
            .with_context(|| format!("starting {}", spec.name))
    }

    /// One look at whether a replica is ready. Ready means: the registry answers `/readyz`; the
    /// gateway's admin API answers `/readyz`; DNS accepts TCP; any other component is
    /// registered under its instance id and its own `/readyz` answers.
    pub async fn probe(&self, name: &str, instance_id: &str) -> Probe {
        let (url, port) = match name {
            "dns" => {
                let open = tokio::net::TcpStream::connect(("127.0.0.1", self.dns_port))
                    .await
                    .is_ok();
                return if open {
                    Probe::Ready(self.dns_port)
                } else {
                    Probe::NotYet
                };
            }
            "events" => (
                format!("http://127.0.0.1:{}/readyz", self.events_port),
                self.events_port,
            ),
            "registry" => (format!("{}/readyz", self.registry_url), self.registry_port),
            "gateway" => (
                format!("http://127.0.0.1:{}/readyz", self.admin_port),
                self.gateway_port,
            ),
            name => {
                let Some(instance) = self
                    .registry
                    .service(name)
                    .await
                    .ok()
                    .and_then(|s| s.instances.into_iter().find(|i| i.id == instance_id))
                else {
                    return Probe::NotYet;
                };
                (format!("{}/readyz", instance.base_url()), instance.port)
            }
        };
        let url = stratus_kit::mesh::current().url(&url);
        let ready = self
            .http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            Probe::Ready(port)
        } else {
            Probe::NotYet
        }
    }

    /// The identity a replica listening on `port` presents: a TLS handshake as the operator,
    /// reading its certificate's SPIFFE ID and expiry (None with mutual TLS off, or no answer).
    pub async fn presented_identity(&self, port: u16) -> Option<(String, i64)> {
        let mesh = stratus_kit::mesh::current();
        let credentials = mesh.credentials().filter(|_| mesh.is_on())?;
        let config = credentials.client_config(Expect::AnyService);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(
            std::net::Ipv4Addr::LOCALHOST.into(),
        );
        let handshake = async {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            connector.connect(name, stream).await.ok()
        };
        let tls = tokio::time::timeout(Duration::from_secs(1), handshake)
            .await
            .ok()??;
        let leaf = tls.get_ref().1.peer_certificates()?.first()?.clone();
        let id = stratus_identity::peer::spiffe_id(&leaf).ok()?;
        let not_after = stratus_identity::peer::not_after(&leaf).ok()?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Some((id.uri(), not_after - now))
    }

    /// Every registered instance's health (passing | warning | critical), by instance id; empty
    /// when the registry does not answer.
    pub async fn registry_health(&self) -> std::collections::HashMap<String, String> {
        let mesh = stratus_kit::mesh::current();
        let url = mesh.url(&format!("{}/v1/services", self.registry_url));
        let catalog = match self.http.get(url).send().await {
            Ok(response) => response.json::<stratus_kit::model::Catalog>().await.ok(),
            Err(_) => None,
        };
        catalog
            .into_iter()
            .flat_map(|c| c.services.into_values().flatten())
            .map(|i| {
                let health = serde_json::to_value(i.health)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                (i.id, health)
            })
            .collect()
    }

    /// Whether the gateway's admin API lists `instance_id` of `service` as up, i.e. routes to it.
    pub async fn gateway_routes_to(&self, service: &str, instance_id: &str) -> bool {
        let mesh = stratus_kit::mesh::current();
        let url = mesh.url(&format!(
            "http://127.0.0.1:{}/v1/upstreams",
            self.admin_port
        ));
        let Ok(response) = self.http.get(url).send().await else {
            return false;
        };
        let Ok(body) = response.json::<serde_json::Value>().await else {
            return false;
        };
        body["services"][service]
            .as_array()
            .is_some_and(|instances| {
                instances
                    .iter()
                    .any(|i| i["id"] == instance_id && i["state"] == "up")
            })
    }
}
