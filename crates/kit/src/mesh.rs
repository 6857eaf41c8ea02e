//! The mesh, without a sidecar: this process's identity and how it makes internal connections.
//!
//! Every `stratus serve <component>` joins the mesh before it builds anything else
//! ([`join`]): it gets a certificate from the registry's authority with its join credential
//! (`STRATUS_JOIN_TOKEN`, read from the environment only) and keeps it fresh. From then on
//! every listener the kit makes serves TLS with it and learns each caller's identity, and every
//! client the kit makes ([`Mesh::client`]) presents it and checks that the other end is the
//! service it meant to reach. Internal URLs keep their `http://` form in configuration and the
//! registry; [`Mesh::url`] turns them into `https://` when the mesh is on, so one setting
//! (`STRATUS_MTLS`) moves a whole system between plaintext and mTLS.
//!
//! The mesh is one per process and set once (as the metrics recorder is): the clients that
//! need it are made in many places, long before a request, and none may make a plaintext
//! connection by mistake once it is on. A process that never joins (the CLI, unit tests) has
//! the mesh off.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use stratus_identity::{Credentials, Expect, Mode};
use tokio_rustls::rustls::ServerConfig;

use crate::identity::Workload;

/// The variable that carries a join credential; never an argument, never logged.
pub const JOIN_TOKEN_VAR: &str = "STRATUS_JOIN_TOKEN";
/// How long a starting process waits for the registry (and the trust bundle) to be there.
const JOIN_WAIT: Duration = Duration::from_secs(60);

/// `STRATUS_MTLS` and where the trust comes from, shared by every component.
#[derive(clap::Args, Debug, Clone)]
pub struct MeshArgs {
    /// Mutual TLS on internal hops: `required` (plaintext refused; the default, as under
    /// `stratus up`), `optional` (TLS when offered, plaintext callers have no identity), `off`
    /// (development and benchmarks only).
    #[arg(long = "mtls", env = "STRATUS_MTLS", default_value = "required", value_parser = parse_mode)]
    pub mtls: Mode,

    /// The SPIFFE trust domain: identities are `spiffe://<trust domain>/service/<name>`.
    #[arg(long, env = "STRATUS_TRUST_DOMAIN", default_value = "stratus.local")]
    pub trust_domain: String,

    /// The roots to trust, PEM (default: <data dir>/identity/bundle.pem, which the registry
    /// writes). Only the first is read from here; the registry serves every later one.
    #[arg(long, env = "STRATUS_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,

    /// Intentions: the services whose instances may call this one, comma-separated (`*`: any
    /// service). Operators always may. The registry, the event sink and auth serve every
    /// service and decide per request instead.
    #[arg(
        long,
        env = "STRATUS_ALLOWED_CALLERS",
        default_value = "gateway",
        value_delimiter = ','
    )]
    pub allowed_callers: Vec<String>,
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    text.trim().to_ascii_lowercase().parse()
}

impl MeshArgs {
    /// The trust bundle's file.
    pub fn bundle_path(&self, data_dir: &Path) -> PathBuf {
        self.trust_bundle
            .clone()
            .unwrap_or_else(|| data_dir.join("identity").join("bundle.pem"))
    }
}

/// This process's place in the mesh.
pub struct Mesh {
    mode: Mode,
    credentials: Option<Arc<Credentials>>,
    /// One HTTP client per service reached: each checks for that service's identity.
    clients: Mutex<HashMap<String, reqwest::Client>>,
}

static MESH: OnceLock<Mesh> = OnceLock::new();
static OFF: OnceLock<Mesh> = OnceLock::new();

/// The mesh of this process (off until [`join`] or [`install`]).
pub fn current() -> &'static Mesh {
    MESH.get()
        .unwrap_or_else(|| OFF.get_or_init(|| Mesh::new(Mode::Off, None)))
}

/// The mesh of this process once [`join`] or [`install`] has set it (`None` before).
pub fn installed() -> Option<&'static Mesh> {
    MESH.get()
}

