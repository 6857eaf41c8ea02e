//! Identity as a service: role management by admins, and service accounts with the OAuth 2.0
//! client credentials grant, through the gateway.

mod support;

use serde_json::{json, Value};
use support::System;

#[tokio::test]
async fn admins_manage_roles_and_service_accounts_get_their_own_tokens() {
    let system = System::start(1).await;
    let admin = system.admin_token().await;
    let customer = system.customer_token("cat@example.com").await;

    // Only admins see and change users.
    let users = |token: Option<String>| {
        let mut request = system.http.get(system.url("/auth/users"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(users(None).await.unwrap().status(), 401);
    assert_eq!(users(Some(customer.clone())).await.unwrap().status(), 403);
    let listed: Vec<Value> = users(Some(admin.clone()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cat = listed
        .iter()
        .find(|u| u["email"] == "cat@example.com")
        .unwrap()
        .clone();
    assert_eq!(cat["roles"], json!(["customer"]));

    let product = json!({"name": "Mate", "price_cents": 300, "stock": 4});
    let create = |token: String| {
        system
            .http
            .post(system.url("/api/catalog/products"))
            .bearer_auth(token)
            .json(&product)
            .send()
    };
    assert_eq!(create(customer).await.unwrap().status(), 403);

    let id = cat["id"].as_str().unwrap();
    let set = |roles: Value, token: String| {
        system
            .http
            .put(system.url(&format!("/auth/users/{id}/roles")))
            .bearer_auth(token)
            .json(&json!({ "roles": roles }))
            .send()
    };
    assert_eq!(
        set(json!(["Not A Role"]), admin.clone())
            .await
            .unwrap()
            .status(),
        422
    );
    assert_eq!(
        set(json!(["customer", "admin"]), admin.clone())
            .await
            .unwrap()
            .status(),
        200
    );
    // Roles travel in tokens: a new login carries the new role.
    let promoted = system.login("cat@example.com", "customer-password").await;
    assert_eq!(create(promoted).await.unwrap().status(), 201);

    // A service account with the permission catalog:write, and the client credentials grant.
    let created = system
        .http
        .post(system.url("/auth/clients"))
        .bearer_auth(&admin)
        .json(&json!({"name": "importer", "permissions": ["catalog:write"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let client: Value = created.json().await.unwrap();
    let (client_id, secret) = (
        client["client_id"].as_str().unwrap(),
        client["client_secret"].as_str().unwrap(),
    );

    let token = |form: Vec<(&str, &str)>, basic: Option<(&str, &str)>| {
        // Every value here is URL-safe (ids and base64url secrets), so no escaping is needed.
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let mut request = system
            .http
            .post(system.url("/auth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        request.send()
    };
    let wrong = token(
        vec![("grant_type", "client_credentials")],
        Some((client_id, "wrong")),
    )
    .await
    .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
    let unsupported = token(vec![("grant_type", "password")], Some((client_id, secret)))
        .await
        .unwrap();
    assert_eq!(unsupported.status(), 400);
    assert_eq!(
        unsupported.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );

    for (form, basic) in [
        (
            vec![("grant_type", "client_credentials")],
            Some((client_id, secret)),
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
            ],
            None,
        ),
    ] {
        let granted = token(form, basic).await.unwrap();
        assert_eq!(granted.status(), 200);
        let body: Value = granted.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer");
        let service_token = body["access_token"].as_str().unwrap().to_string();
        // The permission is enough at the gateway and in the catalog.
        assert_eq!(create(service_token).await.unwrap().status(), 201);
    }
}

#[tokio::test]
async fn a_hundred_failed_logins_lock_the_account_not_other_accounts_or_addresses() {
    let system = System::start(1).await;
    system.customer_token("victim@example.com").await;
    system.customer_token("bystander@example.com").await;
    let login = |client: reqwest::Client, email: &'static str, password: &'static str| {
        let url = system.url("/auth/login");
        async move {
            client
                .post(url)
                .json(&json!({"email": email, "password": password}))
                .send()
                .await
                .unwrap()
        }
    };
    let mut statuses = std::collections::BTreeMap::new();
    let mut retry_after = None;
    for _ in 0..100 {
        let response = login(system.http.clone(), "victim@example.com", "wrong password").await;
        if response.status() == 429 {
            retry_after = response.headers().get("retry-after").cloned();
        }
        *statuses.entry(response.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(
        statuses.get(&401),
        Some(&5),
        "five wrong passwords are answered: {statuses:?}"
    );
    assert_eq!(
        statuses.get(&429),
        Some(&95),
        "then the account is locked: {statuses:?}"
    );
    assert!(retry_after.is_some());
    // Even the right password waits out the lock.
    let right = login(
        system.http.clone(),
        "victim@example.com",
        "customer-password",
    )
    .await;
    assert_eq!(right.status(), 429);

    // Another account from the same address is not affected...
    let other = login(
        system.http.clone(),
        "bystander@example.com",
        "customer-password",
    )
    .await;
    assert_eq!(other.status(), 200);
    // ...and neither is another address (127.0.0.2 is loopback too) for an unlocked account.
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let response = login(elsewhere, "bystander@example.com", "customer-password").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn revoked_tokens_are_inactive_at_introspection_and_refresh_stops_working() {
    let system = System::start(1).await;
    let admin = system.admin_token().await;
    let client: Value = system
        .http
        .post(system.url("/auth/clients"))
        .bearer_auth(&admin)
        .json(&json!({"name": "resource-server"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, secret) = (
        client["client_id"].as_str().unwrap().to_string(),
        client["client_secret"].as_str().unwrap().to_string(),
    );
    let login: Value = system
        .http
        .post(system.url("/auth/login"))
        .json(&json!({"email": support::ADMIN_EMAIL, "password": support::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (access, refresh) = (
        login["access_token"].as_str().unwrap(),
        login["refresh_token"].as_str().unwrap(),
    );

    let post_form = |path: &str, body: String, basic: bool| {
        let mut request = system
            .http
            .post(system.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if basic {
            request = request.basic_auth(&id, Some(&secret));
        }
        request.send()
    };
    let introspect = |token: &str| post_form("/auth/introspect", format!("token={token}"), true);

    assert_eq!(
        post_form("/auth/introspect", format!("token={access}"), false)
            .await
            .unwrap()
            .status(),
        401
    );
    let active: Value = introspect(access).await.unwrap().json().await.unwrap();
    assert_eq!(active["active"], true);
    assert_eq!(active["roles"], json!(["admin"]));

    assert_eq!(
        post_form("/auth/revoke", format!("token={access}"), false)
            .await
            .unwrap()
            .status(),
        200
    );
    let after: Value = introspect(access).await.unwrap().json().await.unwrap();
    assert_eq!(after, json!({"active": false}));
    let garbage: Value = introspect("not-a-token")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(garbage["active"], false);

    assert_eq!(
        post_form("/auth/revoke", format!("token={refresh}"), false)
            .await
            .unwrap()
            .status(),
        200
    );
    let refreshed = system
        .http
        .post(system.url("/auth/refresh"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 401);
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_its_whole_family() {
    let system = System::start(1).await;
    let login: Value = system
        .http
        .post(system.url("/auth/login"))
        .json(&json!({"email": support::ADMIN_EMAIL, "password": support::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refresh = |token: String| {
        let url = system.url("/auth/refresh");
        let http = system.http.clone();
        async move {
            http.post(url)
                .json(&json!({"refresh_token": token}))
                .send()
                .await
                .unwrap()
        }
    };
    let first = login["refresh_token"].as_str().unwrap().to_string();
    let rotated = refresh(first.clone()).await;
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.unwrap();
    let second = rotated["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(first, second, "refresh tokens rotate on every use");

    // The first token again: someone else has it. Refused, and the family is gone.
    assert_eq!(refresh(first).await.status(), 401);
    assert_eq!(
        refresh(second).await.status(),
        401,
        "the legitimate holder must log in again"
    );
}
