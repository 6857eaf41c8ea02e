//! Auth's secrets at rest, on real databases: a SQLite file (whose raw bytes are searched) and
//! PostgreSQL. Each test starts auth's state as `stratus serve auth` does
//! ([`stratus_auth::prepare`]: migrations, the seal key, re-sealing, the signing key), calls its
//! router in process, and "restarts" by closing the pool and preparing again over the same
//! database with other seal keys.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use clap::Parser;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use stratus_auth::api::AppState;
use stratus_auth::mfa;
use stratus_auth::sealed::{Field, FIELDS, SIGNING_KEY, TOTP_SECRET};
use stratus_identity::seal::is_sealed;
use stratus_identity::Sealer;
use stratus_testing::servers::Postgres;
use stratus_testing::{Need, Test};
use tower::ServiceExt;

const ADMIN_PASSWORD: &str = "admin-password-1";
const PASSWORD: &str = "customer-password";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: stratus_auth::Args,
}

/// One auth's lasting place: its data dir and database, kept across restarts.
struct Place {
    dir: tempfile::TempDir,
    database_url: String,
}

impl Place {
    fn sqlite() -> Place {
        let dir = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite://{}?mode=rwc", dir.path().join("auth.db").display());
        Place { dir, database_url }
    }

    fn postgres(database_url: String) -> Place {
        Place {
            dir: tempfile::tempdir().unwrap(),
            database_url,
        }
    }

    /// The file given as STRATUS_SEAL_KEY_FILE.
    fn key_file(&self) -> PathBuf {
        self.dir.path().join("given-seal.key")
    }

    /// Starts with these key lines (the first seals).
    async fn start(&self, lines: &[&str]) -> anyhow::Result<Auth> {
        std::fs::write(self.key_file(), lines.join("\n")).unwrap();
        let file = self.key_file().display().to_string();
        self.start_with(&["--seal-key-file", &file]).await
    }

    /// Starts with the data dir's own seal key (made on first start).
    async fn start_with_data_dir_key(&self) -> anyhow::Result<Auth> {
        self.start_with(&[]).await
    }

    async fn start_with(&self, extra: &[&str]) -> anyhow::Result<Auth> {
        let data_dir = self.dir.path().join("data").display().to_string();
        let mut argv = vec![
            "auth",
            "--data-dir",
            &data_dir,
            "--database-url",
            &self.database_url,
            "--admin-password",
            ADMIN_PASSWORD,
        ];
        argv.extend_from_slice(extra);
        let args = Cli::try_parse_from(argv).unwrap().args;
        let state = stratus_auth::prepare(&args).await?;
        let router = stratus_auth::api::routes()
            .with_state::<()>(state.clone())
            .into_router();
        Ok(Auth { state, router })
    }

    /// The raw bytes of the SQLite file and its write-ahead log.
    fn sqlite_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let path = self.dir.path().join(format!("auth.db{suffix}"));
            if let Ok(more) = std::fs::read(path) {
                bytes.extend(more);
            }
        }
        assert!(!bytes.is_empty(), "no auth.db");
        bytes
    }
}

/// A running auth, minus the listener.
struct Auth {
    state: Arc<AppState>,
    router: axum::Router,
}

