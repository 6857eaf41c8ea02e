//! `stratus up` as a user runs it: everything starts, answers through the gateway, and stops
//! cleanly on SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{binary, free_port};

#[test]
fn up_starts_the_system_and_stops_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, admin, registry, dns, events) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let mut up = Command::new(binary())
        .arg("up")
        .current_dir(dir.path())
        .env("STRATUS_GATEWAY_PORT", gateway.to_string())
        .env("STRATUS_ADMIN_PORT", admin.to_string())
        .env("STRATUS_REGISTRY_PORT", registry.to_string())
        .env("STRATUS_DNS_PORT", dns.to_string())
        .env("STRATUS_EVENTS_PORT", events.to_string())
        .env("STRATUS_CONTROL_ADDR", "127.0.0.1:0")
        .env("STRATUS_DASHBOARD_ADDR", "127.0.0.1:0")
        .env_remove("STRATUS_ADMIN_PASSWORD")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    let started = Instant::now();
    let mut output = String::new();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        output.push_str(&line);
        output.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "up never became ready:\n{output}"
        );
    }
    for expected in [
        "registry",
        "auth",
        "catalog",
        "gateway",
        "admin@stratus.local",
        "Ready in",
        "Mutual TLS     Required",
    ] {
        assert!(
            output.contains(expected),
            "missing {expected:?} in:\n{output}"
        );
    }
    // The password printed is the one in the data directory, and it logs in.
    let password = std::fs::read_to_string(dir.path().join(".stratus/admin-password")).unwrap();
    assert!(output.contains(password.trim()));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        stratus_kit::install_crypto_provider();
        let http = reqwest::Client::new();
        let products = http
            .get(format!("http://127.0.0.1:{gateway}/api/catalog/products"))
            .send()
            .await
            .unwrap();
        assert_eq!(products.status(), 200);
        // The demo products, seeded once although two catalogs started together.
        let products: Vec<serde_json::Value> = products.json().await.unwrap();
        assert_eq!(products.len(), 6, "{products:?}");
        let openapi = http
            .get(format!(
                "http://127.0.0.1:{gateway}/api/catalog/openapi.json"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(openapi.status(), 200);
        let login = http
            .post(format!("http://127.0.0.1:{gateway}/auth/login"))
            .json(&serde_json::json!({"email": "admin@stratus.local", "password": password.trim()}))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 200);
        // Internal ports take only Stratus certificates: the registry answers the operator up
        // certifies, and nothing in plaintext.
        let plain = http
            .get(format!("http://127.0.0.1:{registry}/v1/services"))
            .send()
            .await;
        assert!(plain.is_err(), "the registry answered in plaintext");
        let operator = support::mesh::up_operator(&dir.path().join(".stratus"));
        let services: serde_json::Value = operator
            .get(format!("https://127.0.0.1:{registry}/v1/services"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(services["services"]["catalog"].as_array().unwrap().len(), 2);
        assert_eq!(
            services["services"]["gateway"].as_array().unwrap().len(),
            1,
            "the gateway registers itself"
        );

        // The dashboard: one click on the printed link (its token becomes a cookie), never
        // without it.
        let link = output
            .lines()
            .find_map(|line| line.trim().strip_prefix("Dashboard"))
            .and_then(|rest| rest.split_whitespace().next())
            .expect("a dashboard link")
            .to_string();
        let base = link.split("/?").next().unwrap().to_string();
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let first = browser.get(&link).send().await.unwrap();
        assert_eq!(first.status(), 303);
        let cookie = first.headers()["set-cookie"].to_str().unwrap();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let cookie = cookie.split(';').next().unwrap().to_string();
        let page = browser
            .get(format!("{base}/"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.text().await.unwrap().contains("<html"));
        let stats = browser
            .get(format!("{base}/v1/stats"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(stats.status(), 200);
        for refused in [
            browser
                .get(format!("{base}/v1/stats"))
                .send()
                .await
                .unwrap(),
            browser
                .get(format!("{base}/?token=guess"))
                .send()
                .await
                .unwrap(),
            browser
                .get(format!("{base}/v1/stats"))
                .header("cookie", "stratus_dashboard=guess")
                .send()
                .await
                .unwrap(),
        ] {
            assert_eq!(refused.status(), 401);
        }
    });

    unsafe {
        libc::kill(up.id() as i32, libc::SIGTERM);
    }
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = up.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(20),
            "up did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "up exited with {status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("Stopped")), "{rest:?}");
    // Every port is free again: no process was left behind.
    for port in [gateway, admin, registry, dns, events] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still open"
        );
    }
}
