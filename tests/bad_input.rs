//! Bad input on every write endpoint of every service: malformed JSON, the wrong content type,
//! wrong types, negative and huge numbers, over-long strings, unknown fields and unknown ids.
//! Each is a 4xx `application/problem+json` naming the status it has, and changes nothing: the
//! test reads what each service holds before and after and compares.
//!
//! The order endpoint's own cases (Idempotency-Key, quantities, duplicate lines) are in
//! `tests/shop.rs`; catalog's token cases in `tests/e2e.rs`.

mod support;

use serde_json::{json, Value};
use support::System;

/// A request body: JSON, or raw bytes with a content type (`None`: no content type at all).
enum Body {
    Json(Value),
    Raw(Option<&'static str>, Vec<u8>),
    Empty,
}

struct Case {
    name: String,
    method: reqwest::Method,
    url: String,
    token: Option<String>,
    body: Body,
    status: u16,
}

fn case(name: &str, method: &str, url: String, token: &str, body: Body, status: u16) -> Case {
    Case {
        name: name.to_string(),
        method: method.parse().unwrap(),
        url,
        token: (!token.is_empty()).then(|| token.to_string()),
        body,
        status,
    }
}

/// Optional fields that may be `null` (the same as leaving them out).
const NULLABLE: [&str; 3] = ["phone", "address", "version"];

/// The JSON body cases every write endpoint taking JSON must refuse, with `valid` a good body,
/// `string_field` a string field of it and `number` an integer (`true`) or number field of it.
fn json_cases(
    valid: &Value,
    string_field: &str,
    number: Option<(&str, bool)>,
) -> Vec<(String, Body, u16)> {
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        Body::Json(body)
    };
    let mut cases = vec![
        (
            "malformed JSON".to_string(),
            Body::Raw(Some("application/json"), b"{\"unterminated".to_vec()),
            400,
        ),
        (
            "a comma for a key".into(),
            Body::Raw(Some("application/json"), b"{,}".to_vec()),
            400,
        ),
        (
            "not JSON at all".into(),
            Body::Raw(Some("application/json"), b"hello".to_vec()),
            400,
        ),
        (
            "empty body".into(),
            Body::Raw(Some("application/json"), Vec::new()),
            400,
        ),
        (
            "text/plain".into(),
            Body::Raw(Some("text/plain"), valid.to_string().into_bytes()),
            415,
        ),
        (
            "no content type".into(),
            Body::Raw(None, valid.to_string().into_bytes()),
            415,
        ),
        (
            "a form".into(),
            Body::Raw(Some("application/x-www-form-urlencoded"), b"a=1".to_vec()),
            415,
        ),
        ("an array".into(), Body::Json(json!([valid])), 422),
        ("null".into(), Body::Json(Value::Null), 422),
        ("unknown field".into(), with("colour", json!("red")), 422),
        (
            format!("{string_field} a number"),
            with(string_field, json!(5)),
            422,
        ),
        (
            format!("{string_field} an object"),
            with(string_field, json!({"a": 1})),
            422,
        ),
        (
            format!("{string_field} 100k long"),
            with(string_field, json!("x".repeat(100_000))),
            413,
        ),
        (
            format!("{string_field} 5000 long"),
            with(string_field, json!("x".repeat(5000))),
            422,
        ),
    ];
    if !NULLABLE.contains(&string_field) {
        cases.push((
            format!("{string_field} null"),
            with(string_field, Value::Null),
            422,
        ));
    }
    if let Some((number, integer)) = number {
        cases.extend([
            (format!("{number} negative"), with(number, json!(-1)), 422),
            (format!("{number} huge"), with(number, json!(1e30)), 422),
            (
                format!("{number} past i64"),
                with(number, json!(u64::MAX)),
                422,
            ),
            (format!("{number} a string"), with(number, json!("12")), 422),
            (format!("{number} a bool"), with(number, json!(true)), 422),
        ]);
        if integer {
            cases.push((
                format!("{number} fractional"),
                with(number, json!(1.5)),
                422,
            ));
        }
    }
    cases
}

