//! The gateway: the seeds' load balancer and API gateway, the one door into the system.
//!
//! It matches each request to a route (path-based routing), checks the caller's token and roles
//! (authentication and authorisation at the edge), picks a live instance of the route's service
//! (instance-based balancing, from the registry's live view), and forwards it, retrying once on
//! another instance when the first could not be reached.
//!
//! Map, top-down as a request travels: [`listen`] (the workers' listeners, idle connections
//! parked, TLS, layer 4), [`proxy`] (the per-request path), [`forward`] (the attempt driver,
//! the HTTP/1.1 and HTTP/2 upstream clients, mutual TLS to the instances, the relay back),
//! [`route`] (the table, canary, A/B and blue-green splits and the automatic rollback, rate
//! limits), [`upstream`] (instances, balancing, breakers, health checks); beside them
//! [`discovery`] (following the registry), [`reload`], [`admin`] (the admin API), and at every
//! floor [`headers`], [`grpc`] and [`report`]. Files import only downwards.

pub mod admin;
pub mod discovery;
pub mod edge_cache;
pub mod forward;
pub mod grpc;
pub mod headers;
pub mod listen;
pub mod proxy;
pub mod purge_relay;
pub mod reload;
pub mod report;
pub mod route;
pub mod upstream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::forward::upstream_tls;
use crate::listen::{l4, limits, server, tls};
use crate::proxy::{Settings, Shared};
use crate::route::canary;
use crate::route::routes::RouteTable;
use crate::upstream::check::Check;
use crate::upstream::health;
use crate::upstream::instances::Upstreams;
use anyhow::Context;
use arc_swap::ArcSwap;
use stratus_identity::Credentials;
use stratus_kit::auth::Tokens;
use stratus_kit::config::{CommonArgs, DiscoverySource, TokenArgs};
use stratus_kit::dns_discovery::DnsFollower;
use stratus_kit::registry_client::RegistryClient;
use stratus_kit::server::Service;

/// The routes used when no file is given: the ones in the repository's `stratus.toml`.
pub const DEFAULT_ROUTES: &str = include_str!("../../../stratus.toml");

