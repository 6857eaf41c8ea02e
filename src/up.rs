//! `stratus up`: the whole system on one machine, one process per component, kept in the state
//! `stratus.toml` describes.
//!
//! It starts the components in order, waits for each to be ready, prints where everything is,
//! then hands over to the supervisor (`supervisor.rs`), which restarts a process that dies (with
//! back-off), adopts a changed file and answers the control API (`control.rs`) that `stratus
//! status | scale | rollout | logs` use. On Ctrl-C or SIGTERM it stops everything in the reverse
//! order of the file: with the default file DNS and the gateway first, so no new requests arrive,
//! the registry last.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::distr::{Alphanumeric, SampleString};

use stratus_kit::auth::Tokens;
use stratus_kit::config::TokenArgs;
use stratus_kit::registry_client::RegistryClient;

use crate::launch::Launcher;
use crate::manifest::Manifest;
use crate::supervisor::Supervisor;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The desired state; the built-in default when the file does not exist.
    #[arg(long, env = "STRATUS_FILE", default_value = "stratus.toml")]
    file: PathBuf,

    /// Folder for databases, generated secrets and logs.
    #[arg(long, env = "STRATUS_DATA_DIR", default_value = "./.stratus")]
    data_dir: PathBuf,

    /// Port of the gateway.
    #[arg(long, env = "STRATUS_GATEWAY_PORT", default_value_t = 8080)]
    gateway_port: u16,

    /// Port of the gateway's admin API.
    #[arg(long, env = "STRATUS_ADMIN_PORT", default_value_t = 8081)]
    admin_port: u16,

    /// Port of the registry.
    #[arg(long, env = "STRATUS_REGISTRY_PORT", default_value_t = 8500)]
    registry_port: u16,

    /// Port of the event sink: its API and the dashboard at `/`.
    #[arg(long, env = "STRATUS_EVENTS_PORT", default_value_t = 8090)]
    events_port: u16,

    /// Port of the DNS server (UDP and TCP).
    #[arg(long, env = "STRATUS_DNS_PORT", default_value_t = 8600)]
    dns_port: u16,

    /// The control API (`stratus status`, `scale`, `rollout`, `logs`); loopback only. Port 0
    /// picks a free one; the address in use is written to `<data dir>/control.addr`.
    #[arg(long, env = "STRATUS_CONTROL_ADDR", default_value = crate::cli::DEFAULT_CONTROL_ADDR)]
    control_addr: SocketAddr,

    /// Where `up` serves the dashboard for a browser (loopback only), forwarding to the event
    /// sink as the operator: the sink itself takes only mutual TLS.
    #[arg(long, env = "STRATUS_DASHBOARD_ADDR", default_value = "127.0.0.1:8091")]
    dashboard_addr: SocketAddr,

    /// How long a component may take to become ready.
    #[arg(long, default_value = "60s", value_parser = stratus_kit::duration::parse)]
    ready_timeout: Duration,

    /// How the control API checks an admin's access token (the components read the same).
    #[command(flatten)]
    tokens: TokenArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let (manifest, text) = Manifest::load(&args.file)?;
    if !args.control_addr.ip().is_loopback() {
        anyhow::bail!(
            "STRATUS_CONTROL_ADDR must be a loopback address (it can stop and start everything), not {}",
            args.control_addr
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let log_dir = data_dir.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    // The gateway reads its routes from a copy of the desired-state file, rewritten on change.
    let routes_file = data_dir.join("stratus.toml");
    std::fs::write(&routes_file, &text)?;
    // Bound before anything starts, so a taken port fails fast.
    let control = tokio::net::TcpListener::bind(args.control_addr)
        .await
        .with_context(|| {
            format!(
                "binding the control API to {} (another stratus up running? set STRATUS_CONTROL_ADDR)",
                args.control_addr
            )
        })?;
    let control_addr = control.local_addr()?;
    if !args.dashboard_addr.ip().is_loopback() {
        anyhow::bail!(
            "STRATUS_DASHBOARD_ADDR must be a loopback address, not {}",
            args.dashboard_addr
        );
    }
    let dashboard = tokio::net::TcpListener::bind(args.dashboard_addr)
        .await
        .with_context(|| {
            format!(
                "binding the dashboard to {} (set STRATUS_DASHBOARD_ADDR)",
                args.dashboard_addr
            )
        })?;
    let dashboard_addr = dashboard.local_addr()?;

    // Before anything starts: the authority's files, and `up`'s own operator certificate
    // (every client `up` makes, from here on, goes through the mesh).
    let trust = crate::trust::Trust::prepare(&data_dir)?;
    let (admin_password, password_note) = admin_password(&data_dir)?;
    let launcher = Arc::new(Launcher::new(
        std::env::current_exe().context("finding the stratus binary")?,
        data_dir.clone(),
        routes_file,
        args.gateway_port,
        args.admin_port,
        args.registry_port,
        args.dns_port,
        args.events_port,
        admin_password.clone(),
        trust.clone(),
    )?);
    let mesh = stratus_kit::mesh::current();
    let registry_url = mesh.url(&launcher.registry_url);
    let file = std::path::absolute(&args.file).unwrap_or(args.file.clone());
    let mut supervisor = Supervisor::new(launcher.clone(), file, manifest.clone(), text);

    println!(
        "Stratus is starting ({} components; logs in {})",
        manifest.components.len(),
        log_dir.display()
    );
    let outcome = supervisor
        .start_all(args.ready_timeout, |spec, took| {
            let detail = match spec.name.as_str() {
                "registry" => registry_url.clone(),
                "gateway" => format!("http://127.0.0.1:{}", args.gateway_port),
                "dns" => format!("127.0.0.1:{} (UDP and TCP)", args.dns_port),
                "events" => mesh.url(&format!("http://127.0.0.1:{}", args.events_port)),
                _ if spec.replicas == 1 => "1 instance".to_string(),
                _ => format!("{} instances", spec.replicas),
            };
            println!(
                "  ✓ {:<14} ready in {:>5} ms   {detail}",
                spec.name,
                took.as_millis()
            );
        })
        .await;
    if let Err(error) = outcome {
        eprintln!("\nstart-up failed: {error:#}");
        eprintln!("see the logs in {}", log_dir.display());
        supervisor.stop_all().await;
        return Err(error);
    }

    let token = Alphanumeric.sample_string(&mut rand::rng(), 32);
    let token_file = data_dir.join(crate::control::TOKEN_FILE);
    let _ = std::fs::remove_file(&token_file);
    write_private(&token_file, &token)?;
    // An admin's access token opens the control API too; auth's keys come from the auth `up`
    // runs, found through its registry (as operator, under the mesh).
    let tokens = if manifest.components.iter().any(|c| c.name == "auth") {
        let registry = RegistryClient::new(&launcher.registry_url)?;
        Some(Tokens::new(&args.tokens, registry)?)
    } else {
        None
    };
    let app = crate::control::router(supervisor.handle(), launcher.clone(), &token, tokens);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(control, app).await {
            eprintln!("the control API stopped: {error}");
        }
    });
    let control_file = data_dir.join("control.addr");
    std::fs::write(&control_file, control_addr.to_string())
        .with_context(|| format!("writing {}", control_file.display()))?;

    println!("\nReady in {:.1} s.\n", started.elapsed().as_secs_f64());
    println!("  API gateway    http://127.0.0.1:{}", args.gateway_port);
    println!(
        "                 try: curl http://127.0.0.1:{}/api/catalog/products",
        args.gateway_port
    );
    let admin_url = mesh.url(&format!("http://127.0.0.1:{}", args.admin_port));
    println!("  Gateway admin  {admin_url}/v1/upstreams");
    println!("  Registry       {registry_url}/v1/services");
    match trust.operator_dir() {
        Some(dir) => {
            println!(
                "  Mutual TLS     {:?}: every internal port takes only Stratus certificates; yours (operator) is in {}",
                trust.mode,
                dir.display()
            );
            println!(
                "                 try: curl --cacert {0}/bundle.pem --cert {0}/cert.pem --key {0}/key.pem {registry_url}/v1/services",
                dir.display()
            );
        }
        None => println!(
            "  Mutual TLS     off: internal hops are plaintext and unauthenticated (STRATUS_MTLS=off)"
        ),
    }
    if manifest.components.iter().any(|c| c.name == "events") {
        let token = Alphanumeric.sample_string(&mut rand::rng(), 32);
        let sink = format!("http://127.0.0.1:{}", args.events_port);
        let app = crate::dashboard::router(token.clone(), sink)?;
        tokio::spawn(async move {
            if let Err(error) = axum::serve(dashboard, app).await {
                eprintln!("the dashboard stopped: {error}");
            }
        });
        println!(
            "  Dashboard      http://{dashboard_addr}/?token={token}  (the event sink as the operator; its API: /v1/stats, /v1/traces)"
        );
    }
    if manifest.components.iter().any(|c| c.name == "orders") {
        println!(
            "  Shop           POST http://127.0.0.1:{}/api/orders (a token and an Idempotency-Key; README \"The shop\")",
            args.gateway_port
        );
    }
    if manifest.components.iter().any(|c| c.name == "dns") {
        println!(
            "  DNS            dig @127.0.0.1 -p {} catalog.service.stratus SRV",
            args.dns_port
        );
    }
    match &admin_password {
        Some(password) => println!(
            "  Admin login    {} / {password}  ({password_note})",
            stratus_auth::ADMIN_EMAIL
        ),
        None => println!(
            "  Admin login    {}  ({password_note})",
            stratus_auth::ADMIN_EMAIL
        ),
    }
    println!(
        "  Control        http://{control_addr}/v1/status  (stratus status | scale | rollout | logs; token in {})",
        token_file.display()
    );
    println!("\nPress Ctrl-C to stop.");

    supervisor.run().await;
    let _ = std::fs::remove_file(&control_file);
    let _ = std::fs::remove_file(&token_file);
    println!("Stopped.");
    Ok(())
}

/// The admin password to hand to auth on first start, and how it was chosen.
fn admin_password(data_dir: &Path) -> anyhow::Result<(Option<String>, &'static str)> {
    if let Ok(password) = std::env::var("STRATUS_ADMIN_PASSWORD") {
        return Ok((Some(password), "from STRATUS_ADMIN_PASSWORD"));
    }
    let file = data_dir.join("admin-password");
    if let Ok(password) = std::fs::read_to_string(&file) {
        return Ok((
            Some(password.trim().to_string()),
            "generated on first start, kept in the data dir",
        ));
    }
    if data_dir.join("auth.db").exists() {
        return Ok((None, "password chosen on first start"));
    }
    let password = Alphanumeric.sample_string(&mut rand::rng(), 20);
    write_private(&file, &password)?;
    Ok((Some(password), "generated now, kept in the data dir"))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}
