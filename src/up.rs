//! `stratus up`: the whole system on one machine, one process per component.
//!
//! It starts the components of `stratus.toml` in order, waits for each to be ready, prints where
//! everything is, restarts a process that dies (with back-off), and on Ctrl-C or SIGTERM stops
//! them in reverse order: the gateway first, so no new requests arrive, the registry last.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::distr::{Alphanumeric, SampleString};
use stratus_kit::registry_client::RegistryClient;

use crate::manifest::{ComponentSpec, Manifest};

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

    /// Port of the event sink (API and, later, the dashboard).
    #[arg(long, env = "STRATUS_EVENTS_PORT", default_value_t = 8090)]
    events_port: u16,

    /// Port of the DNS server (UDP and TCP).
    #[arg(long, env = "STRATUS_DNS_PORT", default_value_t = 8600)]
    dns_port: u16,

    /// How long a component may take to become ready.
    #[arg(long, default_value = "60s", value_parser = stratus_kit::duration::parse)]
    ready_timeout: Duration,
}

/// One running replica of a component.
struct Replica {
    spec: ComponentSpec,
    ordinal: usize,
    instance_id: String,
    child: tokio::process::Child,
    started: Instant,
    restarts: u32,
}

struct Supervisor {
    exe: PathBuf,
    data_dir: PathBuf,
    log_dir: PathBuf,
    routes_file: PathBuf,
    registry_url: String,
    gateway_port: u16,
    admin_port: u16,
    registry_port: u16,
    dns_port: u16,
    events_port: u16,
    admin_password: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let (manifest, text) = Manifest::load(&args.file)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let log_dir = data_dir.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    // The gateway reads its routes from the same desired-state file.
    let routes_file = data_dir.join("stratus.toml");
    std::fs::write(&routes_file, &text)?;

    let (admin_password, password_note) = admin_password(&data_dir)?;
    let supervisor = Supervisor {
        exe: std::env::current_exe().context("finding the stratus binary")?,
        data_dir: data_dir.clone(),
        log_dir: log_dir.clone(),
        routes_file,
        registry_url: format!("http://127.0.0.1:{}", args.registry_port),
        gateway_port: args.gateway_port,
        admin_port: args.admin_port,
        registry_port: args.registry_port,
        dns_port: args.dns_port,
        events_port: args.events_port,
        admin_password: admin_password.clone(),
    };

    println!(
        "Stratus is starting ({} components; logs in {})",
        manifest.components.len(),
        log_dir.display()
    );
    let mut replicas: Vec<Replica> = Vec::new();
    let outcome = start_all(&supervisor, &manifest, &mut replicas, args.ready_timeout).await;
    if let Err(error) = outcome {
        eprintln!("\nstart-up failed: {error:#}");
        eprintln!("see the logs in {}", log_dir.display());
        stop_all(&mut replicas).await;
        return Err(error);
    }

