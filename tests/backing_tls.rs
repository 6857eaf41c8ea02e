//! Backing services over TLS where their URL asks for it: PostgreSQL
//! (`?sslmode=verify-full&sslrootcert=<CA file>`), Redis (`rediss://`) and NATS (`tls://`),
//! each against a real server that takes TLS connections only, with a CA of the test's own.
//!
//! Asking for TLS is never answered with plaintext: a server without TLS, or one whose
//! certificate the CA does not vouch for, is a start-up error that names the backend, and the
//! URL's password shows up in no log and no command line.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::{Connection, Row};
use stratus_testing::servers::{Nats, Postgres, Redis};
use stratus_testing::tls::TestCa;
use stratus_testing::{Need, Test};
use support::System;

/// The password every PostgreSQL URL here carries. The test server trusts loopback, so it is
/// never checked; it is there to be looked for where it must not be.
const DB_PASSWORD: &str = "pg-tls-secret-7d1f";

/// `postgres://stratus:<password>@127.0.0.1:<port>/<name>` for a database made on `postgres`.
fn database_with_password(postgres: &Postgres, name: &str) -> String {
    postgres
        .database(name)
        .replacen("stratus@", &format!("stratus:{DB_PASSWORD}@"), 1)
}

/// The URL asking for TLS with the server's certificate and name checked against `ca`.
fn verify_full(url: &str, ca: &Path) -> String {
    format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display())
}

