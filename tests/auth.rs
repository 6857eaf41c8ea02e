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
