//! For `bench/mtls.sh` only: `stratus serve gateway` given workload credentials from files, until
//! the mesh hands the gateway its own (the process-level wiring is not there yet).
//!
//! `BENCH_UPSTREAM_TLS_DIR` names a folder with `cert.pem`, `key.pem` and `bundle.pem`, as
//! `stratus identity issue --service gateway --out <folder>` writes them; every connection to an
//! instance is then mutual TLS. Unset, the gateway is plaintext, so both sides of the benchmark's
//! comparison run this same binary. Everything else is configured as for `stratus serve gateway`
//! (the same `Args`, from the same environment variables).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use stratus_identity::Credentials;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: stratus_gateway::Args,
}

fn main() -> anyhow::Result<()> {
    // As `stratus`'s main: the recorder before any metric handle exists.
    stratus_kit::metrics::install();
    stratus_kit::install_crypto_provider();
    let cli = Cli::parse();
    stratus_kit::memory::spawn_trimmer(Duration::from_secs(30));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        stratus_kit::logging::init("gateway", &cli.args.common);
        let credentials = match std::env::var_os("BENCH_UPSTREAM_TLS_DIR") {
            Some(dir) => Some(credentials(Path::new(&dir))?),
            None => None,
        };
        stratus_gateway::run_with(cli.args, credentials).await
    })
}

fn credentials(dir: &Path) -> anyhow::Result<Arc<Credentials>> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let trust_domain =
        std::env::var("STRATUS_TRUST_DOMAIN").unwrap_or_else(|_| "stratus.local".to_string());
    let credentials = Credentials::new(&trust_domain, &read("bundle.pem")?)?;
    credentials.set_certificate(&read("cert.pem")?, &read("key.pem")?, None)?;
    Ok(credentials)
}
