//! `stratus probe`: a health check from inside the container.
//!
//! The image has no shell and no curl (distroless: the binary and glibc), so a compose or
//! Docker `HEALTHCHECK` runs the binary itself: `stratus probe` asks `/healthz` on the
//! component's own port and exits 0 on a 2xx, 1 otherwise. `--tcp` only connects (for DNS,
//! which has no HTTP port). The gateway answers `/healthz` on its admin port
//! (`STRATUS_ADMIN_PORT`), not on the client port it routes, so its check is `probe --port 8081`.
//!
//! With mutual TLS on (`STRATUS_MTLS`, as the component itself reads it) the port speaks only
//! TLS: the probe asks over TLS with no certificate of its own (health is open to callers
//! without one) and checks the component's certificate against the trust bundle.

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
    #[command(flatten)]
    mesh: stratus_kit::mesh::MeshArgs,
    /// The data directory (for the default trust bundle).
    #[arg(long, env = "STRATUS_DATA_DIR", default_value = "./.stratus")]
    data_dir: std::path::PathBuf,
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
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(2));
    let scheme = if args.mesh.mtls == stratus_identity::Mode::Off {
        "http"
    } else {
        let path = args.mesh.bundle_path(&args.data_dir);
        let bundle = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the trust bundle {}", path.display()))?;
        let credentials = stratus_identity::Credentials::new(&args.mesh.trust_domain, &bundle)?;
        builder = builder.tls_backend_preconfigured(
            credentials.client_config(stratus_identity::Expect::AnyService),
        );
        "https"
    };
    let url = format!("{scheme}://{address}{}", args.path);
    let response = builder
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