/// `stratus serve gateway`
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Port for client traffic.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Port of the admin API (routes, upstreams, health, metrics).
    #[arg(long, env = "STRATUS_ADMIN_PORT", default_value_t = 8081)]
    pub admin_port: u16,

    /// File with `[[routes]]` tables (stratus.toml); the built-in routes when unset.
    #[arg(long, env = "STRATUS_ROUTES")]
    pub routes: Option<PathBuf>,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "STRATUS_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,

    /// How long an upstream may take to answer.
    #[arg(long, env = "STRATUS_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = stratus_kit::duration::parse)]
    pub upstream_timeout: Duration,

    /// How long connecting to an upstream may take.
    #[arg(long, env = "STRATUS_CONNECT_TIMEOUT", default_value = "1s", value_parser = stratus_kit::duration::parse)]
    pub connect_timeout: Duration,

    /// An HTTP/1.1 instance that sends nothing for this long in the middle of a response body
    /// (after its head) is cut off: its connection closes and the client's response ends in an
    /// error. Long-lived streams (server-sent events) must send something more often. 0: no
    /// limit.
    #[arg(long, env = "STRATUS_UPSTREAM_IDLE_TIMEOUT", default_value = "300s", value_parser = stratus_kit::duration::parse)]
    pub upstream_idle_timeout: Duration,

    /// A client must send a request's headers within this time (against slowloris).
    #[arg(long, env = "STRATUS_HEADER_TIMEOUT", default_value = "10s", value_parser = stratus_kit::duration::parse)]
    pub header_timeout: Duration,

    /// An idle keep-alive client connection is closed after this long (idle connections are
    /// parked: a socket and under a hundred bytes each, see `lot.rs`).
    #[arg(long, env = "STRATUS_KEEPALIVE_TIMEOUT", default_value = "75s", value_parser = stratus_kit::duration::parse)]
    pub keepalive_timeout: Duration,

    /// A client connection idle this long between requests is parked: its HTTP session and
    /// buffers are freed until the client sends again (10,000 idle clients: 22 MB RSS). Shorter
    /// lowers the peak while a burst of new clients goes idle (their sessions are alive until
    /// they park); longer spares a client that pauses between requests the cost of a new session
    /// at each pause (about 20 us of gateway CPU, as much as proxying a request). See `park.rs`.
    #[arg(long, env = "STRATUS_PARK_AFTER", default_value = "1s", value_parser = stratus_kit::duration::parse)]
    pub park_after: Duration,

    /// Largest request head (request line and headers) in bytes; larger gets 431.
    #[arg(long, env = "STRATUS_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,

    /// Most client connections open at once (shared across workers).
    #[arg(long, env = "STRATUS_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// HTTPS port, used when a certificate is configured (STRATUS_TLS_CERT/KEY or STRATUS_TLS_DEV).
    #[arg(long, env = "STRATUS_TLS_PORT", default_value_t = 8443)]
    pub tls_port: u16,

    /// PEM file with the certificate chain for HTTPS.
    #[arg(long, env = "STRATUS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key for HTTPS.
    #[arg(long, env = "STRATUS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve HTTPS with a self-signed development certificate kept in <data dir>/tls/.
    #[arg(long, env = "STRATUS_TLS_DEV", default_value_t = false, action = clap::ArgAction::Set)]
    pub tls_dev: bool,

    /// How often the gateway itself probes the /healthz of every instance of the services its
    /// route table names (0: off).
    #[arg(long, env = "STRATUS_UPSTREAM_HEALTH_INTERVAL", default_value = "1s", value_parser = stratus_kit::duration::parse)]
    pub upstream_health_interval: Duration,

    /// Consecutive failed probes that take an instance out of rotation.
    #[arg(long, env = "STRATUS_UPSTREAM_HEALTH_UNHEALTHY", default_value_t = 2)]
    pub upstream_health_unhealthy: u32,

    /// Consecutive passed probes that bring it back.
    #[arg(long, env = "STRATUS_UPSTREAM_HEALTH_HEALTHY", default_value_t = 2)]
    pub upstream_health_healthy: u32,

    /// Worker threads serving client traffic (0: one per core).
    #[arg(long, env = "STRATUS_GATEWAY_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Redis shared by every gateway for route rate limits (`redis://host:port`); unset: each
    /// gateway limits on its own. When Redis fails, limits fall back to per instance (fail open).
    #[arg(long, env = "STRATUS_RATE_LIMIT_REDIS_URL")]
    pub rate_limit_redis_url: Option<String>,

    /// How long a rate-limit decision waits for Redis before falling back to the local limiter.
    #[arg(long, env = "STRATUS_RATE_LIMIT_REDIS_TIMEOUT", default_value = "100ms", value_parser = stratus_kit::duration::parse)]
    pub rate_limit_redis_timeout: Duration,

    /// The most bytes of answers the edge cache holds (routes with `cache = { ... }`).
    #[arg(long, env = "STRATUS_GATEWAY_CACHE_SIZE", default_value_t = 64 * 1024 * 1024)]
    pub cache_size: u64,

    /// Add `x-served-by: <service>/<instance>` to responses.
    #[arg(long, env = "STRATUS_SERVED_BY", default_value_t = true, action = clap::ArgAction::Set)]
    pub served_by: bool,

    #[command(flatten)]
    pub tokens: TokenArgs,

    #[command(flatten)]
    pub discovery: stratus_kit::config::DiscoveryArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // The one place the gateway's workload credentials come in: with them, every connection to
    // an instance is mutual TLS; without, plaintext (STRATUS_MTLS=off).
    let mesh = stratus_kit::mesh::current();
    let upstream_tls: Option<Arc<Credentials>> =
        mesh.is_on().then(|| mesh.credentials().cloned()).flatten();
    run_with(args, upstream_tls).await
}