/// Sends a case; panics unless it got its status as problem+json.
async fn check(system: &System, case: Case) {
    let mut request = system.http.request(case.method.clone(), &case.url);
    if let Some(token) = &case.token {
        request = request.bearer_auth(token);
    }
    if case.url.ends_with("/api/orders") {
        // A fresh key each time, so what is refused is the body, not a missing or reused key.
        request = request.header("Idempotency-Key", stratus_kit::new_id());
    }
    request = match case.body {
        Body::Json(value) => request.json(&value),
        Body::Raw(Some(content_type), bytes) => {
            request.header("content-type", content_type).body(bytes)
        }
        Body::Raw(None, bytes) => request.body(bytes),
        Body::Empty => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(
        status, case.status,
        "{} {}: {}: {text}",
        case.method, case.url, case.name
    );
    assert_eq!(
        content_type, "application/problem+json",
        "{}: {text}",
        case.name
    );
    let problem: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{}: {text}", case.name));
    assert_eq!(problem["status"], case.status, "{}", case.name);
    assert!(problem["title"].is_string(), "{}", case.name);
}

async fn get_json(system: &System, url: &str, token: &str) -> Value {
    let mut request = system.http.get(url);
    if !token.is_empty() {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn bad_input_on_every_write_endpoint_is_a_problem_and_stores_nothing() {
    let mut system = System::start(1).await;
    for service in ["orders", "payments", "notifications", "profile"] {
        system.spawn(service, &[]);
    }
    for service in ["orders", "payments", "notifications", "profile"] {
        system.wait_registered(service, 1).await;
        system.wait_gateway_sees(service, 1).await;
    }
    let admin = system.admin_token().await;
    let ann = system.customer_token("ann@example.com").await;

    // What every service holds before.
    let product: Value = system
        .http
        .post(system.url("/api/catalog/products"))
        .bearer_auth(&admin)
        .json(&json!({"name": "Tea", "price_cents": 450, "stock": 3}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tea = product["id"].as_str().unwrap().to_string();
    let products_url = system.url("/api/catalog/products");
    let users_url = system.url("/auth/users");
    let registry_url = format!("{}/v1/services", system.registry_url());
    let before = (
        get_json(&system, &products_url, "").await,
        get_json(&system, &users_url, &admin).await,
        get_json(&system, &registry_url, "").await["services"].clone(),
    );
    let ann_id = before
        .1
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "ann@example.com")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut cases = Vec::new();
    let mut add = |name: &str,
                   method: &str,
                   url: String,
                   token: &str,
                   valid: Value,
                   string: &str,
                   number: Option<(&str, bool)>| {
        for (what, body, status) in json_cases(&valid, string, number) {
            cases.push(case(
                &format!("{name}: {what}"),
                method,
                url.clone(),
                token,
                body,
                status,
            ));
        }
    };
    // Catalog: create and replace a product.
    let product = json!({"name": "Tea", "price_cents": 450, "stock": 3});
    add(
        "catalog create",
        "POST",
        products_url.clone(),
        &admin,
        product.clone(),
        "name",
        Some(("price_cents", true)),
    );
    add(
        "catalog create",
        "POST",
        products_url.clone(),
        &admin,
        product.clone(),
        "description",
        Some(("stock", true)),
    );
    let tea_url = system.url(&format!("/api/catalog/products/{tea}"));
    add(
        "catalog replace",
        "PUT",
        tea_url.clone(),
        &admin,
        product.clone(),
        "name",
        Some(("stock", true)),
    );
    // Profile: the caller's own.
    let profile = json!({"display_name": "Ann", "address": "1 Road", "phone": "+44 20 7946 0958"});
    add(
        "profile",
        "PUT",
        system.url("/api/profile/me"),
        &ann,
        profile.clone(),
        "display_name",
        None,
    );
    add(
        "profile",
        "PUT",
        system.url("/api/profile/me"),
        &ann,
        profile.clone(),
        "phone",
        None,
    );
    // Orders (its own cases, Idempotency-Key and quantities, are in tests/shop.rs).
    let order = json!({"items": [{"product_id": tea, "quantity": 1}]});
    add(
        "orders",
        "POST",
        system.url("/api/orders"),
        &ann,
        order,
        "items",
        None,
    );
    // Auth: accounts, roles, apps.
    let signup = json!({"email": "new@example.com", "password": "a fine password"});
    add(
        "signup",
        "POST",
        system.url("/auth/signup"),
        "",
        signup.clone(),
        "email",
        None,
    );
    add(
        "signup",
        "POST",
        system.url("/auth/signup"),
        "",
        signup.clone(),
        "password",
        None,
    );
    let roles_url = system.url(&format!("/auth/users/{ann_id}/roles"));
    add(
        "roles",
        "PUT",
        roles_url.clone(),
        &admin,
        json!({"roles": ["customer"]}),
        "roles",
        None,
    );
    add(
        "clients",
        "POST",
        system.url("/auth/clients"),
        &admin,
        json!({"name": "svc"}),
        "name",
        None,
    );
    // Registry: an instance's registration.
    let instance_url = format!(
        "{}/v1/services/fuzz/instances/fuzz-1",
        system.registry_url()
    );
    let registration = json!({"address": "127.0.0.1", "port": 9, "ttl_seconds": 5});
    add(
        "register",
        "PUT",
        instance_url.clone(),
        "",
        registration.clone(),
        "address",
        Some(("port", true)),
    );
    add(
        "register",
        "PUT",
        instance_url.clone(),
        "",
        registration.clone(),
        "version",
        Some(("ttl_seconds", false)),
    );

    let shaped: Vec<(&str, &str, String, &str, Value, u16)> = vec![
        (
            "catalog: blank name",
            "POST",
            products_url.clone(),
            &admin,
            json!({"name": "   ", "price_cents": 1, "stock": 1}),
            422,
        ),
        (
            "catalog: name 201 long",
            "POST",
            products_url.clone(),
            &admin,
            json!({"name": "x".repeat(201), "price_cents": 1, "stock": 1}),
            422,
        ),
        (
            "catalog: missing stock",
            "POST",
            products_url.clone(),
            &admin,
            json!({"name": "Tea", "price_cents": 1}),
            422,
        ),
        (
            "catalog: unknown id",
            "PUT",
            system.url("/api/catalog/products/0190aaaa-0000-7000-8000-000000000000"),
            &admin,
            product.clone(),
            404,
        ),
        (
            "catalog: a customer",
            "POST",
            products_url.clone(),
            &ann,
            product.clone(),
            403,
        ),
        (
            "profile: control character",
            "PUT",
            system.url("/api/profile/me"),
            &ann,
            json!({"display_name": "A\u{7}nn"}),
            422,
        ),
        (
            "profile: phone letters",
            "PUT",
            system.url("/api/profile/me"),
            &ann,
            json!({"display_name": "Ann", "phone": "call me"}),
            422,
        ),
        (
            "profile: address 501 long",
            "PUT",
            system.url("/api/profile/me"),
            &ann,
            json!({"display_name": "Ann", "address": "x".repeat(501)}),
            422,
        ),
        (
            "orders: quantity huge",
            "POST",
            system.url("/api/orders"),
            &ann,
            json!({"items": [{"product_id": tea, "quantity": 1e20}]}),
            422,
        ),
        (
            "orders: items an object",
            "POST",
            system.url("/api/orders"),
            &ann,
            json!({"items": {"product_id": tea, "quantity": 1}}),
            422,
        ),
        (
            "orders: product id a number",
            "POST",
            system.url("/api/orders"),
            &ann,
            json!({"items": [{"product_id": 7, "quantity": 1}]}),
            422,
        ),
        (
            "orders: product id 65 long",
            "POST",
            system.url("/api/orders"),
            &ann,
            json!({"items": [{"product_id": "a".repeat(65), "quantity": 1}]}),
            422,
        ),
        (
            "signup: not an address",
            "POST",
            system.url("/auth/signup"),
            "",
            json!({"email": "ann", "password": "a fine password"}),
            422,
        ),
        (
            "signup: email 255 long",
            "POST",
            system.url("/auth/signup"),
            "",
            json!({"email": format!("{}@example.com", "a".repeat(243)), "password": "a fine password"}),
            422,
        ),
        (
            "signup: padded email 255 long",
            "POST",
            system.url("/auth/signup"),
            "",
            json!({"email": format!("{}a@example.com", " ".repeat(242)), "password": "a fine password"}),
            422,
        ),
        (
            "signup: short password",
            "POST",
            system.url("/auth/signup"),
            "",
            json!({"email": "new@example.com", "password": "short"}),
            422,
        ),
        (
            "signup: taken",
            "POST",
            system.url("/auth/signup"),
            "",
            json!({"email": "ann@example.com", "password": "a fine password"}),
            409,
        ),
        (
            "roles: bad name",
            "PUT",
            roles_url.clone(),
            &admin,
            json!({"roles": ["Admin!"]}),
            422,
        ),
        (
            "roles: seventeen",
            "PUT",
            roles_url.clone(),
            &admin,
            json!({"roles": (0..17).map(|n| format!("r{n}")).collect::<Vec<_>>()}),
            422,
        ),
        (
            "roles: unknown user",
            "PUT",
            system.url("/auth/users/nobody/roles"),
            &admin,
            json!({"roles": ["customer"]}),
            404,
        ),
        (
            "roles: a customer",
            "PUT",
            roles_url.clone(),
            &ann,
            json!({"roles": ["admin"]}),
            403,
        ),
        (
            "clients: blank name",
            "POST",
            system.url("/auth/clients"),
            &admin,
            json!({"name": " "}),
            422,
        ),
        (
            "clients: kind robot",
            "POST",
            system.url("/auth/clients"),
            &admin,
            json!({"name": "r", "kind": "robot"}),
            422,
        ),
        (
            "clients: app on plain http",
            "POST",
            system.url("/auth/clients"),
            &admin,
            json!({"name": "r", "kind": "public", "redirect_uris": ["http://example.com/cb"]}),
            422,
        ),
        (
            "register: port 0",
            "PUT",
            instance_url.clone(),
            "",
            json!({"address": "127.0.0.1", "port": 0}),
            422,
        ),
        (
            "register: port 70000",
            "PUT",
            instance_url.clone(),
            "",
            json!({"address": "127.0.0.1", "port": 70000}),
            422,
        ),
        (
            "register: address with a space",
            "PUT",
            instance_url.clone(),
            "",
            json!({"address": "a b", "port": 80}),
            422,
        ),
        (
            "register: ttl 0",
            "PUT",
            instance_url.clone(),
            "",
            json!({"address": "127.0.0.1", "port": 80, "ttl_seconds": 0}),
            422,
        ),
        (
            "register: bad service name",
            "PUT",
            format!("{}/v1/services/Bad_Name/instances/x", system.registry_url()),
            "",
            registration.clone(),
            400,
        ),
        (
            "register: check tcp false",
            "PUT",
            instance_url.clone(),
            "",
            json!({"address": "127.0.0.1", "port": 80, "check": {"tcp": false}}),
            422,
        ),
    ];
    for (name, method, url, token, body, status) in shaped {
        cases.push(case(name, method, url, token, Body::Json(body), status));
    }
    // Form endpoints (RFC 7009 revoke, RFC 7662 introspect): a problem too, not plain text.
    for path in ["/auth/revoke", "/auth/introspect"] {
        cases.push(case(
            &format!("{path}: JSON"),
            "POST",
            system.url(path),
            "",
            Body::Json(json!({"token": "x"})),
            415,
        ));
        cases.push(case(
            &format!("{path}: no token"),
            "POST",
            system.url(path),
            "",
            Body::Raw(
                Some("application/x-www-form-urlencoded"),
                b"hint=1".to_vec(),
            ),
            422,
        ));
    }
    // Bodiless writes on unknown ids.
    cases.push(case(
        "catalog: delete unknown",
        "DELETE",
        system.url("/api/catalog/products/nope"),
        &admin,
        Body::Empty,
        404,
    ));
    cases.push(case(
        "heartbeat unknown",
        "PUT",
        format!(
            "{}/v1/services/fuzz/instances/none/heartbeat",
            system.registry_url()
        ),
        "",
        Body::Empty,
        404,
    ));
    cases.push(case(
        "deregister unknown",
        "DELETE",
        format!("{}/v1/services/fuzz/instances/none", system.registry_url()),
        "",
        Body::Empty,
        404,
    ));
    // Reads with bad parameters: a problem, never plain text.
    for (path, token) in [
        ("/api/catalog/products?limit=abc", ""),
        ("/api/catalog/products?limit=0", ""),
        ("/api/catalog/products?offset=-1", ""),
        ("/api/catalog/products?colour=red", ""),
        ("/api/orders?limit=99999999999999999999", ann.as_str()),
        ("/api/payments?order_id=", ann.as_str()),
        ("/api/payments?limit=x", ann.as_str()),
        ("/api/notifications?order_id=", ann.as_str()),
        ("/api/notifications?offset=-5", ann.as_str()),
    ] {
        cases.push(case(
            &format!("GET {path}"),
            "GET",
            system.url(path),
            token,
            Body::Empty,
            400,
        ));
    }
    for query in [
        "index=abc",
        "index=0&wait=99999999999999999999h",
        "index=0&wait=soon",
        "colour=red",
    ] {
        let url = format!("{}/v1/services?{query}", system.registry_url());
        cases.push(case(
            &format!("registry ?{query}"),
            "GET",
            url,
            "",
            Body::Empty,
            400,
        ));
    }

    let count = cases.len();
    for case in cases {
        check(&system, case).await;
    }

    // Nothing changed anywhere.
    let after = (
        get_json(&system, &products_url, "").await,
        get_json(&system, &users_url, &admin).await,
        get_json(&system, &registry_url, "").await["services"].clone(),
    );
    assert_eq!(after.0, before.0, "the catalog is unchanged");
    assert_eq!(after.1, before.1, "accounts and roles are unchanged");
    assert_eq!(after.2, before.2, "the registry is unchanged");
    let profile = system
        .http
        .get(system.url("/api/profile/me"))
        .bearer_auth(&ann)
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), 404, "Ann still has no profile");
    let orders = get_json(&system, &system.url("/api/orders?all=true"), &admin).await;
    assert_eq!(orders, json!([]), "no order was stored");
    eprintln!("{count} bad requests refused, nothing stored");
}
