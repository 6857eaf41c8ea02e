//! Configuration shared by every component, read from the environment (12-factor).
//!
//! Each component flattens [`CommonArgs`] into its own clap arguments, so
//! `stratus serve <component> --help` lists every variable it reads with its default.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::duration;

#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Address to bind. Loopback by default; 0.0.0.0 in containers.
    #[arg(long, env = "STRATUS_BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// Address other processes use to reach this one (defaults to the bind address).
    #[arg(long, env = "STRATUS_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,

    /// Where the registry answers.
    #[arg(
        long,
        env = "STRATUS_REGISTRY_URL",
        default_value = "http://127.0.0.1:8500"
    )]
    pub registry_url: String,

    /// Folder for local state: SQLite databases, generated secrets.
    #[arg(long, env = "STRATUS_DATA_DIR", default_value = "./.stratus")]
    pub data_dir: PathBuf,

    /// This instance's id in the registry (a new UUIDv7 when unset).
    #[arg(long, env = "STRATUS_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Version this instance reports to the registry (used by canary and blue-green routing).
    #[arg(long, env = "STRATUS_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    pub version: String,

    /// Registration lease: an instance that misses heartbeats this long is dropped.
    #[arg(long, env = "STRATUS_TTL", default_value = "3s", value_parser = duration::parse)]
    pub ttl: Duration,

    /// Ask the registry to probe this instance's `/healthz` (on, off). A failing instance is
    /// left out of discovery within about a second, long before its lease runs out.
    #[arg(
        long,
        env = "STRATUS_HEALTH_CHECK",
        default_value = "on",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::Set
    )]
    pub health_check: bool,

    /// How often the registry probes this instance's `/healthz`.
    #[arg(long, env = "STRATUS_HEALTH_INTERVAL", default_value = "500ms", value_parser = duration::parse)]
    pub health_interval: Duration,

    /// How long one probe of `/healthz` may take before it counts as failed.
    #[arg(long, env = "STRATUS_HEALTH_TIMEOUT", default_value = "300ms", value_parser = duration::parse)]
    pub health_timeout: Duration,

    /// After leaving the registry on SIGTERM, how long to keep serving so gateways notice.
    #[arg(long, env = "STRATUS_DRAIN", default_value = "300ms", value_parser = duration::parse)]
    pub drain: Duration,

    /// The most a shutdown may take; in-flight work still running then is cut off.
    #[arg(long, env = "STRATUS_GRACE", default_value = "10s", value_parser = duration::parse)]
    pub grace: Duration,

    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "STRATUS_LOG", default_value = "info")]
    pub log: String,

    /// Log format: json, or text (the default when stdout is a terminal).
    #[arg(long, env = "STRATUS_LOG_FORMAT")]
    pub log_format: Option<String>,

    /// Also send this process's log lines to the event sink (on or off; only while STRATUS_EVENTS
    /// is on). stdout gets every line either way.
    #[arg(long = "log-ship", env = "STRATUS_LOG_SHIP", default_value = "on", value_parser = parse_switch)]
    pub log_ship: bool,

    /// The lowest level sent to the event sink (trace, debug, info, warn, error); lines below it
    /// still go to stdout when STRATUS_LOG lets them.
    #[arg(long, env = "STRATUS_LOG_SHIP_LEVEL", default_value = "info", value_parser = parse_level)]
    pub log_ship_level: tracing::Level,

    /// Report one record per request to the event sink (on or off).
    #[arg(long = "events", env = "STRATUS_EVENTS", default_value = "on", value_parser = parse_switch)]
    pub events: bool,

    /// Where the event sink answers.
    #[arg(
        long,
        env = "STRATUS_EVENTS_URL",
        default_value = "http://127.0.0.1:8090"
    )]
    pub events_url: String,

    /// Records a process queues for the event sink; past it, records are folded into per-second
    /// counts and latency sketches sent as a summary (none is lost from the sink's stats).
    #[arg(long, env = "STRATUS_EVENTS_QUEUE", default_value_t = crate::events::QUEUE, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub events_queue: usize,

    #[command(flatten)]
    pub mesh: crate::mesh::MeshArgs,
}

/// `on`/`off` (also `true`/`false`, `1`/`0`, `yes`/`no`).
pub fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        other => Err(format!("`{other}` is not on or off")),
    }
}

/// A log level by name: trace, debug, info, warn (or warning), error; any case.
pub fn parse_level(text: &str) -> Result<tracing::Level, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "warning" => Ok(tracing::Level::WARN),
        other => other
            .parse()
            .map_err(|_| format!("`{text}` is not one of trace, debug, info, warn, error")),
    }
}

impl CommonArgs {
    /// The address written into the registry for this instance.
    pub fn advertised_address(&self) -> String {
        match &self.advertise_address {
            Some(address) => address.clone(),
            None if self.bind.is_unspecified() => "127.0.0.1".to_string(),
            None => self.bind.to_string(),
        }
    }

    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(crate::new_id)
    }
}