async fn services_use_postgres_over_tls_when_the_url_asks() {
    let postgres = Postgres::start_tls();
    let ca = postgres.ca_file();
    let extra = [
        (
            "auth",
            "DATABASE_URL",
            verify_full(&database_with_password(&postgres, "auth"), ca),
        ),
        (
            "catalog",
            "DATABASE_URL",
            verify_full(&database_with_password(&postgres, "catalog"), ca),
        ),
    ];
    let system = System::start_with(1, &extra).await;

    // auth stores and reads users, catalog products, both in PostgreSQL over TLS.
    let admin = system.admin_token().await;
    let created = system
        .http
        .post(system.url("/api/catalog/products"))
        .bearer_auth(&admin)
        .json(&json!({"name": "Tea", "description": "green", "price_cents": 450, "stock": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"].clone();
    let products = system.products().await;
    assert_eq!(products.len(), 1);
    assert_eq!(products[0]["id"], id);
    assert!(!system.dir.path().join("catalog.db").exists());
    assert!(!system.dir.path().join("auth.db").exists());

    // The server's own view: every connection of the services is TLS. (The server refuses
    // plaintext anyway, so a client falling back to it would not have got this far.)
    let admin_url = verify_full(
        &format!("postgres://stratus@127.0.0.1:{}/postgres", postgres.port),
        ca,
    );
    let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let ours: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(ours, "the checking connection itself is TLS");
    let rows = sqlx::query(
        "SELECT a.datname::text AS db, s.ssl, coalesce(s.version, '') AS version \
         FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid \
         WHERE a.datname IN ('auth', 'catalog')",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for db in ["auth", "catalog"] {
        assert!(
            rows.iter().any(|row| row.get::<String, _>("db") == db),
            "{db} has connections open"
        );
    }
    for row in &rows {
        let (db, ssl, version): (String, bool, String) =
            (row.get("db"), row.get("ssl"), row.get("version"));
        assert!(ssl, "a connection to {db} is not TLS");
        assert!(version.starts_with("TLSv1."), "{db}: {version}");
    }
    conn.close().await.unwrap();

    // The password is in no log line and on no command line.
    for name in ["auth", "catalog"] {
        let log = std::fs::read_to_string(system.log_path(name, 0)).unwrap();
        assert!(
            !log.contains(DB_PASSWORD),
            "{name}'s log shows the password"
        );
    }
    for process in &system.processes {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", process.pid())).unwrap();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(DB_PASSWORD),
            "{}'s command line shows the password",
            process.name
        );
    }
}

async fn asking_postgres_for_tls_without_it_is_a_start_up_error() {
    let postgres = Postgres::start();
    let url = format!(
        "{}?sslmode=require",
        database_with_password(&postgres, "catalog")
    );
    let (text, dir) = fails_to_start("catalog", &[("DATABASE_URL", url.as_str())]).await;
    assert!(text.contains("connecting to the database at"), "{text}");
    assert!(
        text.contains(&format!(
            "127.0.0.1:{}/catalog?sslmode=require",
            postgres.port
        )),
        "the message names the database: {text}"
    );
    assert!(text.contains("server does not support TLS"), "{text}");
    // And `require` is said to be weaker than it looks: sqlx does not check the certificate.
    assert!(
        text.contains("does not check the server's certificate"),
        "{text}"
    );
    assert!(
        !text.contains(DB_PASSWORD),
        "the password is printed: {text}"
    );
    assert!(
        !dir.path().join("catalog.db").exists(),
        "no fallback to SQLite"
    );
}

async fn postgres_with_a_certificate_from_another_ca_is_a_start_up_error() {
    let postgres = Postgres::start_tls();
    let other = tempfile::tempdir().unwrap();
    let wrong_ca = TestCa::new().write_cert(&other.path().join("other-ca.crt"));
    let url = verify_full(&database_with_password(&postgres, "catalog"), &wrong_ca);
    let (text, _dir) = fails_to_start("catalog", &[("DATABASE_URL", url.as_str())]).await;
    assert!(text.contains("connecting to the database at"), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{}/catalog", postgres.port)),
        "{text}"
    );
    assert!(text.contains("certificate"), "{text}");
    assert!(
        !text.contains(DB_PASSWORD),
        "the password is printed: {text}"
    );
}

async fn the_catalog_caches_in_redis_over_tls() {
    let redis = Redis::start_tls();
    let ca = redis.ca_file().display().to_string();
    let extra = [
        ("catalog", "CACHE_URL", redis.url()),
        ("catalog", "SSL_CERT_FILE", ca),
    ];
    let system = System::start_with(1, &extra).await;
    let admin = system.admin_token().await;
    let created: Value = system
        .http
        .post(system.url("/api/catalog/products"))
        .bearer_auth(&admin)
        .json(&json!({"name": "Tea", "description": "green", "price_cents": 450, "stock": 3}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = format!(
        "/api/catalog/products/{}",
        created["id"].as_str().expect("an id")
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        // Past the gateway's edge cache: the catalog's own cache is the one on Redis.
        let response = system
            .http
            .get(system.url(&path))
            .header("cache-control", "no-store")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        seen.push(
            response.headers()["x-server-cache"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    // The server has a TLS port only: a hit was stored and read over TLS.
    assert_eq!(seen, ["miss", "hit"]);
}

async fn redis_with_a_certificate_the_system_does_not_trust_is_a_start_up_error() {
    let redis = Redis::start_tls();
    let url = redis.url();
    let (text, _dir) = fails_to_start("catalog", &[("CACHE_URL", url.as_str())]).await;
    assert!(
        text.contains(&format!("connecting to Redis at {url}")),
        "{text}"
    );
    assert!(text.contains("certificate"), "{text}");
}

async fn a_service_uses_nats_over_tls_when_the_url_asks() {
    let nats = Nats::start_tls();
    let ca = nats.ca_file().display().to_string();
    let url = nats.url();
    let mut system = System::start(1).await;
    system.spawn(
        "notifications",
        &[("BROKER_URL", url.as_str()), ("SSL_CERT_FILE", ca.as_str())],
    );
    system.wait_registered("notifications", 1).await;

    // The server's view: the service's connection is TLS, and its consumers exist in JetStream.
    let monitor = nats.monitor_url();
    let connections = system.get_json(format!("{monitor}/connz")).await;
    let connections = connections["connections"].as_array().unwrap().clone();
    assert!(!connections.is_empty());
    for connection in &connections {
        let version = connection["tls_version"].as_str().unwrap_or_default();
        assert!(version.starts_with("1."), "not TLS: {connection}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let jsz = system
            .get_json(format!("{monitor}/jsz?consumers=true"))
            .await;
        let consumers = jsz["consumers"].as_u64().unwrap_or_default();
        if consumers >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no consumers in JetStream: {jsz}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn nats_with_a_certificate_the_system_does_not_trust_is_a_start_up_error() {
    let nats = Nats::start_tls();
    let url = nats.url();
    let (text, _dir) = fails_to_start("notifications", &[("BROKER_URL", url.as_str())]).await;
    assert!(
        text.contains(&format!("connecting to the broker at {url}")),
        "{text}"
    );
    assert!(text.contains("certificate"), "{text}");
}

/// Runs `stratus serve <service>` with `env` (and a registry to join the mesh with, nothing
/// else), expects it to exit unsuccessfully within 30 s, and returns what it printed and its
/// data directory. A process still running then is killed and fails the test.
async fn fails_to_start(service: &str, env: &[(&str, &str)]) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let registry = support::registry::Registry::start("registry", "memory", dir.path()).await;
    let log_path = dir.path().join("output.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new(support::binary());
    command
        .args(["serve", service])
        .envs(support::mesh::shared().env(service))
        .env("STRATUS_DATA_DIR", dir.path())
        .env("STRATUS_REGISTRY_URL", registry.url(""))
        .env("STRATUS_LOG_FORMAT", "text")
        .env("RUST_LIB_BACKTRACE", "0")
        // The system's roots only: no CA of a test is trusted by accident.
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env_remove("DATABASE_URL")
        .env_remove("CACHE_URL")
        .env_remove("BROKER_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut process = support::Process {
        name: service.into(),
        child: command.spawn().unwrap(),
        instance_id: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            process.kill9();
            panic!(
                "{service} kept running: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(!status.success(), "{service} must refuse to start: {text}");
    (text, dir)
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![
        Test::new(
            "services_use_postgres_over_tls_when_the_url_asks",
            services_use_postgres_over_tls_when_the_url_asks,
        )
        .needs(&[Need::Postgres]),
        Test::new(
            "asking_postgres_for_tls_without_it_is_a_start_up_error",
            asking_postgres_for_tls_without_it_is_a_start_up_error,
        )
        .needs(&[Need::Postgres]),
        Test::new(
            "postgres_with_a_certificate_from_another_ca_is_a_start_up_error",
            postgres_with_a_certificate_from_another_ca_is_a_start_up_error,
        )
        .needs(&[Need::Postgres]),
        Test::new(
            "the_catalog_caches_in_redis_over_tls",
            the_catalog_caches_in_redis_over_tls,
        )
        .needs(&[Need::Redis]),
        Test::new(
            "redis_with_a_certificate_the_system_does_not_trust_is_a_start_up_error",
            redis_with_a_certificate_the_system_does_not_trust_is_a_start_up_error,
        )
        .needs(&[Need::Redis]),
        Test::new(
            "a_service_uses_nats_over_tls_when_the_url_asks",
            a_service_uses_nats_over_tls_when_the_url_asks,
        )
        .needs(&[Need::Nats]),
        Test::new(
            "nats_with_a_certificate_the_system_does_not_trust_is_a_start_up_error",
            nats_with_a_certificate_the_system_does_not_trust_is_a_start_up_error,
        )
        .needs(&[Need::Nats]),
    ])
}
