//! compose.yaml's mesh, without docker: deploy/compose-identity.sh makes `.env`, and a registry
//! and a catalog started with what compose.yaml gives their containers (the registry: the seal
//! key and join secret from `.env`, its own data dir, the bundle written to the shared trust
//! folder; the catalog: its own credential, that bundle) form a mesh. The health check compose
//! runs (`stratus probe`) answers over TLS, each credential gets its own service's certificate
//! only, and compose.yaml reads every credential the script writes under its own name.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{binary, free_port, Process};

fn run_script(env_file: &Path) {
    let status = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/compose-identity.sh"
        ))
        .env("STRATUS_BIN", binary())
        .env("STRATUS_ENV_FILE", env_file)
        .env_remove("STRATUS_JOIN_SECRET")
        .stdout(Stdio::null())
        .status()
        .expect("running deploy/compose-identity.sh");
    assert!(status.success(), "deploy/compose-identity.sh: {status}");
}

fn read_env(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// Starts `stratus serve <name>` with exactly `env` (and a log file in `dir`).
fn spawn(dir: &Path, name: &str, env: &[(&str, String)]) -> Process {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(binary())
        .args(["serve", name])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("STRATUS_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting stratus");
    Process {
        name: name.into(),
        child,
        instance_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_identity_makes_credentials_that_join_a_mesh_as_compose_runs_it() {
    stratus_kit::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join(".env");
    run_script(&env_file);
    let env = read_env(&env_file);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    for secret in [
        "POSTGRES_PASSWORD",
        "STRATUS_ADMIN_PASSWORD",
        "STRATUS_SEAL_KEY",
        "STRATUS_JOIN_SECRET",
    ] {
        assert!(env.get(secret).is_some_and(|v| v.len() >= 32), "{secret}");
    }
    assert!(env["STRATUS_SEAL_KEY"].starts_with("k1:"));
    let credentials: BTreeMap<&str, &str> = env
        .iter()
        .filter(|(name, _)| name.starts_with("STRATUS_JOIN_") && *name != "STRATUS_JOIN_SECRET")
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    assert_eq!(credentials.len(), 9, "{credentials:?}");
    assert!(!credentials.contains_key("STRATUS_JOIN_REGISTRY"));

    // compose.yaml hands each service the credential of its own name (the YAML's other rules
    // are deploy/mesh_rules.py's, run by deploy/check.sh).
    let compose =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/compose.yaml")).unwrap();
    for name in credentials.keys() {
        let service = name["STRATUS_JOIN_".len()..].to_ascii_lowercase();
        let line = format!("STRATUS_JOIN_TOKEN: ${{{name}:?");
        assert_eq!(compose.matches(&line).count(), 1, "{line} in compose.yaml");
        let value = credentials[name];
        assert!(value.starts_with(&format!("sjc1.{service}.")), "{value}");
    }

    // Again: the secrets stay, the credentials are the same ones.
    run_script(&env_file);
    assert_eq!(read_env(&env_file), env);

    // The registry as compose runs it: its data dir is its volume, the bundle goes to the
    // trust volume, the seal key and the join secret come from .env.
    let port = free_port();
    let trust = dir.path().join("trust");
    let bundle = trust.join("bundle.pem");
    let registry_data = dir.path().join("registry");
    let mut processes = vec![spawn(
        dir.path(),
        "registry",
        &[
            ("PORT", port.to_string()),
            ("STRATUS_BIND", "127.0.0.1".into()),
            ("STRATUS_MTLS", "required".into()),
            ("STRATUS_DATA_DIR", registry_data.display().to_string()),
            ("STRATUS_TRUST_BUNDLE", bundle.display().to_string()),
            ("STRATUS_SEAL_KEY", env["STRATUS_SEAL_KEY"].clone()),
            ("STRATUS_JOIN_SECRET", env["STRATUS_JOIN_SECRET"].clone()),
        ],
    )];
    // compose's health check: `stratus probe`, over TLS, trusting the shared bundle.
    let probe = || {
        Command::new(binary())
            .args(["probe", "--port", &port.to_string()])
            .env_clear()
            .env("STRATUS_MTLS", "required")
            .env("STRATUS_TRUST_BUNDLE", &bundle)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probe() {
        assert!(
            Instant::now() < deadline,
            "the registry never became healthy; logs in {}",
            dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The authority is in the registry's volume, sealed; the join secret and the seal key are
    // not (they live in .env); the trust folder holds the bundle alone.
    let identity = registry_data.join("identity");
    let stored = std::fs::read_to_string(identity.join("ca.json")).unwrap();
    assert!(!stored.contains("PRIVATE KEY"));
    assert!(!identity.join("join.secret").exists());
    assert!(!identity.join("seal.key").exists());
    let shared: Vec<_> = std::fs::read_dir(&trust)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(shared, ["bundle.pem"]);

    // Each credential gets its own service's certificate, and a bent one gets nothing.
    let registry = format!("https://127.0.0.1:{port}");
    let nobody = support::mesh::client_with(None);
    let ask = |credential: String| {
        nobody
            .post(format!("{registry}/v1/identity/certificates"))
            .bearer_auth(credential)
            .json(&serde_json::json!({}))
            .send()
    };
    let issued: Value = ask(credentials["STRATUS_JOIN_CATALOG"].to_string())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        issued["spiffe_id"],
        "spiffe://stratus.local/service/catalog"
    );
    let bent = credentials["STRATUS_JOIN_CATALOG"].replacen("catalog", "auth", 1);
    assert_eq!(ask(bent).await.unwrap().status(), 401);

    // A catalog as compose runs it joins with its credential and registers over mTLS.
    let catalog_data = dir.path().join("catalog");
    processes.push(spawn(
        dir.path(),
        "catalog",
        &[
            ("PORT", "0".into()),
            ("STRATUS_BIND", "127.0.0.1".into()),
            ("STRATUS_MTLS", "required".into()),
            ("STRATUS_DATA_DIR", catalog_data.display().to_string()),
            ("STRATUS_TRUST_BUNDLE", bundle.display().to_string()),
            ("STRATUS_REGISTRY_URL", format!("http://127.0.0.1:{port}")),
            ("STRATUS_EVENTS", "off".into()),
            (
                "STRATUS_JOIN_TOKEN",
                credentials["STRATUS_JOIN_CATALOG"].to_string(),
            ),
        ],
    ));
    let operator = {
        // An operator certificate from the registry's own files, as `stratus identity issue`
        // makes one (sealed with the seal key from .env).
        let out = dir.path().join("operator");
        let status = Command::new(binary())
            .args(["identity", "issue", "--operator", "tests", "--out"])
            .arg(&out)
            .env_clear()
            .env("STRATUS_DATA_DIR", &registry_data)
            .env("STRATUS_SEAL_KEY", &env["STRATUS_SEAL_KEY"])
            .env("STRATUS_JOIN_SECRET", &env["STRATUS_JOIN_SECRET"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();
        let credentials =
            stratus_identity::Credentials::new("stratus.local", &read("bundle.pem")).unwrap();
        credentials
            .set_certificate(&read("cert.pem"), &read("key.pem"), None)
            .unwrap();
        reqwest::Client::builder()
            .tls_backend_preconfigured(
                credentials.client_config(stratus_identity::Expect::Service("registry".into())),
            )
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = operator
            .get(format!("{registry}/v1/services/catalog"))
            .send()
            .await
            .ok();
        let count = match listed {
            Some(response) => response
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["instances"].as_array().map(Vec::len))
                .unwrap_or(0),
            None => 0,
        };
        if count == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the catalog never registered; logs in {}",
            dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(processes);
}
