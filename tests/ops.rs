//! Operating a running system: `stratus up` as a reconciler, driven by the CLI a user would type
//! (`stratus status | scale | rollout | logs`) and by edits to stratus.toml.
//!
//! - kill -9 of a component: `up` brings it back and `status` shows the restart (issue 8,
//!   acceptance 2);
//! - rolling restarts of catalog and orders and a scale down of catalog 3 → 1 under constant
//!   load through the gateway: zero failed requests (acceptance 1);
//! - a changed file: replicas, env and routes applied, untouched components keep their pids, an
//!   invalid file refused with the running state kept.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{binary, free_port, ADMIN_PASSWORD};

/// A `stratus up` in a temp dir, on free ports, with its own stratus.toml.
struct Up {
    dir: tempfile::TempDir,
    child: Child,
    gateway: u16,
    admin: u16,
    /// Everything `up` printed so far.
    output: Arc<Mutex<String>>,
}

impl Up {
    fn start(manifest: &str) -> Up {
        stratus_kit::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stratus.toml"), manifest).unwrap();
        let (gateway, admin) = (free_port(), free_port());
        let mut child = Command::new(binary())
            .arg("up")
            .current_dir(dir.path())
            .env("STRATUS_GATEWAY_PORT", gateway.to_string())
            .env("STRATUS_ADMIN_PORT", admin.to_string())
            .env("STRATUS_REGISTRY_PORT", free_port().to_string())
            .env("STRATUS_DNS_PORT", free_port().to_string())
            .env("STRATUS_EVENTS_PORT", free_port().to_string())
            .env("STRATUS_CONTROL_ADDR", "127.0.0.1:0")
            .env("STRATUS_DASHBOARD_ADDR", "127.0.0.1:0")
            .env("STRATUS_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("STRATUS_DATA_DIR")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        // Both streams are read to the end on threads, so `up` never blocks on a full pipe.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            let ready_tx = ready_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut all = output.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                    if line.contains("Press Ctrl-C") || line.contains("start-up failed") {
                        let _ = ready_tx.send(line.contains("Press Ctrl-C"));
                    }
                }
            });
        }
        let up = Up {
            dir,
            child,
            gateway,
            admin,
            output,
        };
        let ready = ready_rx.recv_timeout(Duration::from_secs(90));
        assert!(
            matches!(ready, Ok(true)),
            "up never became ready:\n{}",
            up.output()
        );
        up
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join(".stratus")
    }

    /// Runs `stratus <args>` against this `up` (found through the data dir).
    async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let output = tokio::process::Command::new(binary())
            .args(args)
            .env("STRATUS_DATA_DIR", self.data_dir())
            .env_remove("STRATUS_CONTROL_ADDR")
            .output()
            .await
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    async fn status(&self) -> Value {
        let (ok, stdout, stderr) = self.cli(&["status", "--json"]).await;
        assert!(ok, "status failed: {stderr}");
        serde_json::from_str(&stdout).unwrap()
    }

    /// Polls `status` until `done` holds, failing after `within`.
    async fn wait_status(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status().await;
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; status {status:#}\noutput:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn write_manifest(&self, text: &str) {
        // Written aside and renamed in, as an editor would: `up` never reads half a file.
        let aside = self.dir.path().join("stratus.toml.new");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, self.dir.path().join("stratus.toml")).unwrap();
    }

    async fn wait_output(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.output().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} never printed:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn component<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {status:#}"))
}

fn replicas<'a>(status: &'a Value, name: &str) -> &'a Vec<Value> {
    component(status, name)["replicas"].as_array().unwrap()
}

fn pids(status: &Value, name: &str) -> Vec<u64> {
    let mut pids: Vec<u64> = replicas(status, name)
        .iter()
        .filter_map(|r| r["pid"].as_u64())
        .collect();
    pids.sort();
    pids
}

/// `count` replicas, every one ready, and no rollout under way.
fn settled(status: &Value, name: &str, count: usize) -> bool {
    let replicas = replicas(status, name);
    replicas.len() == count
        && replicas.iter().all(|r| r["health"] == "ready")
        && component(status, name)["rolling_out"] == false
}

const SMALL: &str = r#"
[[components]]
name = "registry"

[[components]]
name = "auth"

[[components]]
name = "catalog"

[[components]]
name = "gateway"