/// Sets the mesh of this process (once; a second call is an error).
pub fn install(mode: Mode, credentials: Option<Arc<Credentials>>) -> anyhow::Result<&'static Mesh> {
    if mode != Mode::Off && credentials.is_none() {
        anyhow::bail!("mutual TLS is {mode:?} but there are no credentials");
    }
    MESH.set(Mesh::new(mode, credentials))
        .map_err(|_| anyhow::anyhow!("the mesh is set once per process"))?;
    let mesh = current();
    if mode == Mode::Off {
        tracing::warn!(
            "STRATUS_MTLS=off: internal connections are plaintext and nobody's identity is \
             checked; any process that can reach a port can act as any service \
             (development and benchmarks only)"
        );
    }
    Ok(mesh)
}

/// Joins the mesh as an instance of `service`: with mTLS on, waits for the trust bundle and
/// the registry, obtains a certificate and keeps it fresh for the life of the process.
pub async fn join(
    service: &str,
    common: &crate::config::CommonArgs,
) -> anyhow::Result<&'static Mesh> {
    let args = &common.mesh;
    if args.mtls == Mode::Off {
        return install(Mode::Off, None);
    }
    // Without a credential the registry can only refuse: say so now, not after a minute of
    // waiting for a certificate that cannot come.
    let join_token = Some(require_join_token(
        service,
        args.mtls,
        std::env::var(JOIN_TOKEN_VAR).ok(),
    )?);
    let bundle_path = args.bundle_path(&common.data_dir);
    let deadline = tokio::time::Instant::now() + JOIN_WAIT;
    let bundle = loop {
        match std::fs::read_to_string(&bundle_path) {
            Ok(text) if text.contains("BEGIN CERTIFICATE") => break text,
            result => {
                if tokio::time::Instant::now() >= deadline {
                    let why = result
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or("empty".into());
                    anyhow::bail!(
                        "no trust bundle at {} ({why}): the registry writes it, or set \
                         STRATUS_TRUST_BUNDLE",
                        bundle_path.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let workload = Workload::new(
        &current_url(&common.registry_url, true),
        &args.trust_domain,
        &bundle,
        service,
        join_token,
    )?;
    let mut wait = Duration::from_millis(50);
    loop {
        match workload.obtain().await {
            Ok(()) => break,
            Err(error) if tokio::time::Instant::now() < deadline && retryable(&error) => {
                tracing::debug!(error = %format!("{error:#}"), "waiting for the registry");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            Err(error) => return Err(error.context("joining the mesh")),
        }
    }
    let credentials = workload.credentials().clone();
    tokio::spawn(Arc::new(workload).keep_fresh());
    let mesh = install(args.mtls, Some(credentials))?;
    tracing::info!(id = ?mesh.id(), mode = ?args.mtls, "joined the mesh");
    Ok(mesh)
}

/// The join credential, or an error naming the variable and where it comes from.
fn require_join_token(service: &str, mode: Mode, token: Option<String>) -> anyhow::Result<String> {
    match token.filter(|t| !t.trim().is_empty()) {
        Some(token) => Ok(token),
        None => anyhow::bail!(
            "STRATUS_MTLS is {mode:?} and {JOIN_TOKEN_VAR} is not set: an instance of {service} \
             needs a join credential to get its first certificate. `stratus up` gives one to \
             each process it starts; on Kubernetes it comes from a Secret; by hand, \
             `stratus identity join-credential {service}` prints one (put it in the \
             environment, never on a command line). STRATUS_MTLS=off runs without the mesh \
             (development and benchmarks only)",
            mode = format!("{mode:?}").to_ascii_lowercase()
        ),
    }
}

/// A refusal (bad credential) will not change by waiting; the registry not up yet will.
fn retryable(error: &anyhow::Error) -> bool {
    !format!("{error:#}").contains("refused a certificate")
}

fn current_url(url: &str, tls: bool) -> String {
    match url.strip_prefix("http://") {
        Some(rest) if tls => format!("https://{rest}"),
        _ => url.to_string(),
    }
}

impl Mesh {
    fn new(mode: Mode, credentials: Option<Arc<Credentials>>) -> Self {
        Self {
            mode,
            credentials,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether internal connections use TLS.
    pub fn is_on(&self) -> bool {
        self.mode != Mode::Off
    }

    pub fn credentials(&self) -> Option<&Arc<Credentials>> {
        self.credentials.as_ref()
    }

    /// This process's SPIFFE ID, as a URI.
    pub fn id(&self) -> Option<String> {
        self.credentials.as_ref()?.id().map(|id| id.uri())
    }

    pub fn trust_domain(&self) -> &str {
        self.credentials
            .as_ref()
            .map_or("", |credentials| credentials.trust_domain())
    }

    /// `http` or `https`: the scheme of internal URLs.
    pub fn scheme(&self) -> &'static str {
        if self.is_on() {
            "https"
        } else {
            "http"
        }
    }

    /// An internal URL as it is reached: `http://` becomes `https://` when the mesh is on.
    pub fn url(&self, url: &str) -> String {
        current_url(url, self.is_on())
    }

    /// A client builder for calls to `service`: with the mesh on it presents this process's
    /// certificate and accepts only a server whose certificate names `service`.
    pub fn client_builder(&self, service: &str) -> reqwest::ClientBuilder {
        self.client_builder_expecting(Expect::Service(service.to_string()))
    }

    /// A client builder accepting the server `expect` describes (with the mesh on).
    pub fn client_builder_expecting(&self, expect: Expect) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder();
        match &self.credentials {
            Some(credentials) if self.is_on() => {
                builder.tls_backend_preconfigured(credentials.client_config(expect))
            }
            _ => builder,
        }
    }

    /// A shared client for calls to `service`, made once (connect timeout 1 s, idle
    /// connections kept 30 s).
    pub fn client(&self, service: &str) -> anyhow::Result<reqwest::Client> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(service) {
            return Ok(client.clone());
        }
        let client = self
            .client_builder(service)
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .with_context(|| format!("building the client for {service}"))?;
        clients.insert(service.to_string(), client.clone());
        Ok(client)
    }

    /// The server side of a listener: this process's certificate, and a client's certificate
    /// asked for but not demanded at the handshake. Who may do what is decided per request
    /// ([`crate::server`]), where a refusal can say why in problem+json, and where the
    /// registry's bootstrap routes and the health probes of an orchestrator (which has no
    /// certificate) are let through.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        let credentials = self.credentials.as_ref().filter(|_| self.is_on())?;
        Some(Arc::new(credentials.server_config(Mode::Optional)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_urls_turn_to_https_only_with_the_mesh_on() {
        assert_eq!(
            current_url("http://127.0.0.1:8500", true),
            "https://127.0.0.1:8500"
        );
        assert_eq!(
            current_url("http://127.0.0.1:8500", false),
            "http://127.0.0.1:8500"
        );
        assert_eq!(
            current_url("https://registry:8500", true),
            "https://registry:8500"
        );
        assert_eq!(
            current_url("https://registry:8500", false),
            "https://registry:8500"
        );
    }

    #[test]
    fn without_a_join_credential_the_error_names_the_variable_and_its_sources() {
        for missing in [None, Some(String::new()), Some("  ".into())] {
            let error = require_join_token("catalog", Mode::Required, missing).unwrap_err();
            let text = format!("{error:#}");
            for needed in [
                "STRATUS_JOIN_TOKEN",
                "required",
                "stratus up",
                "Kubernetes",
                "join-credential catalog",
            ] {
                assert!(text.contains(needed), "{needed} not in: {text}");
            }
        }
        assert_eq!(
            require_join_token("catalog", Mode::Optional, Some("sjc1.x".into())).unwrap(),
            "sjc1.x"
        );
    }

    #[test]
    fn required_is_the_default() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Args {
            #[command(flatten)]
            mesh: MeshArgs,
        }
        let command = Args::command();
        let mtls = command
            .get_arguments()
            .find(|argument| argument.get_id() == "mtls")
            .unwrap();
        assert_eq!(mtls.get_default_values(), ["required"]);
    }

    #[test]
    fn mode_is_read_whatever_its_case() {
        assert_eq!(parse_mode("Required"), Ok(Mode::Required));
        assert_eq!(parse_mode(" off "), Ok(Mode::Off));
        assert!(parse_mode("on")
            .unwrap_err()
            .contains("required, optional or off"));
    }
}