/// [`run`], given the credentials for mutual TLS to the instances (None: plaintext). The
/// certificate and bundle inside may be swapped at any time (renewal, CA rotation): each new
/// upstream connection uses what they hold then.
pub async fn run_with(args: Args, upstream_tls: Option<Arc<Credentials>>) -> anyhow::Result<()> {
    let table = match &args.routes {
        Some(path) => RouteTable::from_file(path)?,
        None => RouteTable::parse(DEFAULT_ROUTES).context("the built-in routes")?,
    };
    tracing::info!(routes = table.routes.len(), "route table loaded");
    match &upstream_tls {
        Some(credentials) => tracing::info!(
            id = %credentials.id().map_or_else(|| "none yet".to_string(), |id| id.uri()),
            "connections to instances are mutual TLS"
        ),
        None => tracing::info!("connections to instances are plaintext"),
    }

    let registry = RegistryClient::new(&args.common.registry_url)?;
    let upstreams = Arc::new(Upstreams::new());
    // Both sources follow the services the route table names, so they start below.
    let dns = match args.discovery.discovery {
        DiscoverySource::Registry => None,
        DiscoverySource::Dns => Some(DnsFollower::new(
            args.discovery
                .dns_settings()
                .context("STRATUS_DISCOVERY=dns")?,
        )),
    };

    for route in &table.tcp {
        let listener = l4::bind(route).await?;
        tracing::info!(address = %route.listen, service = %route.service, "layer-4 listener");
        tokio::spawn(l4::serve(
            listener,
            route.service.clone(),
            upstreams.clone(),
            args.connect_timeout,
        ));
    }
    let instance_id = args.common.instance_id();
    let reporter = if args.common.events {
        match stratus_kit::events::EventReporter::with_queue(
            &args.common.events_url,
            "gateway",
            &instance_id,
            args.common.events_queue,
        ) {
            Ok(reporter) => Some(reporter),
            Err(error) => {
                tracing::warn!(%error, "event reporting is off: could not start the reporter");
                None
            }
        }
    } else {
        None
    };
    let rate_limit_redis = args
        .rate_limit_redis_url
        .clone()
        .filter(|url| !url.is_empty());
    if let Some(url) = &rate_limit_redis {
        // A configured backing service that is not there at start-up is a clear error; later
        // outages fail open (ratelimit_redis.rs).
        stratus_kit::cache::connect_redis(url)
            .await
            .context("STRATUS_RATE_LIMIT_REDIS_URL")?;
        tracing::info!("route rate limits are shared through Redis");
    }
    let shared = Arc::new(Shared {
        reporter,
        routes: ArcSwap::from_pointee(table),
        upstreams: upstreams.clone(),
        tokens: Tokens::new(&args.tokens, registry.clone())?,
        settings: Settings {
            max_body: args.max_body,
            timeout: args.upstream_timeout,
            served_by: args.served_by,
            rate_limit_redis,
            rate_limit_redis_timeout: args.rate_limit_redis_timeout,
        },
        upstream_tls: upstream_tls.map(upstream_tls::UpstreamTls::new),
        edge_cache: edge_cache::EdgeCache::new(args.cache_size),
        purge_relay: Some(purge_relay::PurgeRelay::start(
            RegistryClient::new(&args.common.registry_url)?,
            instance_id.clone(),
        )?),
    });

    // The layer-4 listeners are bound once, at start: their services stay followed and checked
    // whatever a reloaded table says.
    let pinned: Vec<String> = shared
        .routes
        .load()
        .tcp
        .iter()
        .map(|route| route.service.clone())
        .collect();
    match dns {
        Some(follower) => tokio::spawn(discovery::follow_dns(follower, shared.clone())),
        None => tokio::spawn(discovery::follow(registry, shared.clone(), pinned.clone())),
    };
    if !args.upstream_health_interval.is_zero() {
        let settings = health::Settings {
            interval: args.upstream_health_interval,
            timeout: args.upstream_health_interval.min(Duration::from_secs(2)),
            unhealthy: args.upstream_health_unhealthy.max(1),
            healthy: args.upstream_health_healthy.max(1),
        };
        // Only the services the current route table names are checked (health.rs).
        let routes = shared.clone();
        let routed = move || discovery::followed(&routes.routes.load(), &pinned);
        tokio::spawn(health::run(upstreams.clone(), settings, routed));
    }
    let routes = shared.clone();
    tokio::spawn(canary::watch(
        move || routes.routes.load_full(),
        shared.reporter.clone(),
    ));

    let listener = server::exclusive_listener(
        std::net::SocketAddr::new(args.common.bind, args.port),
        "the gateway's port (PORT)",
    )?;
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let address = listener.local_addr()?;
    tracing::info!(%address, workers, "gateway listening");
    let limits = limits::Limits {
        header_timeout: args.header_timeout,
        keepalive_timeout: args.keepalive_timeout,
        park_after: args.park_after,
        max_header_bytes: args.max_header_bytes,
        max_connections_per_worker: args.max_connections.div_ceil(workers),
        connect_timeout: args.connect_timeout,
        upstream_idle_timeout: args.upstream_idle_timeout,
        grace: args.common.grace,
    };
    let tls_source = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::Source::Files {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ if args.tls_dev => Some(tls::Source::Development {
            data_dir: args.common.data_dir.clone(),
        }),
        _ => None,
    };
    let tls = match tls_source {
        Some(source) => {
            let config = tls::server_config(&source)?;
            let first = server::exclusive_listener(
                std::net::SocketAddr::new(args.common.bind, args.tls_port),
                "the gateway's HTTPS port (STRATUS_TLS_PORT)",
            )?;
            tracing::info!(address = %first.local_addr()?, "gateway listening for HTTPS");
            Some(server::TlsListener { first, config })
        }
        None => None,
    };
    // Bound here, not inside the admin task: a port in use must stop the start, not leave a
    // gateway serving traffic with no admin API or readiness.
    let admin_listener = tokio::net::TcpListener::bind((args.common.bind, args.admin_port))
        .await
        .with_context(|| {
            format!(
                "the gateway's admin port (STRATUS_ADMIN_PORT): binding {}:{}",
                args.common.bind, args.admin_port
            )
        })?;
    let workers = server::Workers::start(workers, listener, shared.clone(), limits, tls)?;

    let reload_status = reload::SharedStatus::default();
    if let Some(path) = &args.routes {
        reload_status.lock().unwrap_or_else(|p| p.into_inner()).file =
            Some(path.display().to_string());
        tokio::spawn(reload::watch(
            path.clone(),
            shared.clone(),
            reload_status.clone(),
        ));
    }

    // An admin's access token is an operator credential on the admin port, as a certificate is.
    let admin = Service::new("gateway", args.admin_port)
        .unregistered()
        .without_events()
        .taking_operator_tokens(shared.tokens.clone());
    admin.health.add_check("registry", move || {
        let synced = upstreams.index() > 0;
        async move {
            if synced {
                Ok(())
            } else {
                Err("no registry view yet".to_string())
            }
        }
    });
    let common = args.common.clone();
    let admin_app = admin::router(shared, reload_status);
    let admin_task =
        tokio::spawn(async move { admin.run_on(admin_listener, &common, admin_app).await });

    // The gateway registers itself like every other process, with its client-traffic port, so
    // DNS can answer the API's name with every gateway instance.
    let registration = stratus_kit::model::Registration {
        address: args.common.advertised_address(),
        port: address.port(),
        version: Some(args.common.version.clone()),
        metadata: registration_metadata(args.admin_port),
        ttl_seconds: Some(args.common.ttl.as_secs_f64()),
        // The client port answers only routed paths, so the registry checks that it accepts
        // connections (the admin port has /healthz for orchestrators).
        check: args
            .common
            .health_check
            .then_some(stratus_kit::model::Check::Tcp(true)),
        interval: args
            .common
            .health_check
            .then(|| format!("{}ms", args.common.health_interval.as_millis())),
        timeout: args.common.health_check.then(|| {
            let timeout = args.common.health_timeout.min(args.common.health_interval);
            format!("{}ms", timeout.as_millis())
        }),
    };
    let registrar = stratus_kit::registration::Registrar::start(
        RegistryClient::new(&args.common.registry_url)?,
        "gateway",
        &instance_id,
        registration,
    );

    stratus_kit::shutdown::signal().await;
    registrar.deregister().await;
    // Readiness fails first (the admin server saw the same signal); keep serving briefly so load
    // balancers in front of us notice, then stop accepting and finish what is in flight.
    tokio::time::sleep(args.common.drain).await;
    tracing::info!("gateway stopped accepting; finishing in-flight requests");
    workers.stop().await;
    admin_task.await.context("the admin server task")??;
    Ok(())
}

/// What the gateway's registration says about it beyond its address.
///
/// - `health_check = tcp`: the client port answers only routed paths, so a `GET /healthz` there
///   is a 404. Without this, a gateway whose routes name the gateway service (an edge in front
///   of other gateways) would count each gateway as failing once it started
///   (`gateway_health_check_failures_total{service="gateway"} 1` on an idle system) and keep it
///   out of rotation for good.
/// - `metrics_path`, `metrics_port`: the metrics are on the admin port, for the registry's
///   Prometheus targets. An admin port of 0 is only known once bound, so it is left out then.
pub fn registration_metadata(admin_port: u16) -> std::collections::BTreeMap<String, String> {
    use stratus_kit::model::{METRICS_PATH, METRICS_PORT};
    let mut metadata = std::collections::BTreeMap::from([(
        "health_check".to_string(),
        Check::Tcp.as_str().to_string(),
    )]);
    if admin_port != 0 {
        metadata.insert(METRICS_PATH.to_string(), "/metrics".to_string());
        metadata.insert(METRICS_PORT.to_string(), admin_port.to_string());
    }
    metadata
}
