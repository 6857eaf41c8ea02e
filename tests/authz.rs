//! The customer / admin matrix over every shop route, enforced twice: at the gateway, and again by
//! each service on its own (zero trust). A caller who reaches a service around the gateway, from
//! inside the network, must get exactly what the gateway would have given: no admin actions with a
//! customer's token, nobody else's orders, payments or notifications.
//!
//! Each row names a request and the status each caller must get: nobody (no token), the customer
//! Ann (who owns the order under test), the customer Bob, and an admin. The same table runs
//! through the gateway and directly against one instance of the service.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use support::System;

/// The callers, in the order of a row's expected statuses.
const CALLERS: [&str; 4] = ["nobody", "ann", "bob", "admin"];

struct Row {
    method: Method,
    path: String,
    /// The service that owns the path, for the direct call.
    service: &'static str,
    body: Option<Value>,
    /// Expected status for nobody, Ann, Bob, admin.
    expect: [u16; 4],
}

fn row(method: Method, path: String, service: &'static str, expect: [u16; 4]) -> Row {
    Row {
        method,
        path,
        service,
        body: None,
        expect,
    }
}

fn with_body(mut row: Row, body: Value) -> Row {
    row.body = Some(body);
    row
}

/// Where requests go: through the gateway, or straight to an instance of the row's service.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    Gateway,
    Direct,
}

struct Matrix {
    system: System,
    /// Tokens of Ann, Bob and the admin (nobody has none).
    tokens: [String; 3],
}

impl Matrix {
    async fn base(&self, via: Via, service: &str) -> String {
        match via {
            Via::Gateway => self.system.url(""),
            Via::Direct => self.system.instance_url(service).await,
        }
    }

    fn token(&self, caller: usize) -> Option<&str> {
        caller.checked_sub(1).map(|i| self.tokens[i].as_str())
    }

