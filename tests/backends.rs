//! The same system on PostgreSQL instead of the embedded SQLite, and what happens when a
//! configured backend cannot be reached.

mod support;

use std::process::{Command, Stdio};

use serde_json::json;
use stratus_testing::servers::Postgres;
use stratus_testing::{Need, Test};
use support::System;

async fn the_request_flow_works_on_postgres() {
    let postgres = Postgres::start();
    let extra = [
        ("auth", "DATABASE_URL", postgres.database("auth")),
        ("catalog", "DATABASE_URL", postgres.database("catalog")),
    ];
    let system = System::start_with(2, &extra).await;
    let admin = system.admin_token().await;
    let customer = system.customer_token("pat@example.com").await;
    let tea = json!({"name": "Tea", "description": "green", "price_cents": 450, "stock": 3});
    let post = |token: String| {
        system
            .http
            .post(system.url("/api/catalog/products"))
            .bearer_auth(token)
            .json(&tea)
            .send()
    };
    assert_eq!(post(customer).await.unwrap().status(), 403);
    assert_eq!(post(admin.clone()).await.unwrap().status(), 201);
    let bad = system
        .http
        .post(system.url("/api/catalog/products"))
        .bearer_auth(&admin)
        .json(&json!({"name": "Tea", "price_cents": -5, "stock": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    // Both instances share the one catalog database: each sees the product.
    for _ in 0..4 {
        assert_eq!(system.products().await.len(), 1);
    }
    // No SQLite file was made: the data really is in PostgreSQL.
    assert!(!system.dir.path().join("catalog.db").exists());
    assert!(!system.dir.path().join("auth.db").exists());
}

async fn an_unreachable_database_is_a_clear_error_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    // A registry to join the mesh with (the database is opened after that).
    let registry = support::registry::Registry::start("registry", "memory", dir.path()).await;
    let port = support::free_port();
    let output = Command::new(support::binary())
        .args(["serve", "catalog"])
        .envs(support::mesh::shared().env("catalog"))
        .env(
            "DATABASE_URL",
            format!("postgres://stratus:secret@127.0.0.1:{port}/catalog"),
        )
        .env("STRATUS_DATA_DIR", dir.path())
        .env("STRATUS_REGISTRY_URL", registry.url(""))
        .env("STRATUS_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "catalog must refuse to start without its database"
    );
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("connecting to the database"), "{text}");
    assert!(
        !text.contains("secret"),
        "the password must not be printed: {text}"
    );
    assert!(
        !dir.path().join("catalog.db").exists(),
        "no silent fallback to SQLite"
    );
}

/// The identity service's newer tables on PostgreSQL: key rotation, TOTP, authorization codes
/// with PKCE and app-bound refresh tokens.
async fn mfa_key_rotation_and_authorization_codes_work_on_postgres() {
    use serde_json::Value;
    use support::FormBody;
    let postgres = Postgres::start();
    let extra = [
        ("auth", "DATABASE_URL", postgres.database("auth")),
        ("catalog", "DATABASE_URL", postgres.database("catalog")),
    ];
    let system = System::start_with(1, &extra).await;
    let admin = system.admin_token().await;
    let post = |path: &str, token: &str, body: Value| {
        system
            .http
            .post(system.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let rotated = post("/auth/admin/keys/rotate", &admin, json!({}))
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let jwks: Value = system
        .http
        .get(system.url("/auth/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);

    let customer = system.customer_token("pg-mfa@example.com").await;
    let enrolled: Value = post("/auth/mfa/totp/enroll", &customer, json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = stratus_auth::mfa::base32_decode(enrolled["secret"].as_str().unwrap()).unwrap();
    let now = stratus_token::now_unix();
    let confirmed = post(
        "/auth/mfa/totp/confirm",
        &customer,
        json!({"code": stratus_auth::mfa::code_for(&key, now)}),
    )
    .await
    .unwrap();
    assert_eq!(confirmed.status(), 200);
    let login = |totp: Option<String>| {
        system
            .http
            .post(system.url("/auth/login"))
            .json(&json!({"email": "pg-mfa@example.com", "password": "customer-password", "totp": totp}))
            .send()
    };
    assert_eq!(login(None).await.unwrap().status(), 401);
    let next = stratus_auth::mfa::code_for(&key, now + stratus_auth::mfa::STEP);
    assert_eq!(login(Some(next.clone())).await.unwrap().status(), 200);
    assert_eq!(login(Some(next)).await.unwrap().status(), 401);

    let app: Value = post(
        "/auth/clients",
        &admin,
        json!({"name": "pg-app", "kind": "public", "redirect_uris": ["https://app.example/cb"]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let id = app["client_id"].as_str().unwrap();
    let verifier = "stratus-test-verifier-0123456789abcdefghijklmnop";
    let challenge = "SW3dTxOhCLudvPhY-uiJGWW-6Xn9g-DhimAnBOeKZTo";
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let other = system.customer_token("pg-app-user@example.com").await;
    let response = no_redirects
        .get(system.url(&format!("/auth/authorize?response_type=code&client_id={id}&scope=openid&code_challenge={challenge}&code_challenge_method=S256")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let code = location.split("code=").nth(1).unwrap();
    let tokens: Value = system
        .http
        .post(system.url("/auth/token"))
        .form_body(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", id),
            ("redirect_uri", "https://app.example/cb"),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(tokens["id_token"].is_string(), "{tokens}");
    let refreshed = system
        .http
        .post(system.url("/auth/token"))
        .form_body(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", id),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![
        Test::new(
            "the_request_flow_works_on_postgres",
            the_request_flow_works_on_postgres,
        )
        .needs(&[Need::Postgres]),
        Test::new(
            "an_unreachable_database_is_a_clear_error_at_start_up",
            an_unreachable_database_is_a_clear_error_at_start_up,
        ),
        Test::new(
            "mfa_key_rotation_and_authorization_codes_work_on_postgres",
            mfa_key_rotation_and_authorization_codes_work_on_postgres,
        )
        .needs(&[Need::Postgres]),
    ])
}
