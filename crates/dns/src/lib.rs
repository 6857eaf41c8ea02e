//! Stratus DNS: the registry, readable by anything that can resolve a name.
//!
//! `dig @127.0.0.1 -p 8600 catalog.service.stratus` lists the live catalog instances, and
//! `... SRV` adds their ports. Programs that know nothing of Stratus (a database client, `curl`)
//! can find services this way. The answers come from a copy of the registry's catalog that a
//! blocking query keeps current ([`follow`]), with TTL 0, so a dead instance disappears from DNS
//! the moment it leaves the registry.

pub mod answer;
pub mod follow;
pub mod handler;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwapOption;
use hickory_server::ServerFuture;
use stratus_kit::config::CommonArgs;
use stratus_kit::registry_client::RegistryClient;
use tokio::net::{TcpListener, UdpSocket};

/// How long a TCP client may stay silent before its connection is closed.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// `stratus serve dns`
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Port for DNS, UDP and TCP alike.
    #[arg(long, env = "PORT", default_value_t = 8600)]
    pub port: u16,

    /// The name that resolves to the gateway's instances (DNS round robin to the front door).
    #[arg(long, env = "STRATUS_GATEWAY_NAME", default_value = answer::DEFAULT_GATEWAY_NAME)]
    pub gateway_name: String,

    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let bind = args.common.bind;
    // TCP first: with PORT=0 it picks the port, and UDP takes the same number.
    let tcp = TcpListener::bind((bind, args.port))
        .await
        .with_context(|| format!("binding DNS over TCP on {bind}:{}", args.port))?;
    let port = tcp
        .local_addr()
        .context("reading the bound address")?
        .port();
    let udp = UdpSocket::bind((bind, port))
        .await
        .with_context(|| format!("binding DNS over UDP on {bind}:{port}"))?;

    let view = Arc::new(ArcSwapOption::empty());
    let client = RegistryClient::new(&args.common.registry_url)?;
    tokio::spawn(follow::follow(client, view.clone()));

    let reporter = if args.common.events {
        let id = args.common.instance_id();
        Some(stratus_kit::events::EventReporter::with_queue(
            &args.common.events_url,
            "dns",
            &id,
            args.common.events_queue,
        )?)
    } else {
        None
    };
    let mut server = ServerFuture::new(handler::Handler {
        view,
        gateway_name: args.gateway_name.to_ascii_lowercase(),
        reporter,
    });
    server.register_socket(udp);
    server.register_listener(tcp, TCP_TIMEOUT);
    tracing::info!(address = %format!("{bind}:{port}"), zone = answer::ZONE, "serving DNS over UDP and TCP");

    tokio::select! {
        result = server.block_until_done() => result.context("serving DNS")?,
        _ = stratus_kit::shutdown::signal() => {
            tracing::info!("stopping");
            server.shutdown_gracefully().await.context("stopping the DNS server")?;
        }
    }
    Ok(())
}
