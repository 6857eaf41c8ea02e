//! `stratus backup` / `stratus restore`: a running system with data in every database (users,
//! a profile, orders through the whole saga, payments, notifications, event records, the broker
//! queue) is backed up while a customer keeps ordering; the backup restores into a fresh data
//! dir where a new system starts and serves the same data; a backup of the stopped system
//! restores to a copy equal to it in every row of every table; restore refuses a running
//! target, an existing target without --yes, and a corrupted backup. On SQLite, and on
//! PostgreSQL (one database per service, pg_dump / pg_restore).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::Connection;
use stratus_testing::servers::Postgres;
use stratus_testing::{Need, Test};
use support::{binary, free_port};

const SERVICES: &[&str] = &[
    "auth",
    "catalog",
    "profile",
    "orders",
    "payments",
    "notifications",
    "events",
];

/// Where one system's databases live: a data dir, and PostgreSQL URLs for the services that
/// use PostgreSQL (written into its stratus.toml).
struct Setup {
    work: PathBuf,
    data: PathBuf,
    postgres: BTreeMap<String, String>,
}

impl Setup {
    fn new(root: &Path, name: &str, postgres: BTreeMap<String, String>) -> Setup {
        let work = root.join(name);
        std::fs::create_dir_all(&work).unwrap();
        // The repository's stratus.toml, each service given its own DATABASE_URL when on
        // PostgreSQL.
        let mut text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/stratus.toml")).unwrap();
        for (service, url) in &postgres {
            let header = format!("[[components]]\nname = \"{service}\"\n");
            assert!(text.contains(&header), "{service} in stratus.toml");
            let mut env = format!("DATABASE_URL = \"{url}\"");
            if service == "catalog" {
                // Its demo data, beside its DATABASE_URL.
                text = text.replace("env = { CATALOG_DEMO_DATA = \"true\" }\n", "");
                env.push_str(", CATALOG_DEMO_DATA = \"true\"");
            }
            text = text.replace(&header, &format!("{header}env = {{ {env} }}\n"));
        }
        std::fs::write(work.join("stratus.toml"), text).unwrap();
        Setup {
            data: work.join("data"),
            work,
            postgres,
        }
    }

    /// `stratus <args>` against this system's stratus.toml and data dir.
    fn stratus(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(args)
            .current_dir(&self.work)
            .env("STRATUS_DATA_DIR", &self.data)
            .env("STRATUS_FILE", self.work.join("stratus.toml"))
            .env_remove("DATABASE_URL")
            .env_remove("BROKER_URL")
            .output()
            .unwrap()
    }

    /// Every row of every table of every database, as text, sorted: (database/table) -> rows.
    async fn rows(&self) -> BTreeMap<String, Vec<String>> {
        let mut all = BTreeMap::new();
        for service in SERVICES.iter().chain(["broker"].iter()) {
            let tables = match self.postgres.get(*service) {
                Some(url) => postgres_rows(url).await,
                None => sqlite_rows(&self.data.join(format!("{service}.db"))).await,
            };
            assert!(!tables.is_empty(), "{service} has no tables");
            for (table, rows) in tables {
                all.insert(format!("{service}/{table}"), rows);
            }
        }
        all
    }
}

async fn sqlite_rows(path: &Path) -> BTreeMap<String, Vec<String>> {
    let url = format!("sqlite://{}", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for table in tables {
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info($1) ORDER BY cid")
                .bind(&table)
                .fetch_all(&mut conn)
                .await
                .unwrap();
        // quote() renders every value exactly (text, integer, real, blob, NULL).
        let row = columns
            .iter()
            .map(|c| format!("quote(\"{c}\")"))
            .collect::<Vec<_>>()
            .join(" || ',' || ");
        let mut rows: Vec<String> = sqlx::query_scalar(&format!("SELECT {row} FROM \"{table}\""))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        rows.sort();
        out.insert(table, rows);
    }
    out
}

async fn postgres_rows(url: &str) -> BTreeMap<String, Vec<String>> {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for table in tables {
        let mut rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM \"{table}\" t"))
                .fetch_all(&mut conn)
                .await
                .unwrap();
        rows.sort();
        out.insert(table, rows);
    }
    out
}

