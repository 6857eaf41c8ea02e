//! End to end: the real processes, driven as a client would through the gateway.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::System;

fn product(name: &str) -> Value {
    json!({"name": name, "description": "from the e2e test", "price_cents": 1299, "stock": 5})
}

#[tokio::test]
async fn signup_login_and_roles_through_the_gateway() {
    let system = System::start(2).await;
    let customer = system.customer_token("ann@example.com").await;
    let admin = system.admin_token().await;
    let create = |token: Option<&str>| {
        let mut request = system
            .http
            .post(system.url("/api/catalog/products"))
            .json(&product("Tea"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    let anonymous = create(None).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(create(Some(&customer)).await.unwrap().status(), 403);
    let created = create(Some(&admin)).await.unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["price_cents"], 1299);

    let products = system.products().await;
    assert_eq!(products.len(), 1);
    assert_eq!(products[0]["id"], created["id"]);

    // Instance-based load balancing: both catalog instances answer, in turn.
    let mut served_by = HashSet::new();
    for _ in 0..10 {
        let response = system
            .http
            .get(system.url("/api/catalog/products"))
            .header("cache-control", "no-store")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("x-request-id"));
        served_by.insert(
            response.headers()["x-served-by"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        served_by.len(),
        2,
        "expected both catalog instances, got {served_by:?}"
    );
    assert!(served_by.iter().all(|s| s.starts_with("catalog/")));
}

#[tokio::test]
async fn the_service_checks_tokens_itself() {
    let system = System::start(1).await;
    let customer = system.customer_token("bob@example.com").await;
    // Straight to the instance, around the gateway: the catalog holds the same line.
    let direct = format!(
        "{}/api/catalog/products",
        system.instance_url("catalog").await
    );
    let response = system
        .http
        .post(&direct)
        .bearer_auth(&customer)
        .json(&product("Tea"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = system
        .http
        .post(&direct)
        .json(&product("Tea"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(system.products().await.is_empty());
}

#[tokio::test]
async fn a_killed_instance_causes_no_client_error() {
    let mut system = System::start(2).await;
    let victim = system.process("catalog", 0).instance_id.clone();
    let mut killed_at = None;
    for i in 0..200 {
        if i == 50 {
            system.process("catalog", 0).kill9();
            killed_at = Some(Instant::now());
        }
        let response = system
            .http
            .get(system.url("/api/catalog/products"))
            .header("cache-control", "no-store")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {i} failed after the kill");
    }
    // The registry drops the dead instance once its lease (3 s) runs out.
    let killed_at = killed_at.unwrap();
    loop {
        let ids: Vec<String> = system
            .registered("catalog")
            .await
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        if !ids.contains(&victim) {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(4),
            "the dead instance is still registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_new_instance_receives_traffic_without_restarting_the_gateway() {
    let mut system = System::start(2).await;
    let newcomer = system.spawn("catalog", &[]).instance_id.clone();
    system.wait_registered("catalog", 3).await;
    let registered_at = Instant::now();
    let expected = format!("catalog/{newcomer}");
    loop {
        let response = system
            .http
            .get(system.url("/api/catalog/products"))
            .header("cache-control", "no-store")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        if response.headers()["x-served-by"] == expected.as_str() {
            break;
        }
        assert!(
            registered_at.elapsed() < Duration::from_secs(1),
            "the new instance got no traffic within 1 s"
        );
    }
}

#[tokio::test]
async fn malformed_input_is_refused_and_stores_nothing() {
    let system = System::start(1).await;
    let admin = system.admin_token().await;
    let post = |body: Vec<u8>, token: &str| {
        system
            .http
            .post(system.url("/api/catalog/products"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let truncated = post(br#"{"name": "Tea", "price_cents": 12"#.to_vec(), &admin)
        .await
        .unwrap();
    assert_eq!(truncated.status(), 400);
    assert_eq!(
        truncated.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = truncated.json().await.unwrap();
    assert_eq!(problem["status"], 400);
    assert!(problem["detail"].as_str().unwrap().len() > 5);

    let mut huge = br#"{"name": ""#.to_vec();
    huge.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
    huge.extend(br#"", "price_cents": 1, "stock": 1}"#);
    assert_eq!(post(huge, &admin).await.unwrap().status(), 413);

    let negative = post(
        serde_json::to_vec(&json!({"name": "Tea", "price_cents": -1, "stock": 1})).unwrap(),
        &admin,
    )
    .await
    .unwrap();
    assert_eq!(negative.status(), 422);
    let missing = post(serde_json::to_vec(&json!({"name": "Tea"})).unwrap(), &admin)
        .await
        .unwrap();
    assert_eq!(missing.status(), 422);

    // A token whose signature does not match.
    let mut forged = admin.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let body = serde_json::to_vec(&product("Tea")).unwrap();
    assert_eq!(post(body.clone(), &forged).await.unwrap().status(), 401);

    // alg: none, claiming to be an admin.
    let payload = admin.split('.').nth(1).unwrap();
    let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    let none = format!("{header}.{payload}.");
    assert_eq!(post(body.clone(), &none).await.unwrap().status(), 401);

    // A token signed by a key the system never issued, with the real key id.
    let kid = stratus_token::Verifier::key_id_of(&admin).unwrap();
    let stranger = stratus_token::SigningKey::generate(kid).unwrap();
    let claims: stratus_token::Claims = serde_json::from_slice(&base64_decode(payload)).unwrap();
    assert_eq!(
        post(body.clone(), &stranger.sign(&claims))
            .await
            .unwrap()
            .status(),
        401
    );

    let unknown = system
        .http
        .get(system.url("/no/such/path"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.headers()["content-type"],
        "application/problem+json"
    );

    assert!(system.products().await.is_empty(), "nothing may be stored");
    // Every process is still alive.
    assert_eq!(system.registered("catalog").await.len(), 1);
    assert_eq!(
        system
            .http
            .get(system.url("/api/catalog/products"))
            .header("cache-control", "no-store")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}
