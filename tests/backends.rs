//! The same system on PostgreSQL instead of the embedded SQLite, and what happens when a
//! configured backend cannot be reached.

mod support;

use std::process::{Command, Stdio};

use serde_json::json;
use support::servers::Postgres;
use support::System;

#[tokio::test]
async fn the_request_flow_works_on_postgres() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
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

#[test]
fn an_unreachable_database_is_a_clear_error_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let output = Command::new(support::binary())
        .args(["serve", "catalog"])
        .env(
            "DATABASE_URL",
            format!("postgres://stratus:secret@127.0.0.1:{port}/catalog"),
        )
        .env("STRATUS_DATA_DIR", dir.path())
        .env(
            "STRATUS_REGISTRY_URL",
            format!("http://127.0.0.1:{}", support::free_port()),
        )
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