/// A PostgreSQL client program: the newest /usr/lib/postgresql/*/bin, else the PATH.
fn pg_tool(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_else(|| PathBuf::from(name))
}

/// The rows of a plain-text dump's `COPY ... FROM stdin` blocks: table -> rows in COPY's own
/// text format (exact for every type), sorted. Reads a dump file with `pg_restore --file=-`, or
/// a live database with `pg_dump`, so the two can be compared without either side's rendering.
fn copy_rows(mut command: Command) -> BTreeMap<String, Vec<String>> {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let mut tables = BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        match current.as_mut() {
            Some(_) if line == "\\." => {
                let (table, mut rows) = current.take().unwrap();
                rows.sort();
                tables.insert(table, rows);
            }
            Some((_, rows)) => rows.push(line.to_string()),
            None => {
                if let Some(rest) = line.strip_prefix("COPY ") {
                    let table = rest.split(' ').next().unwrap().to_string();
                    current = Some((table, Vec::new()));
                }
            }
        }
    }
    assert!(current.is_none(), "an unterminated COPY block");
    tables
}

/// What a `pg_dump` file holds, row for row.
fn dump_file_rows(file: &Path) -> BTreeMap<String, Vec<String>> {
    let mut command = Command::new(pg_tool("pg_restore"));
    command.args(["--data-only", "--file=-"]).arg(file);
    copy_rows(command)
}

/// What a live PostgreSQL database holds, row for row, in the same format.
fn database_rows(url: &str) -> BTreeMap<String, Vec<String>> {
    let mut command = Command::new(pg_tool("pg_dump"));
    command
        .args(["--data-only", "--format=plain"])
        .arg(format!("--dbname={url}"));
    copy_rows(command)
}

/// A running `stratus up`.
struct Up {
    child: Child,
    gateway: u16,
    http: reqwest::Client,
}

impl Up {
    fn start(setup: &Setup) -> Up {
        let (gateway, admin, registry, dns, events) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let mut child = Command::new(binary())
            .arg("up")
            .current_dir(&setup.work)
            .env("STRATUS_DATA_DIR", &setup.data)
            .env("STRATUS_FILE", setup.work.join("stratus.toml"))
            .env("STRATUS_GATEWAY_PORT", gateway.to_string())
            .env("STRATUS_ADMIN_PORT", admin.to_string())
            .env("STRATUS_REGISTRY_PORT", registry.to_string())
            .env("STRATUS_DNS_PORT", dns.to_string())
            .env("STRATUS_EVENTS_PORT", events.to_string())
            .env("STRATUS_CONTROL_ADDR", "127.0.0.1:0")
            .env("STRATUS_DASHBOARD_ADDR", "127.0.0.1:0")
            .env("STRATUS_ADMIN_PASSWORD", "admin-password-1")
            .env_remove("DATABASE_URL")
            .env_remove("BROKER_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Read stdout on a thread for the whole run, so `up` never blocks on a full pipe.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Press Ctrl-C") {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(90))
            .expect("stratus up never became ready");
        Up {
            child,
            gateway,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway)
    }

