//! `stratus`: one binary for every Stratus component, and the command that runs them all.
//!
//! `stratus serve <component>` runs one component in the foreground, configured from the
//! environment. `stratus up` starts the whole system described by `stratus.toml`, each component
//! as its own child process, and keeps it so; `stratus status | scale | rollout | logs` talk to
//! the running `up` through its control API.

mod backup;
mod cli;
mod control;
mod dashboard;
mod identity;
mod identity_export;
mod launch;
mod logs;
mod logs_filter;
mod logs_sink;
mod manifest;
mod memory;
mod probe;
mod rollout;
mod supervisor;
mod trust;
mod up;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "stratus",
    version,
    about = "A cloud-native microservices system in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one component in the foreground (configured by environment variables).
    Serve {
        #[command(subcommand)]
        component: Box<Component>,
    },
    /// Start the whole system on this machine and keep it running until Ctrl-C.
    ///
    /// The admin account's first password comes from STRATUS_ADMIN_PASSWORD (environment only,
    /// never an argument), else <data dir>/admin-password, else a generated one written there.
    /// Every component setting in the environment (see `stratus serve <component> --help`)
    /// reaches the child processes.
    Up(up::Args),
    /// Show every component and replica of the running `stratus up` (table, or --json).
    Status(cli::StatusArgs),
    /// Set replica counts while running: `stratus scale catalog=3 orders=2`.
    Scale(cli::ScaleArgs),
    /// Replace a component's replicas one at a time, a new one ready before an old one stops
    /// (registry, events, gateway and dns, on fixed ports, restart in place).
    Rollout(cli::RolloutArgs),
    /// Print the last lines of the replicas' logs (from the event sink when one runs: every
    /// replica merged in time order; else from their files); -f keeps following.
    Logs(cli::LogsArgs),
    /// Copy every service database (consistently, while running) into a new directory.
    Backup(backup::BackupArgs),
    /// Put a backup's databases back (the system stopped, or a fresh data dir).
    Restore(backup::RestoreArgs),
    /// Exit 0 when the component on $PORT answers /healthz (a container health check).
    Probe(probe::ProbeArgs),
    /// The certificate authority's files: init, a service's join credential, issue a certificate.
    Identity(identity::IdentityArgs),
}

#[derive(Subcommand)]
// Parsed once at start-up; boxing the larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Component {
    /// Service registry: register, heartbeat, list, watch.
    Registry(stratus_registry::Args),
    /// API gateway and L7 load balancer.
    Gateway(stratus_gateway::Args),
    /// Identity: users, passwords, tokens, JWKS.
    Auth(stratus_auth::Args),
    /// Shop: the product catalog.
    Catalog(stratus_catalog::Args),
    /// DNS: <service>.service.stratus A, AAAA and SRV records (and api.stratus) from the registry.
    Dns(stratus_dns::Args),
    /// Event sink: every hop's record, traces and per-service stats.
    Events(stratus_events::Args),
    /// Shop: each customer's own profile.
    Profile(stratus_profile::Args),
    /// Shop: orders (the start of the order saga).
    Orders(stratus_orders::Args),
    /// Shop: payments (charges each order once).
    Payments(stratus_payments::Args),
    /// Shop: notifications (one per order outcome).
    Notifications(stratus_notifications::Args),
}

fn main() -> anyhow::Result<()> {
    // First, before anything can make a metric handle: one made earlier would count into
    // nothing for the life of the process (see `stratus_kit::metrics::install`).
    stratus_kit::metrics::install();
    memory::tune();
    stratus_kit::install_crypto_provider();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve { .. } | Command::Up(_)) {
        // Long-running: hand memory freed by bursts back to the system now and then.
        stratus_kit::memory::spawn_trimmer(memory::TRIM_EVERY);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Status(args) => cli::status(args).await,
            Command::Scale(args) => cli::scale(args).await,
            Command::Rollout(args) => cli::rollout(args).await,
            Command::Logs(args) => cli::logs(args).await,
            Command::Backup(args) => backup::backup(args).await,
            Command::Restore(args) => backup::restore(args).await,
            Command::Probe(args) => probe::probe(args).await,
            Command::Identity(args) => identity::run(args),
            Command::Serve { component } => serve(*component).await,
        }
    })
}

async fn serve(mut component: Component) -> anyhow::Result<()> {
    // One instance id for the whole process, chosen once: its log lines, its request records and
    // its message records (made by different parts of it, each asking `instance_id()`) must name
    // the same instance, also when STRATUS_INSTANCE_ID is unset.
    let common = component.common_mut();
    if common.instance_id.is_none() {
        common.instance_id = Some(stratus_kit::new_id());
    }
    let (name, common) = component.identity();
    stratus_kit::logging::init(name, common);
    let result = match joined(name, common).await {
        Ok(()) => run(component).await,
        Err(error) => Err(error),
    };
    if let Err(error) = &result {
        tracing::error!(error = %format!("{error:#}"), "exiting");
    }
    // The last lines (why it stops) to the sink too, before the runtime and its queue go.
    stratus_kit::log_ship::flush(LAST_LINES_WITHIN).await;
    result
}

/// How long an exiting process waits for its last lines to reach the sink.
const LAST_LINES_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Joins the mesh before anything else is built (every internal client is made with it). The
/// registry holds the authority and joins by itself.
async fn joined(name: &str, common: &stratus_kit::config::CommonArgs) -> anyhow::Result<()> {
    if name == "registry" {
        return Ok(());
    }
    stratus_kit::mesh::join(name, common).await.map(|_| ())
}

impl Component {
    /// The component's service name and shared settings.
    fn identity(&self) -> (&'static str, &stratus_kit::config::CommonArgs) {
        match self {
            Component::Registry(args) => ("registry", &args.common),
            Component::Gateway(args) => ("gateway", &args.common),
            Component::Auth(args) => ("auth", &args.common),
            Component::Catalog(args) => ("catalog", &args.common),
            Component::Dns(args) => ("dns", &args.common),
            Component::Events(args) => ("events", &args.common),
            Component::Profile(args) => ("profile", &args.common),
            Component::Orders(args) => ("orders", &args.common),
            Component::Payments(args) => ("payments", &args.common),
            Component::Notifications(args) => ("notifications", &args.common),
        }
    }
}

impl Component {
    fn common_mut(&mut self) -> &mut stratus_kit::config::CommonArgs {
        match self {
            Component::Registry(args) => &mut args.common,
            Component::Gateway(args) => &mut args.common,
            Component::Auth(args) => &mut args.common,
            Component::Catalog(args) => &mut args.common,
            Component::Dns(args) => &mut args.common,
            Component::Events(args) => &mut args.common,
            Component::Profile(args) => &mut args.common,
            Component::Orders(args) => &mut args.common,
            Component::Payments(args) => &mut args.common,
            Component::Notifications(args) => &mut args.common,
        }
    }
}

async fn run(component: Component) -> anyhow::Result<()> {
    match component {
        Component::Registry(args) => stratus_registry::run(args).await,
        Component::Gateway(args) => stratus_gateway::run(args).await,
        Component::Auth(args) => stratus_auth::run(args).await,
        Component::Catalog(args) => stratus_catalog::run(args).await,
        Component::Dns(args) => stratus_dns::run(args).await,
        Component::Events(args) => stratus_events::run(args).await,
        Component::Profile(args) => stratus_profile::run(args).await,
        Component::Orders(args) => stratus_orders::run(args).await,
        Component::Payments(args) => stratus_payments::run(args).await,
        Component::Notifications(args) => stratus_notifications::run(args).await,
    }
}