/// Settings for checking bearer tokens, shared by the gateway and the services.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// The `iss` every accepted token must carry.
    #[arg(long, env = "STRATUS_TOKEN_ISSUER", default_value = "stratus")]
    pub token_issuer: String,

    /// The `aud` every accepted token must carry.
    #[arg(long, env = "STRATUS_TOKEN_AUDIENCE", default_value = "stratus-api")]
    pub token_audience: String,

    /// Fetch the JWKS from this URL instead of finding the auth service in the registry.
    #[arg(long, env = "STRATUS_JWKS_URL")]
    pub jwks_url: Option<String>,
}

/// Where a process finds the instances of other services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiscoverySource {
    /// Follow the registry's blocking query (`STRATUS_REGISTRY_URL`).
    Registry,
    /// Ask DNS (SRV, then A/AAAA) for each service, where DNS is the registry (Kubernetes
    /// headless services, Consul DNS, `stratus serve dns`).
    Dns,
}

/// Settings for the discovery source, shared by the gateway and kit clients.
#[derive(clap::Args, Debug, Clone)]
pub struct DiscoveryArgs {
    /// Where instances come from: `registry` or `dns`.
    #[arg(
        long,
        env = "STRATUS_DISCOVERY",
        value_enum,
        default_value = "registry"
    )]
    pub discovery: DiscoverySource,

    /// With `dns`: the server to ask, as address:port (default: the first nameserver of
    /// /etc/resolv.conf).
    #[arg(long, env = "STRATUS_DNS_SERVER")]
    pub dns_server: Option<std::net::SocketAddr>,

    /// With `dns`: the name asked for a service; `{service}` is replaced by its name.
    #[arg(
        long,
        env = "STRATUS_DNS_NAME_TEMPLATE",
        default_value = "{service}.service.stratus"
    )]
    pub dns_name_template: String,

    /// With `dns`: the port of instances found through A/AAAA records (no SRV).
    #[arg(long, env = "STRATUS_DNS_DEFAULT_PORT", default_value_t = 80)]
    pub dns_default_port: u16,

    /// With `dns`: how often to ask again (longer if the records' TTL is longer, up to 30s).
    #[arg(long, env = "STRATUS_DNS_REFRESH", default_value = "1s", value_parser = duration::parse)]
    pub dns_refresh: Duration,

    /// With `dns`: how long one DNS query may take.
    #[arg(long, env = "STRATUS_DNS_TIMEOUT", default_value = "500ms", value_parser = duration::parse)]
    pub dns_timeout: Duration,
}

impl DiscoveryArgs {
    /// The DNS settings these arguments describe (the system resolver when no server is set).
    pub fn dns_settings(&self) -> anyhow::Result<crate::dns_discovery::DnsSettings> {
        if !self.dns_name_template.contains("{service}") {
            anyhow::bail!("STRATUS_DNS_NAME_TEMPLATE must contain {{service}}");
        }
        let server = match self.dns_server {
            Some(server) => server,
            None => crate::dns_discovery::system_resolver()?,
        };
        Ok(crate::dns_discovery::DnsSettings {
            server,
            template: self.dns_name_template.clone(),
            default_port: self.dns_default_port,
            refresh: self.dns_refresh.max(Duration::from_millis(50)),
            timeout: self.dns_timeout.max(Duration::from_millis(10)),
        })
    }
}

/// Settings for services that publish or consume events through the broker.
#[derive(clap::Args, Debug, Clone)]
pub struct BrokerArgs {
    /// The broker: nats://host:port (JetStream), tls://host:port (JetStream over TLS, required),
    /// or sqlite://<path>; unset: the embedded queue in <data dir>/broker.db, shared by every
    /// local process with the same data directory.
    #[arg(long, env = "BROKER_URL")]
    pub broker_url: Option<String>,

    /// How long a message taken by a consumer stays hidden from the rest of its group; a
    /// consumer that dies holding it gives it back after this long.
    #[arg(long, env = "STRATUS_BROKER_VISIBILITY_TIMEOUT", default_value = "10s", value_parser = duration::parse)]
    pub broker_visibility_timeout: Duration,

    /// Deliveries of one message to a group before it moves to `<topic>.dlq`.
    #[arg(long, env = "STRATUS_BROKER_MAX_ATTEMPTS", default_value_t = 5)]
    pub broker_max_attempts: u32,
}

impl BrokerArgs {
    /// Connects to the configured broker. An unreachable NATS is an error, never a fallback.
    pub async fn connect(
        &self,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<stratus_broker::Broker> {
        use anyhow::Context;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let url = stratus_broker::url_or_default(self.broker_url.as_deref(), data_dir);
        let options = stratus_broker::Options {
            visibility_timeout: self.broker_visibility_timeout,
            max_attempts: self.broker_max_attempts,
            ..Default::default()
        };
        stratus_broker::Broker::connect(&url, options)
            .await
            .with_context(|| {
                format!(
                    "connecting to the broker at {}",
                    stratus_broker::redact_url(&url)
                )
            })
    }
}