    /// SIGTERM, and wait until every process has stopped.
    fn stop(mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "up did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn login(&self, email: &str, password: &str) -> String {
        let response = self
            .http
            .post(self.url("/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "login of {email}");
        response.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn get(&self, token: &str, path: &str) -> Value {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    async fn place(&self, token: &str, key: &str, product: &str) -> reqwest::StatusCode {
        self.http
            .post(self.url("/api/orders"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&json!({"items": [{"product_id": product, "quantity": 1}]}))
            .send()
            .await
            .map(|r| r.status())
            .unwrap_or(reqwest::StatusCode::BAD_GATEWAY)
    }

    async fn orders(&self, token: &str) -> Vec<Value> {
        let orders = self.get(token, "/api/orders?limit=1000").await;
        orders.as_array().cloned().expect("a list of orders")
    }

    /// Waits until no order of this customer is pending (the saga has finished for each).
    async fn settled(&self, token: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let orders = self.orders(token).await;
            if orders.iter().all(|o| o["status"] != "pending") {
                return orders;
            }
            assert!(
                Instant::now() < deadline,
                "orders still pending: {orders:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn ok(output: &Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

fn refused(output: &Output, expected: &str) {
    let text = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "expected a refusal: {text}");
    assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
}

/// The whole story on one kind of database; `source`, `fresh` and `copy` are three systems.
async fn backup_and_restore(source: Setup, fresh: Setup, copy: Setup, root: &Path) {
    stratus_kit::install_crypto_provider();
    let up = Up::start(&source);
    let http = &up.http;
    // Data in every database: a customer (auth), a profile, orders paid through the saga
    // (orders, payments, notifications, the broker), and the event records of it all.
    let signup = http
        .post(up.url("/auth/signup"))
        .json(&json!({"email": "ann@example.com", "password": "ann-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 201);
    let ann = up.login("ann@example.com", "ann-password-1").await;
    let profile = http
        .put(up.url("/api/profile/me"))
        .bearer_auth(&ann)
        .json(&json!({"display_name": "Ann", "address": "1 Road", "phone": "+100"}))
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), 200);
    let products: Vec<Value> = http
        .get(up.url("/api/catalog/products"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let product = products[0]["id"].as_str().unwrap().to_string();
    for i in 0..5 {
        assert_eq!(up.place(&ann, &format!("before-{i}"), &product).await, 201);
    }
    let before = up.settled(&ann).await;
    assert_eq!(before.len(), 5);

    // A customer keeps ordering while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let placed = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, placed) = (stop.clone(), placed.clone());
        let (http, url, ann, product) = (
            up.http.clone(),
            up.url("/api/orders"),
            ann.clone(),
            product.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let response = http
                    .post(&url)
                    .bearer_auth(&ann)
                    .header("Idempotency-Key", format!("during-{i}"))
                    .json(&json!({"items": [{"product_id": product, "quantity": 1}]}))
                    .send()
                    .await;
                if response.is_ok_and(|r| r.status() == 201) {
                    placed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    while placed.load(Ordering::Relaxed) < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let online = root.join("online");
    let output = {
        let online = online.to_str().unwrap().to_string();
        let work = source.work.clone();
        let data = source.data.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(binary())
                .args(["backup", "--to", &online])
                .current_dir(&work)
                .env("STRATUS_DATA_DIR", &data)
                .env("STRATUS_FILE", work.join("stratus.toml"))
                .env_remove("DATABASE_URL")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let during = placed.load(Ordering::Relaxed);
    ok(&output, "backup while running");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(
        placed.load(Ordering::Relaxed) > during,
        "the system kept taking orders after the backup"
    );

    // The manifest: every database, each with its size and checksum.
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(online.join("manifest.json")).unwrap())
            .unwrap();
    let entries = manifest["databases"].as_array().unwrap();
    let services: Vec<&str> = entries
        .iter()
        .map(|e| e["service"].as_str().unwrap())
        .collect();
    for service in SERVICES.iter().chain(["broker"].iter()) {
        assert!(services.contains(service), "{service} in {manifest}");
    }
    for entry in entries {
        let expected = if source
            .postgres
            .contains_key(entry["service"].as_str().unwrap())
        {
            "postgres"
        } else {
            "sqlite"
        };
        assert_eq!(entry["backend"], expected, "{entry}");
        let file = online.join(entry["file"].as_str().unwrap());
        assert_eq!(std::fs::metadata(&file).unwrap().len(), entry["size"]);
        assert_eq!(entry["sha256"].as_str().unwrap().len(), 64);
        assert!(entry["time"].as_str().unwrap().starts_with("20"));
    }

    // Restore refuses while the source system runs.
    refused(
        &source.stratus(&["restore", "--from", online.to_str().unwrap(), "--yes"]),
        "is running",
    );
    let orders_seen = up.settled(&ann).await.len();
    assert!(orders_seen > 5);
    up.stop();

    // The online backup in a fresh data dir: a new system starts there with the same users,
    // profile and orders.
    ok(
        &fresh.stratus(&["restore", "--from", online.to_str().unwrap()]),
        "restore into a fresh data dir",
    );
    // The seal key came along: the restored auth database's secrets open in the new system.
    let seal_key = |setup: &Setup| std::fs::read(setup.data.join("identity/seal.key")).unwrap();
    assert_eq!(seal_key(&fresh), seal_key(&source));
    let restored = fresh.rows().await;
    // The restored databases are exactly what the backup holds, every row of every table: each
    // SQLite file read directly, each PostgreSQL dump read by pg_restore and the restored
    // database by pg_dump, compared before the new system starts and writes.
    for entry in entries {
        let service = entry["service"].as_str().unwrap();
        let file = online.join(entry["file"].as_str().unwrap());
        match entry["backend"].as_str().unwrap() {
            "sqlite" => {
                let in_backup = sqlite_rows(&file).await;
                assert!(!in_backup.is_empty(), "{service}: no tables in the backup");
                for (table, rows) in in_backup {
                    assert_eq!(
                        restored.get(&format!("{service}/{table}")),
                        Some(&rows),
                        "{service}/{table}: the restored rows are the backup's"
                    );
                }
            }
            _ => {
                let in_backup = dump_file_rows(&file);
                assert!(!in_backup.is_empty(), "{service}: no tables in the dump");
                assert_eq!(
                    database_rows(&fresh.postgres[service]),
                    in_backup,
                    "{service}: the restored rows are the dump's"
                );
            }
        }
    }
    {
        let up = Up::start(&fresh);
        let ann = up.login("ann@example.com", "ann-password-1").await;
        let profile = up.get(&ann, "/api/profile/me").await;
        assert_eq!(profile["display_name"], "Ann");
        // Not waiting for the saga here: each database is copied consistently on its own, and
        // an order caught between its payment and the broker's copy may stay pending.
        let orders = up.orders(&ann).await;
        for order in &before {
            assert!(
                orders
                    .iter()
                    .any(|o| o["id"] == order["id"] && o["status"] == order["status"]),
                "order {} kept",
                order["id"]
            );
        }
        // Every order the backup caught: the restored orders database holds as many as the
        // new system lists.
        let in_backup = restored
            .get("orders/orders")
            .map(Vec::len)
            .expect("orders table");
        assert_eq!(orders.len(), in_backup);
        up.stop();
    }

    // The stopped source: backup, restore into a third system, and every row of every table of
    // every database is the same.
    let offline = root.join("offline");
    ok(
        &source.stratus(&["backup", "--to", offline.to_str().unwrap()]),
        "backup of the stopped system",
    );
    ok(
        &copy.stratus(&["restore", "--from", offline.to_str().unwrap()]),
        "restore into a third data dir",
    );
    let expected = source.rows().await;
    let actual = copy.rows().await;
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        actual.keys().collect::<Vec<_>>()
    );
    for (table, rows) in &expected {
        assert_eq!(rows, &actual[table], "{table} differs");
    }
    assert!(expected["auth/users"].len() >= 2, "admin and Ann");
    assert!(expected["orders/orders"].len() >= orders_seen);
    assert!(!expected["events/events"].is_empty(), "event records");

    // An existing target needs --yes; a corrupted backup restores nothing.
    refused(
        &copy.stratus(&["restore", "--from", offline.to_str().unwrap()]),
        "--yes",
    );
    ok(
        &copy.stratus(&["restore", "--from", offline.to_str().unwrap(), "--yes"]),
        "restore over a stopped system with --yes",
    );
    let victim = offline.join(
        entries.iter().find(|e| e["service"] == "auth").unwrap()["file"]
            .as_str()
            .unwrap(),
    );
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    refused(
        &copy.stratus(&["restore", "--from", offline.to_str().unwrap(), "--yes"]),
        "does not match",
    );
    assert_eq!(
        copy.rows().await,
        actual,
        "a refused restore changed nothing"
    );
}

async fn backup_while_running_then_restore_reproduces_every_sqlite_database() {
    let root = tempfile::tempdir().unwrap();
    let none = BTreeMap::new;
    let source = Setup::new(root.path(), "source", none());
    let fresh = Setup::new(root.path(), "fresh", none());
    let copy = Setup::new(root.path(), "copy", none());
    backup_and_restore(source, fresh, copy, root.path()).await;
}

async fn backup_while_running_then_restore_reproduces_every_postgres_database() {
    let postgres = Postgres::start();
    let root = tempfile::tempdir().unwrap();
    let databases = |system: &str| {
        SERVICES
            .iter()
            .map(|s| (s.to_string(), postgres.database(&format!("{system}_{s}"))))
            .collect::<BTreeMap<_, _>>()
    };
    let source = Setup::new(root.path(), "source", databases("source"));
    let fresh = Setup::new(root.path(), "fresh", databases("fresh"));
    let copy = Setup::new(root.path(), "copy", databases("copy"));
    backup_and_restore(source, fresh, copy, root.path()).await;
}

/// Runs `sql` with psql against `url`; any error fails the test.
fn psql(url: &str, sql: &str) {
    let output = Command::new(pg_tool("psql"))
        .arg(format!("--dbname={url}"))
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A database whose role must give its password (scram-sha-256): `backup` and `restore` reach
/// it with the password given only in its DATABASE_URL. pg_dump and pg_restore get it through
/// their environment; their command lines carry none (the unit test in src/backup.rs).
async fn a_password_protected_postgres_database_is_backed_up_and_restored() {
    let postgres = Postgres::start();
    let trusted = postgres.database("guarded");
    psql(
        &trusted,
        "CREATE ROLE guard LOGIN SUPERUSER PASSWORD 'p@ss:w0rd/?'; \
         CREATE TABLE kept (n int); INSERT INTO kept VALUES (1), (2);",
    );
    // The role must authenticate over TCP, ahead of the trust rule everyone else has.
    let hba = postgres.dir().join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all guard 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .unwrap();
    psql(&trusted, "SELECT pg_reload_conf()");
    let refused = Command::new(pg_tool("psql"))
        .arg(format!(
            "--dbname={}",
            trusted.replacen("stratus@", "guard@", 1)
        ))
        .args(["-w", "-c", "SELECT 1"])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(!refused.status.success(), "the role needs its password");
    let guarded = trusted.replacen("stratus@", "guard:p%40ss%3Aw0rd%2F%3F@", 1);

    let root = tempfile::tempdir().unwrap();
    let setup = Setup::new(
        root.path(),
        "guarded",
        BTreeMap::from([("profile".to_string(), guarded)]),
    );
    let backup = root.path().join("backup");
    let backup = backup.to_str().unwrap();
    ok(&setup.stratus(&["backup", "--to", backup]), "backup");
    psql(&trusted, "DELETE FROM kept");
    ok(
        &setup.stratus(&["restore", "--from", backup, "--yes"]),
        "restore",
    );
    assert_eq!(database_rows(&trusted)["public.kept"], ["1", "2"]);
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![
        Test::new(
            "backup_while_running_then_restore_reproduces_every_sqlite_database",
            backup_while_running_then_restore_reproduces_every_sqlite_database,
        )
        .worker_threads(4),
        Test::new(
            "backup_while_running_then_restore_reproduces_every_postgres_database",
            backup_while_running_then_restore_reproduces_every_postgres_database,
        )
        .worker_threads(4)
        .needs(&[Need::Postgres]),
        Test::new(
            "a_password_protected_postgres_database_is_backed_up_and_restored",
            a_password_protected_postgres_database_is_backed_up_and_restored,
        )
        .worker_threads(2)
        .needs(&[Need::Postgres]),
    ])
}