    println!("\nReady in {:.1} s.\n", started.elapsed().as_secs_f64());
    println!("  API gateway    http://127.0.0.1:{}", args.gateway_port);
    println!(
        "                 try: curl http://127.0.0.1:{}/api/catalog/products",
        args.gateway_port
    );
    println!(
        "  Gateway admin  http://127.0.0.1:{}/v1/upstreams",
        args.admin_port
    );
    println!("  Registry       {}/v1/services", supervisor.registry_url);
    if manifest.components.iter().any(|c| c.name == "events") {
        println!(
            "  Event sink     http://127.0.0.1:{}/v1/stats",
            args.events_port
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
    println!("\nPress Ctrl-C to stop.");

    supervise(&supervisor, &mut replicas).await;
    println!("\nStopping...");
    stop_all(&mut replicas).await;
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

async fn start_all(
    supervisor: &Supervisor,
    manifest: &Manifest,
    replicas: &mut Vec<Replica>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let registry = RegistryClient::new(&supervisor.registry_url)?;
    for spec in &manifest.components {
        let began = Instant::now();
        let first = replicas.len();
        for ordinal in 0..spec.replicas {
            replicas.push(supervisor.spawn(spec, ordinal, 0)?);
        }
        for replica in &mut replicas[first..] {
            supervisor.wait_ready(replica, &registry, timeout).await?;
        }
        let detail = match spec.name.as_str() {
            "registry" => supervisor.registry_url.clone(),
            "gateway" => format!("http://127.0.0.1:{}", supervisor.gateway_port),
            "dns" => format!("127.0.0.1:{} (UDP and TCP)", supervisor.dns_port),
            "events" => format!("http://127.0.0.1:{}", supervisor.events_port),
            _ if spec.replicas == 1 => "1 instance".to_string(),
            _ => format!("{} instances", spec.replicas),
        };
        println!(
            "  ✓ {:<14} ready in {:>5} ms   {detail}",
            spec.name,
            began.elapsed().as_millis()
        );
    }
    Ok(())
}

impl Supervisor {
    fn spawn(
        &self,
        spec: &ComponentSpec,
        ordinal: usize,
        restarts: u32,
    ) -> anyhow::Result<Replica> {
        let instance_id = stratus_kit::new_id();
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
        let log_path = self.log_dir.join(format!("{}-{ordinal}.log", spec.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        command
            .env("STRATUS_REGISTRY_URL", &self.registry_url)
            .env("STRATUS_DATA_DIR", &self.data_dir)
            .env("STRATUS_INSTANCE_ID", &instance_id)
            .env(
                "STRATUS_EVENTS_URL",
                format!("http://127.0.0.1:{}", self.events_port),
            )
            .env("STRATUS_LOG_FORMAT", "json")
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
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", spec.name))?;
        Ok(Replica {
            spec: spec.clone(),
            ordinal,
            instance_id,
            child,
            started: Instant::now(),
            restarts,
        })
    }

    /// Ready means: the registry answers `/readyz`; the gateway's admin API answers `/readyz`;
    /// any other component is registered and its own `/readyz` answers.
    async fn wait_ready(
        &self,
        replica: &mut Replica,
        registry: &RegistryClient,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = replica.child.try_wait()? {
                anyhow::bail!(
                    "{} exited during start-up ({status}); see {}",
                    replica.spec.name,
                    self.log_dir
                        .join(format!("{}-{}.log", replica.spec.name, replica.ordinal))
                        .display()
                );
            }
            if replica.spec.name == "dns" {
                // DNS has no HTTP side: ready when its TCP listener accepts.
                if tokio::net::TcpStream::connect(("127.0.0.1", self.dns_port))
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            let url = match replica.spec.name.as_str() {
                "dns" => None,
                "events" => Some(format!("http://127.0.0.1:{}/readyz", self.events_port)),
                "registry" => Some(format!("{}/readyz", self.registry_url)),
                "gateway" => Some(format!("http://127.0.0.1:{}/readyz", self.admin_port)),
                name => registry
                    .service(name)
                    .await
                    .ok()
                    .and_then(|s| {
                        s.instances
                            .into_iter()
                            .find(|i| i.id == replica.instance_id)
                    })
                    .map(|i| format!("{}/readyz", i.base_url())),
            };
            if let Some(url) = url {
                if http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("{} was not ready within {timeout:?}", replica.spec.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits for Ctrl-C or SIGTERM, restarting any replica that exits meanwhile.
async fn supervise(supervisor: &Supervisor, replicas: &mut [Replica]) {
    let signal = stratus_kit::shutdown::signal();
    tokio::pin!(signal);
    let mut pending_restarts: HashMap<usize, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = &mut signal => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        for (slot, replica) in replicas.iter_mut().enumerate() {
            if let Some(at) = pending_restarts.get(&slot) {
                if Instant::now() < *at {
                    continue;
                }
                pending_restarts.remove(&slot);
                match supervisor.spawn(&replica.spec, replica.ordinal, replica.restarts + 1) {
                    Ok(new) => {
                        println!(
                            "  ↻ {} #{} restarted (restart {})",
                            new.spec.name, new.ordinal, new.restarts
                        );
                        *replica = new;
                    }
                    Err(error) => {
                        eprintln!("  ✗ could not restart {}: {error:#}", replica.spec.name)
                    }
                }
                continue;
            }
            if let Ok(Some(status)) = replica.child.try_wait() {
                // Crash loops back off: 1 s, 2 s, 4 s ... up to 30 s, reset after a minute of life.
                let lived = replica.started.elapsed();
                if lived > Duration::from_secs(60) {
                    replica.restarts = 0;
                }
                let delay = Duration::from_secs(1u64 << replica.restarts.min(5))
                    .min(Duration::from_secs(30));
                println!(
                    "  ✗ {} #{} exited ({status}); restarting in {}s",
                    replica.spec.name,
                    replica.ordinal,
                    delay.as_secs()
                );
                pending_restarts.insert(slot, Instant::now() + delay);
            }
        }
    }
}

/// SIGTERM to every replica, last started first; SIGKILL to any still running after 15 s.
async fn stop_all(replicas: &mut [Replica]) {
    for replica in replicas.iter_mut().rev() {
        if let Some(pid) = replica.child.id() {
            #[cfg(unix)]
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        let stopped = tokio::time::timeout(Duration::from_secs(15), replica.child.wait()).await;
        if stopped.is_err() {
            eprintln!(
                "  {} #{} did not stop in time; killing it",
                replica.spec.name, replica.ordinal
            );
            let _ = replica.child.kill().await;
        }
    }
}