[[routes]]
name = "catalog"
prefix = "/api/catalog"
service = "catalog"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_comes_back_and_status_shows_the_restart() {
    let up = Up::start(SMALL);
    let before = up.status().await;
    let catalog = &replicas(&before, "catalog")[0];
    assert_eq!(catalog["health"], "ready", "{before:#}");
    assert_eq!(catalog["restarts"], 0);
    let pid = catalog["pid"].as_u64().unwrap();
    assert!(catalog["port"].as_u64().is_some(), "{before:#}");
    assert!(
        catalog["registry"].is_string(),
        "the registry lists it: {before:#}"
    );

    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let after = up
        .wait_status("catalog back after kill -9", Duration::from_secs(30), |s| {
            let r = &replicas(s, "catalog");
            r.len() == 1 && r[0]["health"] == "ready" && r[0]["pid"].as_u64() != Some(pid)
        })
        .await;
    let catalog = &replicas(&after, "catalog")[0];
    assert_eq!(catalog["restarts"], 1, "{after:#}");
    assert_eq!(catalog["last_exit"], "killed by SIGKILL", "{after:#}");
    // The new process serves through the gateway.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = http
            .get(format!(
                "http://127.0.0.1:{}/api/catalog/products",
                up.gateway
            ))
            .send()
            .await;
        if response.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "catalog not served after restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The table a person reads shows the same.
    let (ok, table, _) = up.cli(&["status"]).await;
    assert!(ok);
    let line = table
        .lines()
        .find(|l| l.starts_with("catalog"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("killed by SIGKILL") && line.contains("ready"),
        "{table}"
    );
    assert!(table.starts_with("COMPONENT"), "{table}");

    // Logs: the last lines of each catalog replica, labelled.
    let (ok, logs, stderr) = up.cli(&["logs", "catalog", "-n", "3"]).await;
    assert!(ok, "{stderr}");
    assert!(
        !logs.is_empty() && logs.lines().all(|l| l.starts_with("catalog-0 | ")),
        "{logs}"
    );
    let (ok, _, stderr) = up.cli(&["logs", "nothing"]).await;
    assert!(!ok && stderr.contains("no component `nothing`"), "{stderr}");

    // Bad requests are refused clearly and change nothing.
    for (args, expected) in [
        (&["scale", "nothing=2"][..], "no component `nothing`"),
        (&["scale", "gateway=2"][..], "fixed port"),
        (&["scale", "catalog=many"][..], "whole number"),
        (&["scale", "catalog"][..], "component=replicas"),
        (&["scale", "catalog=1000"][..], "at most"),
        (&["rollout", "nothing"][..], "no component `nothing`"),
    ] {
        let (ok, _, stderr) = up.cli(args).await;
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let control = std::fs::read_to_string(up.data_dir().join("control.addr")).unwrap();
    let token = std::fs::read_to_string(up.data_dir().join("control.token")).unwrap();
    let http = reqwest::Client::new();
    // Without the control token, nothing: the API can stop and start everything.
    for shown in [None, Some("not-the-token")] {
        let mut request = http
            .post(format!("http://{control}/v1/scale"))
            .json(&serde_json::json!({"replicas": {"catalog": 0}}));
        if let Some(shown) = shown {
            request = request.bearer_auth(shown);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{shown:?}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let response = http
        .post(format!("http://{control}/v1/scale"))
        .bearer_auth(token.trim())
        .header("content-type", "application/json")
        .body(r#"{"replicas": {"catalog": -1}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let unchanged = up.status().await;
    assert_eq!(component(&unchanged, "catalog")["desired"], 1);
    assert_eq!(component(&unchanged, "gateway")["desired"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_says_when_up_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::create_dir_all(dir.path().join(".stratus")).unwrap();
    std::fs::write(
        dir.path().join(".stratus/control.addr"),
        format!("127.0.0.1:{port}"),
    )
    .unwrap();
    for args in [
        &["status"][..],
        &["scale", "catalog=2"],
        &["rollout", "catalog"],
        &["logs"],
    ] {
        let output = Command::new(binary())
            .args(args)
            .current_dir(dir.path())
            .env_remove("STRATUS_CONTROL_ADDR")
            .env_remove("STRATUS_DATA_DIR")
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("stratus up is not running"),
            "{args:?}: {stderr}"
        );
    }
}

const SHOP: &str = r#"
[[components]]
name = "registry"

[[components]]
name = "auth"

[[components]]
name = "catalog"
replicas = 3
env = { CATALOG_DEMO_DATA = "true" }

[[components]]
name = "orders"
replicas = 2

[[components]]
name = "gateway"

[[routes]]
name = "auth"
prefix = "/auth"
service = "auth"
auth = "none"

[[routes]]
name = "catalog-read"
prefix = "/api/catalog"
methods = ["GET", "HEAD"]
service = "catalog"

[[routes]]
name = "orders"
prefix = "/api/orders"
service = "orders"
auth = "required"
"#;

/// Counts of a load loop's outcomes, and the first few failures.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread")]
async fn rollouts_and_scale_down_under_load_fail_no_request() {
    let up = Up::start(SHOP);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let gateway = format!("http://127.0.0.1:{}", up.gateway);
    let login: Value = http
        .post(format!("{gateway}/auth/login"))
        .json(&serde_json::json!({"email": support::ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_string();

    let tally = Arc::new(Tally::default());
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (http, gateway, token, tally, running) = (
            http.clone(),
            gateway.clone(),
            token.clone(),
            tally.clone(),
            running.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while running.load(Ordering::Relaxed) {
                n += 1;
                let request = if (n + client) % 2 == 0 {
                    http.get(format!("{gateway}/api/catalog/products"))
                } else {
                    http.get(format!("{gateway}/api/orders"))
                        .bearer_auth(&token)
                };
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        // Read the body too: a response cut short is a failure.
                        match response.bytes().await {
                            Ok(_) => tally.ok.fetch_add(1, Ordering::Relaxed),
                            Err(error) => {
                                tally
                                    .failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("body: {error}"));
                                tally.failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                    outcome => {
                        let what = match outcome {
                            Ok(response) => format!(
                                "{} {}",
                                response.status(),
                                response.text().await.unwrap_or_default()
                            ),
                            Err(error) => format!("{error:?}"),
                        };
                        tally.failures.lock().unwrap().push(what);
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let before = up.status().await;
    for name in ["catalog", "orders"] {
        let (ok, progress, stderr) = up.cli(&["rollout", name]).await;
        assert!(
            ok,
            "rollout {name} failed: {progress}{stderr}\n{}",
            up.output()
        );
        assert!(
            progress.contains(&format!("rollout of {name} complete")),
            "{progress}"
        );
        assert!(progress.contains("routed by the gateway"), "{progress}");
    }
    let after = up.status().await;
    for name in ["catalog", "orders"] {
        assert!(
            settled(&after, name, replicas(&before, name).len()),
            "{after:#}"
        );
        let (old, new) = (pids(&before, name), pids(&after, name));
        assert!(
            old.iter().all(|p| !new.contains(p)),
            "{name}: {old:?} → {new:?}"
        );
    }
    assert_eq!(
        pids(&before, "auth"),
        pids(&after, "auth"),
        "auth untouched"
    );

    let (ok, out, stderr) = up.cli(&["scale", "catalog=1"]).await;
    assert!(ok, "{stderr}");
    assert!(out.contains("catalog: 3 → 1"), "{out}");
    up.wait_status("catalog scaled down to 1", Duration::from_secs(30), |s| {
        settled(s, "catalog", 1)
    })
    .await;
    // A little more load on the one that is left, then stop.
    let ok_then = tally.ok.load(Ordering::Relaxed);
    while tally.ok.load(Ordering::Relaxed) < ok_then + 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.store(false, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (ok, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    let failures = tally.failures.lock().unwrap();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed; first: {:?}",
        ok + failed,
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 200, "only {ok} requests made");
    eprintln!("{ok} requests, 0 failed, during two rollouts and a scale down");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_file_is_reconciled_and_a_broken_one_refused() {
    let up = Up::start(SMALL);
    let start = up.status().await;
    let (registry, auth, catalog, gateway) = (
        pids(&start, "registry"),
        pids(&start, "auth"),
        pids(&start, "catalog"),
        pids(&start, "gateway"),
    );

    // Replicas 1 → 2: one more catalog; the rest untouched.
    let two = SMALL.replacen(
        "name = \"catalog\"\n",
        "name = \"catalog\"\nreplicas = 2\n",
        1,
    );
    up.write_manifest(&two);
    let now = up
        .wait_status(
            "catalog scaled up from the file",
            Duration::from_secs(30),
            |s| settled(s, "catalog", 2),
        )
        .await;
    assert!(pids(&now, "catalog").contains(&catalog[0]), "{now:#}");
    assert_eq!(pids(&now, "auth"), auth);
    assert_eq!(pids(&now, "gateway"), gateway);
    let catalog = pids(&now, "catalog");

    // New env for auth: auth alone restarts (in a rolling way); catalog keeps its processes.
    let env = two.replacen(
        "name = \"auth\"\n",
        "name = \"auth\"\nenv = { STRATUS_LOG = \"debug\" }\n",
        1,
    );
    up.write_manifest(&env);
    let now = up
        .wait_status(
            "auth rolled for its new env",
            Duration::from_secs(40),
            |s| settled(s, "auth", 1) && pids(s, "auth") != auth,
        )
        .await;
    assert_eq!(pids(&now, "catalog"), catalog);
    assert_eq!(pids(&now, "registry"), registry);
    assert_eq!(pids(&now, "gateway"), gateway);

    // Routes: the gateway picks up a new one from the same file.
    let routes = format!(
        "{env}\n[[routes]]\nname = \"shop\"\nprefix = \"/shop\"\nservice = \"catalog\"\nstrip_prefix = true\n"
    );
    up.write_manifest(&routes);
    let http = support::mesh::up_operator(&up.data_dir());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let routes: Value = http
            .get(format!("https://127.0.0.1:{}/v1/routes", up.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "shop")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never loaded the new route: {routes}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = up.status().await;
    assert_eq!(pids(&now, "catalog"), catalog);
    assert_eq!(
        pids(&now, "gateway"),
        gateway,
        "routes reload without a restart"
    );

    // A broken file: refused with a clear line; everything keeps running as it was.
    up.write_manifest("[[components]]\nname = \"catalog\"\nreplicas = \"lots\"\n");
    up.wait_output("refused", Duration::from_secs(10)).await;
    let now = up.status().await;
    assert_eq!(pids(&now, "catalog"), catalog);
    assert_eq!(pids(&now, "registry"), registry);
    assert!(settled(&now, "catalog", 2));

    // `stratus scale` overrides the file until the file's count changes again.
    let (ok, _, stderr) = up.cli(&["scale", "catalog=1"]).await;
    assert!(ok, "{stderr}");
    up.wait_status(
        "catalog scaled down by the CLI",
        Duration::from_secs(30),
        |s| settled(s, "catalog", 1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_loop_backs_off_and_logs_follow_it() {
    let up = Up::start(
        r#"
[[components]]
name = "registry"

[[components]]
name = "crasher"
replicas = 0
command = ["sh", "-c", "echo boom; exit 3"]
"#,
    );
    // Start it while running: it exits at once, again and again.
    let (ok, _, stderr) = up.cli(&["scale", "crasher=1"]).await;
    assert!(ok, "{stderr}");
    let mut follow = tokio::process::Command::new(binary())
        .args(["logs", "crasher", "-f", "-n", "0"])
        .env("STRATUS_DATA_DIR", up.data_dir())
        .env_remove("STRATUS_CONTROL_ADDR")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = up
        .wait_status("crasher restarted twice", Duration::from_secs(30), |s| {
            replicas(s, "crasher")
                .first()
                .is_some_and(|r| r["restarts"].as_u64() >= Some(2))
        })
        .await;
    let crasher = &replicas(&status, "crasher")[0];
    assert_eq!(crasher["last_exit"], "exit code 3", "{status:#}");
    // Back-off doubles: 1 s after the first exit, 2 s after the second.
    up.wait_output(
        "crasher #0 exited (exit code 3); restarting in 2 s",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        up.output().contains("restarting in 1 s (restart 1)"),
        "{}",
        up.output()
    );

    // `logs -f` prints what each new process writes, as it writes it.
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a followed line within the back-off")
        .unwrap()
        .unwrap();
    assert_eq!(line, "crasher-0 | boom");
    follow.kill().await.unwrap();
}

/// The control API, like every admin API, takes an admin's access token (from `/auth/login`)
/// besides the control token: a script with an admin's login needs no file from the data dir.
#[tokio::test(flavor = "multi_thread")]
async fn an_admins_access_token_opens_the_control_api() {
    let up = Up::start(
        r#"
[[components]]
name = "registry"

[[components]]
name = "auth"

[[components]]
name = "catalog"

[[components]]
name = "gateway"

[[routes]]
name = "auth"
prefix = "/auth"
service = "auth"
auth = "none"
"#,
    );
    let http = reqwest::Client::new();
    let login = |email: &'static str, password: &'static str| {
        let http = http.clone();
        let url = format!("http://127.0.0.1:{}/auth/login", up.gateway);
        async move {
            let response = http
                .post(url)
                .json(&serde_json::json!({"email": email, "password": password}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "login of {email}");
            let body: Value = response.json().await.unwrap();
            body["access_token"].as_str().unwrap().to_string()
        }
    };
    let admin = login(support::ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let signup = http
        .post(format!("http://127.0.0.1:{}/auth/signup", up.gateway))
        .json(&serde_json::json!({"email": "shopper@example.com", "password": "customer-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 201);
    let customer = login("shopper@example.com", "customer-password").await;
    // The customer's token with its roles rewritten to admin: the signature no longer holds.
    let forged = {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let parts: Vec<&str> = customer.split('.').collect();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["roles"] = serde_json::json!(["admin"]);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        format!("{}.{payload}.{}", parts[0], parts[2])
    };

    let control = std::fs::read_to_string(up.data_dir().join("control.addr")).unwrap();
    let status_url = format!("http://{control}/v1/status");
    for (what, token, expected) in [
        ("no token", None, 401),
        ("a garbage token", Some("not-a-token"), 401),
        ("a forged admin token", Some(forged.as_str()), 401),
        ("a customer's token", Some(customer.as_str()), 403),
    ] {
        let mut request = http.get(&status_url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), expected, "{what}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
    }
    let response = http
        .get(&status_url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let status: Value = response.json().await.unwrap();
    assert_eq!(component(&status, "catalog")["desired"], 1, "{status:#}");

    // A change, too: the admin scales catalog out, as `stratus scale` would.
    let response = http
        .post(format!("http://{control}/v1/scale"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"replicas": {"catalog": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    up.wait_status(
        "catalog scaled by an admin's token",
        Duration::from_secs(30),
        |s| settled(s, "catalog", 2),
    )
    .await;
    // The control token and the CLI work as before.
    let (ok, _, stderr) = up.cli(&["status"]).await;
    assert!(ok, "{stderr}");
}

/// The shop's edge and orders with the event sink.
const WITH_SINK: &str = r#"
[[components]]
name = "registry"

[[components]]
name = "events"

[[components]]
name = "auth"

[[components]]
name = "catalog"

[[components]]
name = "orders"

[[components]]
name = "gateway"

[[routes]]
name = "auth"
prefix = "/auth"
service = "auth"
auth = "none"

[[routes]]
name = "orders"
prefix = "/api/orders"
service = "orders"
auth = "required"

[[intentions]]
from = "orders"
to = "catalog"
"#;

/// The `<label> | <JSON>` lines of `stratus logs`, as (label, line).
fn labelled(output: &str) -> Vec<(String, Value)> {
    output
        .lines()
        .map(|line| {
            let (label, json) = line
                .split_once(" | ")
                .unwrap_or_else(|| panic!("not labelled: {line}\n{output}"));
            let json = serde_json::from_str(json).unwrap_or_else(|_| panic!("{line}"));
            (label.to_string(), json)
        })
        .collect()
}

/// An order for a product the catalog does not have (a 422 once orders runs and finds the
/// catalog), sent through `gateway` in trace `trace`.
async fn unknown_product(
    http: &reqwest::Client,
    gateway: &str,
    token: &str,
    trace: &str,
    key: &str,
) -> reqwest::Response {
    http.post(format!("{gateway}/api/orders"))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .json(&serde_json::json!({"items": [{"product_id": "no-such-product", "quantity": 1}]}))
        .send()
        .await
        .unwrap()
}

/// `stratus logs` with the event sink running reads the lines from it: every replica's, merged
/// in time order, by trace, level and text; with the sink gone from stratus.toml, from the
/// replicas' files, by the same filters.
#[tokio::test(flavor = "multi_thread")]
async fn logs_come_from_the_sink_when_one_runs_and_from_files_otherwise() {
    let up = Up::start(WITH_SINK);
    let http = reqwest::Client::new();
    let gateway = format!("http://127.0.0.1:{}", up.gateway);
    let credentials =
        serde_json::json!({"email": "ada@example.com", "password": "customer-password"});
    let signup = http
        .post(format!("{gateway}/auth/signup"))
        .json(&credentials)
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 201);
    let login: Value = http
        .post(format!("{gateway}/auth/login"))
        .json(&credentials)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    // Until the gateway routes to orders and orders finds the catalog: 503, and then the 422.
    let deadline = Instant::now() + Duration::from_secs(20);
    for attempt in 0.. {
        let refused = unknown_product(&http, &gateway, token, trace, &format!("k-{attempt}")).await;
        match refused.status().as_u16() {
            422 => break,
            503 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("{other}: {}", refused.text().await.unwrap()),
        }
    }

    // From the sink: the gateway's and orders' lines of the trace, oldest first.
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let (ok, stdout, stderr) = up.cli(&["logs", "--trace", trace, "-n", "100"]).await;
        assert!(ok, "{stderr}");
        let lines = labelled(&stdout);
        let from = |label: &str| lines.iter().any(|(l, _)| l == label);
        if from("gateway-0") && from("orders-0") {
            break lines;
        }
        assert!(Instant::now() < deadline, "{stdout}\n{}", up.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|(_, line)| line["trace_id"] == trace));
    assert!(lines[0].1["time"].as_str() <= lines[1].1["time"].as_str());
    let (_, orders) = lines.iter().find(|(l, _)| l == "orders-0").unwrap();
    assert_eq!(
        orders["message"],
        "order refused: the catalog has no such product"
    );

    let (ok, stdout, _) = up
        .cli(&["logs", "--trace", trace, "--grep", "NO SUCH PRODUCT"])
        .await;
    assert!(ok);
    let found = labelled(&stdout);
    assert_eq!(found.len(), 1, "{stdout}");
    assert_eq!(found[0].0, "orders-0");
    let (ok, stdout, _) = up
        .cli(&["logs", "orders", "--level", "warn", "--trace", trace])
        .await;
    assert!(ok && stdout.is_empty(), "{stdout}");
    // Every component ships its own lines (over mutual TLS, as itself) but the sink.
    let (ok, stdout, _) = up.cli(&["logs", "-n", "1000"]).await;
    assert!(ok);
    let mut shipping: Vec<String> = labelled(&stdout)
        .into_iter()
        .map(|(label, _)| label)
        .collect();
    shipping.sort();
    shipping.dedup();
    assert_eq!(
        shipping,
        ["auth-0", "catalog-0", "gateway-0", "orders-0", "registry-0"],
        "{stdout}"
    );
    let (ok, _, stderr) = up.cli(&["logs", "--trace", "nope"]).await;
    assert!(!ok && stderr.contains("--trace must be"), "{stderr}");

    // -f: the sink's live tail, the lines of requests made after it started.
    let followed = "5a3f1c2e9b7d4e6f8a0b1c2d3e4f5a6b";
    let mut follow = tokio::process::Command::new(support::binary())
        .args(["logs", "-f", "-n", "0", "--trace", followed])
        .env("STRATUS_DATA_DIR", up.data_dir())
        .env_remove("STRATUS_CONTROL_ADDR")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(follow.stdout.take().unwrap());
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Ordered until lines come: the tail starts with its answer's head, which -f does not wait for.
    for attempt in 0.. {
        let order =
            unknown_product(&http, &gateway, token, followed, &format!("f-{attempt}")).await;
        assert_eq!(order.status(), 422);
        let mut line = String::new();
        while let Ok(Ok(read)) = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line),
        )
        .await
        {
            assert!(read > 0, "logs -f ended: {seen:?}");
            seen.push(std::mem::take(&mut line));
        }
        let labels: Vec<String> = labelled(&seen.concat())
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        if labels.contains(&"gateway-0".to_string()) && labels.contains(&"orders-0".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "logs -f printed {seen:?}");
    }
    follow.kill().await.unwrap();

    // From the files, asked for or with no sink: the same lines as each replica wrote them.
    let from_files = |stdout: &str| {
        let lines = labelled(stdout);
        let mut labels: Vec<String> = lines.iter().map(|(l, _)| l.clone()).collect();
        labels.sort();
        assert_eq!(labels, ["gateway-0", "orders-0"], "{stdout}");
        let (_, orders) = lines.iter().find(|(l, _)| l == "orders-0").unwrap();
        assert_eq!(orders["span"]["trace_id"], trace);
        assert_eq!(
            orders["fields"]["message"],
            "order refused: the catalog has no such product"
        );
    };
    let (ok, stdout, stderr) = up.cli(&["logs", "--files", "--trace", trace]).await;
    assert!(ok, "{stderr}");
    from_files(&stdout);
    up.write_manifest(&WITH_SINK.replace("[[components]]\nname = \"events\"\n", ""));
    up.wait_status("the sink stopped", Duration::from_secs(30), |status| {
        status["components"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"] != "events")
    })
    .await;
    let (ok, stdout, stderr) = up.cli(&["logs", "--trace", trace]).await;
    assert!(ok, "{stderr}");
    from_files(&stdout);
}
