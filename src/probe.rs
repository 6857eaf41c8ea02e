//! `stratus probe`: a health check from inside the container.
//!
//! The image is `FROM scratch` (the static binary alone: no shell, no curl), so a compose or
//! Docker `HEALTHCHECK` runs the binary itself: `stratus probe` asks `/healthz` on the
//! component's own port and exits 0 on a 2xx, 1 otherwise. `--tcp` only connects (for DNS,
//! which has no HTTP port). The gateway answers `/healthz` on its admin port
//! (`STRATUS_ADMIN_PORT`), not on the client port it routes, so its check is `probe --port 8081`.

use std::time::Duration;

use anyhow::{bail, Context};

#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// The port to ask (the component's own `PORT`).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// The path to ask: /healthz (alive) or /readyz (ready for traffic).
    #[arg(long, default_value = "/healthz")]
    path: String,
    /// Only open a TCP connection.
    #[arg(long)]
    tcp: bool,
}

pub async fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    let address = format!("127.0.0.1:{}", args.port);
    if args.tcp {
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&address),
        )
        .await
        .context("connecting timed out")?
        .with_context(|| format!("connecting to {address}"))?;
        return Ok(());
    }
    let url = format!("http://{address}{}", args.path);
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    Ok(())
}