impl Auth {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let mut request = request.body(Body::from(body.to_string())).unwrap();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, body).await
    }

    async fn login(&self, email: &str, password: &str, totp: Option<String>) -> StatusCode {
        let body = json!({"email": email, "password": password, "totp": totp});
        self.post("/auth/login", None, body).await.0
    }

    async fn token(&self, email: &str, password: &str) -> String {
        let (status, body) = self
            .post(
                "/auth/login",
                None,
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login of {email}: {body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    async fn admin(&self) -> String {
        self.token("admin@stratus.local", ADMIN_PASSWORD).await
    }

    /// A new customer with a confirmed second factor: its base32 secret and recovery codes.
    async fn customer_with_totp(&self, email: &str) -> (String, Vec<String>) {
        let (status, _) = self
            .post(
                "/auth/signup",
                None,
                json!({"email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let token = self.token(email, PASSWORD).await;
        let (status, enrolled) = self
            .post("/auth/mfa/totp/enroll", Some(&token), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{enrolled}");
        let secret = enrolled["secret"].as_str().unwrap().to_string();
        // The step before the current one (inside the window), so two logins follow at the
        // current step and the next before the clock moves on.
        let code = mfa::code_for(&key_of(&secret), stratus_token::now_unix() - mfa::STEP);
        let (status, confirmed) = self
            .post(
                "/auth/mfa/totp/confirm",
                Some(&token),
                json!({"code": code}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{confirmed}");
        let codes = confirmed["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        (secret, codes)
    }

    /// The stored text of every sealed column, by field and row.
    async fn stored(&self) -> Vec<(Field, String, String)> {
        let mut all = Vec::new();
        for field in FIELDS {
            let rows: Vec<(String, String)> = sqlx::query_as(&format!(
                "SELECT {}, {} FROM {} ORDER BY 1",
                field.row_key, field.column, field.table
            ))
            .fetch_all(self.state.pool().pool())
            .await
            .unwrap();
            all.extend(rows.into_iter().map(|(row, text)| (*field, row, text)));
        }
        all
    }

    async fn stop(self) {
        self.state.pool().close().await;
    }
}

fn key_of(secret: &str) -> Vec<u8> {
    mfa::base32_decode(secret).unwrap()
}

/// A TOTP code `steps_ahead` steps from now: 0, then 1 (each step is accepted once, and the
/// enrolment used the step before now).
fn code(secret: &str, steps_ahead: u64) -> String {
    mfa::code_for(
        &key_of(secret),
        stratus_token::now_unix() + steps_ahead * mfa::STEP,
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The private keys of every stored signing key, opened with `sealer`.
fn private_keys(stored: &[(Field, String, String)], sealer: &Sealer) -> Vec<Vec<u8>> {
    stored
        .iter()
        .filter(|(field, ..)| field.table == SIGNING_KEY.table)
        .map(|(field, row, text)| {
            STANDARD
                .decode(field.open(sealer, row, text).unwrap())
                .unwrap()
        })
        .collect()
}

/// Every form a secret could take in the file.
fn forms_of_key(der: &[u8]) -> Vec<(String, Vec<u8>)> {
    // Ed25519 PKCS#8 (RFC 8410): a 16-byte header, then the 32-byte seed: the key itself.
    let seed = der[16..48].to_vec();
    let pem_body = STANDARD.encode(der);
    let mut forms = vec![
        ("DER".to_string(), der.to_vec()),
        ("seed".to_string(), seed.clone()),
        ("base64 DER".to_string(), pem_body.clone().into_bytes()),
        (
            "base64url DER".to_string(),
            URL_SAFE_NO_PAD.encode(der).into_bytes(),
        ),
        (
            "hex seed".to_string(),
            seed.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        ),
    ];
    // A PEM's lines (64 characters each).
    for (n, line) in pem_body.as_bytes().chunks(64).enumerate() {
        forms.push((format!("PEM line {n}"), line.to_vec()));
    }
    forms
}

fn sealer(lines: &[&str]) -> Sealer {
    Sealer::parse(&lines.join("\n")).unwrap()
}

// ---- the tests ----

/// After enrolling TOTP, creating a client and making keys, neither auth.db nor its log holds any
/// of the secrets in any form; and all of them still work.
async fn the_sqlite_file_holds_no_secret() {
    let place = Place::sqlite();
    let k1 = Sealer::generate_key_line("k1");
    let auth = place.start(&[&k1]).await.unwrap();
    let admin = auth.admin().await;
    let (totp, recovery) = auth.customer_with_totp("mfa@example.com").await;
    let (status, client) = auth
        .post(
            "/auth/clients",
            Some(&admin),
            json!({"name": "svc", "permissions": ["catalog:write"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{client}");
    let client_secret = client["client_secret"].as_str().unwrap().to_string();
    let (status, _) = auth
        .post("/auth/admin/keys/rotate", Some(&admin), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let stored = auth.stored().await;
    let keys = private_keys(&stored, &sealer(&[&k1]));
    assert_eq!(keys.len(), 2, "the first key and the rotated one");
    assert!(stored.iter().all(|(_, _, text)| is_sealed(text)));

    let bytes = place.sqlite_bytes();
    let mut secrets = vec![
        (
            "TOTP secret (base32)".to_string(),
            totp.clone().into_bytes(),
        ),
        ("TOTP secret (raw)".to_string(), key_of(&totp)),
        (
            "client secret".to_string(),
            client_secret.clone().into_bytes(),
        ),
    ];
    secrets.extend(
        recovery
            .iter()
            .map(|c| ("recovery code".to_string(), c.clone().into_bytes())),
    );
    for der in &keys {
        secrets.extend(forms_of_key(der));
    }
    for (what, secret) in &secrets {
        assert!(!contains(&bytes, secret), "auth.db holds the {what}");
    }

    // Sealed, all of it still works: the second factor, the client, the new key.
    assert_eq!(
        auth.login("mfa@example.com", PASSWORD, None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        auth.login("mfa@example.com", PASSWORD, Some(code(&totp, 0)))
            .await,
        StatusCode::OK
    );
    let basic = STANDARD.encode(format!(
        "{}:{client_secret}",
        client["client_id"].as_str().unwrap()
    ));
    let request = Request::post("/auth/token")
        .header("authorization", format!("Basic {basic}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("grant_type=client_credentials"))
        .unwrap();
    let response = auth.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    auth.stop().await;
}

/// k1, then "k2 then k1": everything opens and is sealed with k2 afterwards; then k2 alone.
async fn rotating_the_seal_key_reseals_everything(place: Place) {
    let k1 = Sealer::generate_key_line("k1");
    let k2 = Sealer::generate_key_line("k2");
    let auth = place.start(&[&k1]).await.unwrap();
    let admin = auth.admin().await;
    let (totp, _) = auth.customer_with_totp("rotate@example.com").await;
    let (status, _) = auth
        .post("/auth/admin/keys/rotate", Some(&admin), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let before = auth.stored().await;
    assert!(before
        .iter()
        .all(|(_, _, text)| text.starts_with("sealed:v1:k1:")));
    auth.stop().await;

    let auth = place.start(&[&k2, &k1]).await.unwrap();
    let after = auth.stored().await;
    assert_eq!(after.len(), before.len());
    for (field, row, text) in &after {
        assert!(
            text.starts_with("sealed:v1:k2:"),
            "{}.{} of {row} is not sealed with k2: {text}",
            field.table,
            field.column
        );
    }
    // The same keys as before (nothing regenerated), and a token from before still verifies.
    let k1_only = sealer(&[&k1]);
    let k2_only = sealer(&[&k2]);
    assert_eq!(
        private_keys(&before, &k1_only),
        private_keys(&after, &k2_only)
    );
    let (status, _) = auth
        .call(Method::GET, "/auth/users", Some(&admin), Value::Null)
        .await;
    assert_eq!(status, StatusCode::OK, "a token signed before the restart");
    assert_eq!(
        auth.login("rotate@example.com", PASSWORD, Some(code(&totp, 0)))
            .await,
        StatusCode::OK
    );
    auth.stop().await;

    // The old line can go.
    let auth = place.start(&[&k2]).await.unwrap();
    assert_eq!(
        auth.login("rotate@example.com", PASSWORD, Some(code(&totp, 1)))
            .await,
        StatusCode::OK
    );
    assert_eq!(auth.stored().await, after, "nothing to re-seal");
    auth.stop().await;
}

/// A start without the key the values were sealed with fails, names the key, and changes
/// nothing: no new signing key, no lost enrolment.
async fn a_wrong_seal_key_stops_the_start(place: Place) {
    let k1 = Sealer::generate_key_line("k1");
    let auth = place.start(&[&k1]).await.unwrap();
    let (totp, _) = auth.customer_with_totp("wrong@example.com").await;
    let before = auth.stored().await;
    auth.stop().await;

    // Another key id: "sealed with seal key `k1`, which is not among ...".
    let other = Sealer::generate_key_line("k9");
    let error = format!("{:#}", place.start(&[&other]).await.err().unwrap());
    assert!(error.contains("`k1`"), "{error}");
    assert!(error.contains("not among the seal keys"), "{error}");
    assert!(error.contains("STRATUS_SEAL_KEY_FILE"), "{error}");
    assert!(
        !error.contains(&other[3..]),
        "the key is never shown: {error}"
    );

    // The same id with other bytes (a key file made again): "does not open with seal key `k1`".
    let impostor = Sealer::generate_key_line("k1");
    let error = format!("{:#}", place.start(&[&impostor]).await.err().unwrap());
    assert!(
        error.contains("does not open with seal key `k1`"),
        "{error}"
    );

    // Nothing changed, and the right key still opens everything.
    let auth = place.start(&[&k1]).await.unwrap();
    assert_eq!(auth.stored().await, before);
    assert_eq!(
        auth.login("wrong@example.com", PASSWORD, Some(code(&totp, 0)))
            .await,
        StatusCode::OK
    );
    auth.stop().await;
}

/// Rows written before sealing existed (plain TOTP secret, plain signing key) are sealed at the
/// first start, keep working, and (SQLite) leave no copy in the file.
async fn plain_rows_from_before_sealing_are_sealed_at_start(place: Place, sqlite: bool) {
    let k1 = Sealer::generate_key_line("k1");
    // A database as the previous version left it: a user with a confirmed plain TOTP secret and
    // a plain signing key, written as that version wrote them.
    let legacy_key = stratus_token::SigningKey::generate("kold").unwrap();
    let secret = mfa::base32_encode(b"twenty bytes secret!");
    {
        let auth = place.start(&[&k1]).await.unwrap();
        let pool = auth.state.pool().pool().clone();
        let (status, _) = auth
            .post(
                "/auth/signup",
                None,
                json!({"email": "old@example.com", "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (user_id,): (String,) =
            sqlx::query_as("SELECT id FROM users WHERE email = 'old@example.com'")
                .fetch_one(&pool)
                .await
                .unwrap();
        sqlx::query("DELETE FROM signing_keys")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO signing_keys (kid, pkcs8, created_at, created_unix) VALUES ('kold', $1, '2026-01-01T00:00:00Z', 1)")
            .bind(STANDARD.encode(legacy_key.pkcs8()))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO mfa_totp (user_id, secret, confirmed, last_step, created_at) VALUES ($1, $2, 1, 0, '2026-01-01T00:00:00Z')")
            .bind(&user_id)
            .bind(&secret)
            .execute(&pool)
            .await
            .unwrap();
        auth.stop().await;
    }

    let auth = place.start(&[&k1]).await.unwrap();
    let stored = auth.stored().await;
    let rows: Vec<(&str, &str)> = stored
        .iter()
        .map(|(field, row, _)| (field.table, row.as_str()))
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.contains(&(SIGNING_KEY.table, "kold")),
        "the key kept, not replaced"
    );
    for (field, row, text) in &stored {
        assert!(
            text.starts_with("sealed:v1:k1:"),
            "{}.{} of {row} still plain",
            field.table,
            field.column
        );
    }
    let totp_row = stored
        .iter()
        .find(|(field, ..)| field.table == TOTP_SECRET.table)
        .unwrap();
    assert_eq!(
        TOTP_SECRET
            .open(&sealer(&[&k1]), &totp_row.1, &totp_row.2)
            .unwrap(),
        secret
    );
    // The enrolment and the key survived the upgrade.
    assert_eq!(
        auth.login("old@example.com", PASSWORD, None).await,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = auth
        .post(
            "/auth/login",
            None,
            json!({"email": "old@example.com", "password": PASSWORD, "totp": code(&secret, 0)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["access_token"].as_str().unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(access.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], "kold", "signed with the upgraded key");
    auth.stop().await;

    if sqlite {
        // The plain copies are gone from the file too (the pages were rewritten).
        let bytes = place.sqlite_bytes();
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "the plain TOTP secret"
        );
        assert!(
            !contains(&bytes, b"twenty bytes secret!"),
            "the raw TOTP secret"
        );
        for (what, form) in forms_of_key(legacy_key.pkcs8()) {
            assert!(!contains(&bytes, &form), "the plain signing key ({what})");
        }
    }
}

/// With neither variable set, the key is `<data dir>/identity/seal.key`, made once (0600) and
/// used again at the next start.
async fn the_data_dir_key_is_made_once_and_kept() {
    use std::os::unix::fs::PermissionsExt;
    let place = Place::sqlite();
    let auth = place.start_with_data_dir_key().await.unwrap();
    let (totp, _) = auth.customer_with_totp("dir@example.com").await;
    let stored = auth.stored().await;
    auth.stop().await;
    let file = place.dir.path().join("data/identity/seal.key");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("k1:"));
    // What is stored is sealed with that file's key.
    let from_file = Sealer::parse(&text).unwrap();
    for (field, row, stored) in &stored {
        assert!(stored.starts_with("sealed:v1:k1:"), "{stored}");
        field.open(&from_file, row, stored).unwrap();
    }
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let auth = place.start_with_data_dir_key().await.unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    assert_eq!(
        auth.login("dir@example.com", PASSWORD, Some(code(&totp, 0)))
            .await,
        StatusCode::OK
    );
    auth.stop().await;
}

/// The same on PostgreSQL: rotation, a wrong key, plain rows from before sealing.
async fn sealing_works_the_same_on_postgres() {
    let postgres = Postgres::start();
    rotating_the_seal_key_reseals_everything(Place::postgres(postgres.database("rotation"))).await;
    a_wrong_seal_key_stops_the_start(Place::postgres(postgres.database("wrong"))).await;
    plain_rows_from_before_sealing_are_sealed_at_start(
        Place::postgres(postgres.database("legacy")),
        false,
    )
    .await;
}

fn main() -> std::process::ExitCode {
    // The seal key is given to each start explicitly; one from the environment would win.
    for variable in ["STRATUS_SEAL_KEY", "STRATUS_SEAL_KEY_FILE", "DATABASE_URL"] {
        std::env::remove_var(variable);
    }
    stratus_testing::run(vec![
        Test::new(
            "the_sqlite_file_holds_no_secret",
            the_sqlite_file_holds_no_secret,
        ),
        Test::new("rotating_the_seal_key_reseals_everything_on_sqlite", || {
            rotating_the_seal_key_reseals_everything(Place::sqlite())
        }),
        Test::new("a_wrong_seal_key_stops_the_start_on_sqlite", || {
            a_wrong_seal_key_stops_the_start(Place::sqlite())
        }),
        Test::new(
            "plain_rows_from_before_sealing_are_sealed_at_start_on_sqlite",
            || plain_rows_from_before_sealing_are_sealed_at_start(Place::sqlite(), true),
        ),
        Test::new(
            "the_data_dir_key_is_made_once_and_kept",
            the_data_dir_key_is_made_once_and_kept,
        ),
        Test::new(
            "sealing_works_the_same_on_postgres",
            sealing_works_the_same_on_postgres,
        )
        .needs(&[Need::Postgres]),
    ])
}