    async fn send(
        &self,
        via: Via,
        caller: usize,
        method: Method,
        service: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base(via, service).await);
        let mut request = self
            .system
            .http
            .request(method.clone(), url)
            .header("Idempotency-Key", stratus_kit::new_id());
        if let Some(token) = self.token(caller) {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("the request is answered");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Runs every row for every caller; returns the mismatches rather than stopping at the first,
    /// so one run shows the whole picture.
    async fn check(&self, via: Via, rows: &[Row]) -> Vec<String> {
        let mut wrong = Vec::new();
        for row in rows {
            for (caller, expected) in row.expect.iter().enumerate() {
                let (status, body) = self
                    .send(
                        via,
                        caller,
                        row.method.clone(),
                        row.service,
                        &row.path,
                        row.body.as_ref(),
                    )
                    .await;
                if status != *expected {
                    wrong.push(format!(
                        "{via:?} {} {} as {}: {status} (expected {expected}) {body}",
                        row.method, row.path, CALLERS[caller]
                    ));
                }
            }
        }
        wrong
    }

    async fn product(&self, name: &str) -> String {
        let (status, body) = self
            .send(
                Via::Gateway,
                3,
                Method::POST,
                "catalog",
                "/api/catalog/products",
                Some(&json!({"name": name, "price_cents": 500, "stock": 100})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("an id").to_string()
    }
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("json")
}

/// Every shop route, with what each caller may do. `order` is Ann's; `kept` survives the run,
/// `doomed` is deleted by the admin's DELETE.
fn rows(product: &str, doomed: &str, order: &str, ann_id: &str) -> Vec<Row> {
    let new_product = json!({"name": "Matrix lamp", "price_cents": 1200, "stock": 3});
    let changed = json!({"name": "Renamed", "price_cents": 700, "stock": 9});
    vec![
        // Catalog: reads are public, writes are the admin's.
        row(
            Method::GET,
            "/api/catalog/products".into(),
            "catalog",
            [200; 4],
        ),
        row(
            Method::GET,
            format!("/api/catalog/products/{product}"),
            "catalog",
            [200; 4],
        ),
        with_body(
            row(
                Method::POST,
                "/api/catalog/products".into(),
                "catalog",
                [401, 403, 403, 201],
            ),
            new_product,
        ),
        with_body(
            row(
                Method::PUT,
                format!("/api/catalog/products/{product}"),
                "catalog",
                [401, 403, 403, 200],
            ),
            changed,
        ),
        row(
            Method::DELETE,
            format!("/api/catalog/products/{doomed}"),
            "catalog",
            [401, 403, 403, 204],
        ),
        // Orders: any signed-in caller orders and lists their own; only the admin lists all;
        // another customer's order does not exist for Bob.
        with_body(
            row(
                Method::POST,
                "/api/orders".into(),
                "orders",
                [401, 201, 201, 201],
            ),
            json!({"items": [{"product_id": product, "quantity": 1}]}),
        ),
        row(
            Method::GET,
            "/api/orders".into(),
            "orders",
            [401, 200, 200, 200],
        ),
        row(
            Method::GET,
            "/api/orders?all=true".into(),
            "orders",
            [401, 403, 403, 200],
        ),
        row(
            Method::GET,
            format!("/api/orders/{order}"),
            "orders",
            [401, 200, 404, 200],
        ),
        // Payments and notifications: each caller's own (checked for content below).
        row(
            Method::GET,
            format!("/api/payments?order_id={order}"),
            "payments",
            [401, 200, 200, 200],
        ),
        row(
            Method::GET,
            "/api/notifications".into(),
            "notifications",
            [401, 200, 200, 200],
        ),
        // Profile: "me" only, for anyone signed in.
        with_body(
            row(
                Method::PUT,
                "/api/profile/me".into(),
                "profile",
                [401, 200, 200, 200],
            ),
            json!({"display_name": "Someone", "address": "1 Road", "phone": "+100"}),
        ),
        row(
            Method::GET,
            "/api/profile/me".into(),
            "profile",
            [401, 200, 200, 200],
        ),
        // Identity administration: the admin's alone; Ann cannot make herself an admin.
        row(
            Method::GET,
            "/auth/users".into(),
            "auth",
            [401, 403, 403, 200],
        ),
        with_body(
            row(
                Method::PUT,
                format!("/auth/users/{ann_id}/roles"),
                "auth",
                [401, 403, 403, 200],
            ),
            json!({"roles": ["customer"]}),
        ),
    ]
}

async fn start() -> Matrix {
    let mut system = System::start(1).await;
    system
        .add_services(
            &[
                ("orders", 1),
                ("payments", 1),
                ("notifications", 1),
                ("profile", 1),
            ],
            &[],
        )
        .await;
    let ann = system.customer_token("ann@example.com").await;
    let bob = system.customer_token("bob@example.com").await;
    let admin = system.admin_token().await;
    Matrix {
        system,
        tokens: [ann, bob, admin],
    }
}

/// Ann's order, placed and settled, so that payments and notifications exist for it.
async fn anns_settled_order(matrix: &Matrix, product: &str) -> String {
    let (status, order) = matrix
        .send(
            Via::Gateway,
            1,
            Method::POST,
            "orders",
            "/api/orders",
            Some(&json!({"items": [{"product_id": product, "quantity": 2}]})),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    let id = order["id"].as_str().expect("an order id").to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, notes) = matrix
            .send(
                Via::Gateway,
                1,
                Method::GET,
                "notifications",
                &format!("/api/notifications?order_id={id}"),
                None,
            )
            .await;
        if notes.as_array().is_some_and(|n| !n.is_empty()) {
            return id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "order {id} was never notified"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|items| items.iter().filter_map(|i| i["id"].as_str()).collect())
        .unwrap_or_default()
}

/// What a caller sees of Ann's order in the lists: its id among their orders, and the number of
/// its payments and notifications.
async fn visible(matrix: &Matrix, via: Via, caller: usize, order: &str) -> (bool, usize, usize) {
    let (_, orders) = matrix
        .send(via, caller, Method::GET, "orders", "/api/orders", None)
        .await;
    let (_, payments) = matrix
        .send(
            via,
            caller,
            Method::GET,
            "payments",
            &format!("/api/payments?order_id={order}"),
            None,
        )
        .await;
    let (_, notes) = matrix
        .send(
            via,
            caller,
            Method::GET,
            "notifications",
            &format!("/api/notifications?order_id={order}"),
            None,
        )
        .await;
    let count = |v: &Value| v.as_array().map_or(0, Vec::len);
    (
        ids(&orders).contains(&order),
        count(&payments),
        count(&notes),
    )
}

#[tokio::test]
async fn every_shop_route_gives_each_caller_the_same_rights_at_the_gateway_and_at_the_service() {
    let matrix = start().await;
    let ann_id = claims_of(&matrix.tokens[0])["sub"]
        .as_str()
        .expect("a subject")
        .to_string();
    let mut wrong = Vec::new();
    for via in [Via::Gateway, Via::Direct] {
        let product = matrix.product("Matrix kettle").await;
        let doomed = matrix.product("Matrix doomed").await;
        let order = anns_settled_order(&matrix, &product).await;
        wrong.extend(
            matrix
                .check(via, &rows(&product, &doomed, &order, &ann_id))
                .await,
        );

        // The lists are scoped to their caller: Ann sees her order, its payment and notification;
        // Bob sees none of them; the admin sees the payment (notifications are the customer's own).
        let ann = visible(&matrix, via, 1, &order).await;
        let bob = visible(&matrix, via, 2, &order).await;
        let (_, everyone) = matrix
            .send(via, 3, Method::GET, "orders", "/api/orders?all=true", None)
            .await;
        let (_, admin_payments) = matrix
            .send(
                via,
                3,
                Method::GET,
                "payments",
                &format!("/api/payments?order_id={order}"),
                None,
            )
            .await;
        assert!(
            ann.0 && ann.1 >= 1 && ann.2 >= 1,
            "{via:?}: Ann sees {ann:?}"
        );
        assert_eq!(bob, (false, 0, 0), "{via:?}: Bob sees Ann's order");
        assert!(ids(&everyone).contains(&order.as_str()), "{via:?}: admin");
        assert!(
            admin_payments.as_array().is_some_and(|p| !p.is_empty()),
            "{via:?}: the admin sees Ann's payment"
        );

        // The rows did not let anyone change what they may not: the product kept the admin's
        // change (not a customer's), the doomed one is gone, Ann is still only a customer.
        let (_, kept) = matrix
            .send(
                via,
                0,
                Method::GET,
                "catalog",
                &format!("/api/catalog/products/{product}"),
                None,
            )
            .await;
        assert_eq!(kept["name"], "Renamed");
        let fresh = matrix
            .system
            .login("ann@example.com", "customer-password")
            .await;
        assert_eq!(
            claims_of(&fresh)["roles"],
            json!(["customer"]),
            "Ann's roles"
        );
    }
    assert!(
        wrong.is_empty(),
        "{} of the matrix's answers are wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Grants `roles` to the user behind `token` (as the admin) and returns a fresh token for them.
async fn grant(matrix: &Matrix, email: &str, token: &str, roles: &[&str]) -> String {
    let id = claims_of(token)["sub"]
        .as_str()
        .expect("a subject")
        .to_string();
    let (status, body) = matrix
        .send(
            Via::Gateway,
            3,
            Method::PUT,
            "auth",
            &format!("/auth/users/{id}/roles"),
            Some(&json!({ "roles": roles })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    matrix.system.login(email, "customer-password").await
}

#[tokio::test]
async fn roles_grant_permissions_that_every_service_honours() {
    let mut matrix = start().await;
    let product = matrix.product("Role lamp").await;
    let order = anns_settled_order(&matrix, &product).await;

    // The role catalogue: built-in admin and customer, and the shipped support and editor roles.
    let (status, roles) = matrix
        .send(Via::Gateway, 3, Method::GET, "auth", "/auth/roles", None)
        .await;
    assert_eq!(status, 200);
    let support = roles
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "support"))
        .expect("the support role");
    assert_eq!(
        support["permissions"],
        json!(["orders:read:any", "payments:read:any"])
    );
    for (caller, expected) in [(0, 401), (2, 403)] {
        let (status, _) = matrix
            .send(
                Via::Gateway,
                caller,
                Method::PUT,
                "auth",
                "/auth/roles/auditor",
                Some(&json!({"permissions": ["orders:read:any"]})),
            )
            .await;
        assert_eq!(status, expected, "defining a role as {}", CALLERS[caller]);
    }
    let (status, _) = matrix
        .send(
            Via::Gateway,
            3,
            Method::DELETE,
            "auth",
            "/auth/roles/admin",
            None,
        )
        .await;
    assert_eq!(status, 422, "admin is built in");

    // Bob in support reads Ann's order and payment, at the gateway and at the services, but still
    // may not edit the catalog, nor read Ann's notifications (no such permission).
    let bob = grant(
        &matrix,
        "bob@example.com",
        &matrix.tokens[1],
        &["customer", "support"],
    )
    .await;
    assert_eq!(
        claims_of(&bob)["permissions"],
        json!(["orders:read:any", "payments:read:any"])
    );
    matrix.tokens[1] = bob;
    let support_rows = [
        row(
            Method::GET,
            format!("/api/orders/{order}"),
            "orders",
            [401, 200, 200, 200],
        ),
        row(
            Method::GET,
            "/api/orders?all=true".into(),
            "orders",
            [401, 403, 200, 200],
        ),
        with_body(
            row(
                Method::POST,
                "/api/catalog/products".into(),
                "catalog",
                [401, 403, 403, 201],
            ),
            json!({"name": "Not Bob's", "price_cents": 1, "stock": 1}),
        ),
    ];
    let mut wrong = Vec::new();
    for via in [Via::Gateway, Via::Direct] {
        wrong.extend(matrix.check(via, &support_rows).await);
        let bob_sees = visible(&matrix, via, 2, &order).await;
        assert!(!bob_sees.0, "{via:?}: Ann's order is not in Bob's own list");
        assert!(bob_sees.1 >= 1, "{via:?}: support reads Ann's payment");
        assert_eq!(bob_sees.2, 0, "{via:?}: nor her notifications");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Narrowing the role reaches Bob with his next token: no more payments of others.
    let (status, _) = matrix
        .send(
            Via::Gateway,
            3,
            Method::PUT,
            "auth",
            "/auth/roles/support",
            Some(&json!({"permissions": ["orders:read:any"]})),
        )
        .await;
    assert_eq!(status, 200);
    matrix.tokens[1] = matrix
        .system
        .login("bob@example.com", "customer-password")
        .await;
    let (_, payments) = matrix
        .send(
            Via::Direct,
            2,
            Method::GET,
            "payments",
            &format!("/api/payments?order_id={order}"),
            None,
        )
        .await;
    assert_eq!(payments, json!([]), "support no longer reads payments");

    // A catalog editor (not an admin) edits the catalog, through the gateway and directly.
    let carol = matrix.system.customer_token("carol@example.com").await;
    let carol = grant(&matrix, "carol@example.com", &carol, &["catalog-editor"]).await;
    matrix.tokens[0] = carol;
    for via in [Via::Gateway, Via::Direct] {
        let (status, body) = matrix
            .send(
                via,
                1,
                Method::POST,
                "catalog",
                "/api/catalog/products",
                Some(&json!({"name": "Carol's", "price_cents": 5, "stock": 1})),
            )
            .await;
        assert_eq!(status, 201, "{via:?} as a catalog editor: {body}");
    }
}
