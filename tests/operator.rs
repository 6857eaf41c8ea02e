//! An admin's access token as an operator credential, against real processes with
//! `STRATUS_MTLS=required`: a tool outside Stratus that holds only the trust bundle (no
//! certificate) and an admin's token from `/auth/login` on the gateway's public port reads the
//! registry, queries the event sink, posts OTLP to it and uses the gateway's admin API; a
//! customer's token is refused with 403, and no token, a garbage one, an expired one or one
//! signed by a key auth never had with 401.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use stratus_token::{now_unix, Claims, SigningKey};
use support::mesh::bundle_only;
use support::System;

/// The system with an event sink beside it (meshed like the rest). Returns the sink's URL.
async fn system_with_sink() -> (System, String) {
    let mut system = System::start_meshed(1).await;
    let port = support::free_port();
    system.spawn("events", &[("PORT", port.to_string().as_str())]);
    let sink = format!("https://127.0.0.1:{port}");
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    (system, sink)
}

/// An admin's claims, as auth issues them, expiring at `exp`.
fn admin_claims(exp: u64) -> Claims {
    Claims {
        iss: "stratus".into(),
        aud: "stratus-api".into(),
        sub: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
        exp,
        iat: exp.saturating_sub(900),
        jti: "operator-test".into(),
        email: Some(support::ADMIN_EMAIL.into()),
        roles: vec!["admin".into()],
        permissions: vec![],
    }
}

/// One call of the admin and query APIs, made with `token` (none: no Authorization header).
async fn call(
    client: &reqwest::Client,
    (method, url, body): &(Method, String, Option<Value>),
    token: Option<&str>,
) -> (StatusCode, String, String) {
    let mut request = client.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(body);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, content_type, response.text().await.unwrap())
}

/// An OTLP/HTTP JSON export of one span of `service` in trace `trace`, as an SDK sends it.
fn otlp_span(trace: &str, service: &str) -> Value {
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": [{
            "traceId": trace, "spanId": "2222222222222222",
            "name": "nightly-job", "kind": 3,
            "startTimeUnixNano": start.to_string(),
            "endTimeUnixNano": (start + 3_000_000).to_string(),
            "status": {"code": 1}
        }]}]
    }]})
}

#[tokio::test]
async fn an_admins_access_token_opens_every_admin_and_query_api_and_nothing_else_does() {
    let (system, sink) = system_with_sink().await;
    let mesh = system.mesh.as_ref().expect("a meshed system");
    // A tool outside Stratus: it trusts the system's roots and has no certificate.
    let tool = bundle_only(&mesh.bundle());
    let admin = system.admin_token().await;
    let customer = system.customer_token("shopper@example.com").await;

    let registry = system.registry_url();
    let trace = "5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e";
    let routes_url = system.admin_url("/v1/routes");
    let calls = [
        (Method::GET, format!("{registry}/v1/services"), None),
        (Method::GET, format!("{registry}/v1/services/catalog"), None),
        (Method::GET, format!("{sink}/v1/stats"), None),
        (Method::GET, format!("{sink}/v1/events?limit=5"), None),
        (
            Method::POST,
            format!("{sink}/v1/traces"),
            Some(otlp_span(trace, "nightly-batch")),
        ),
        (Method::GET, system.admin_url("/v1/upstreams"), None),
        (Method::GET, routes_url.clone(), None),
    ];

    // Without the admin's token, each is refused before it does anything, in problem+json.
    let key = support::auth_signing_key(&system).await;
    let expired = key.sign(&admin_claims(now_unix() - 600));
    let rogue = SigningKey::generate(key.kid().to_string())
        .unwrap()
        .sign(&admin_claims(now_unix() + 600));
    let refusals: [(&str, Option<&str>, u16); 5] = [
        ("no token", None, 401),
        ("a garbage token", Some("not-a-token"), 401),
        ("an expired admin token", Some(&expired), 401),
        ("an admin token auth never signed", Some(&rogue), 401),
        ("a customer's token", Some(&customer), 403),
    ];
    for target in &calls {
        for (what, token, expected) in refusals {
            let (status, content_type, body) = call(&tool, target, token).await;
            assert_eq!(
                status.as_u16(),
                expected,
                "{} {} with {what}: {body}",
                target.0,
                target.1
            );
            assert_eq!(content_type, "application/problem+json", "{what}: {body}");
        }
    }
    // The refused OTLP post stored nothing.
    let stored = format!("{sink}/v1/traces/{trace}");
    let (status, _, _) = call(&tool, &(Method::GET, stored.clone(), None), Some(&admin)).await;
    assert_eq!(status, 404, "a refused post left a trace");

    // With it, every one answers as it would an operator's certificate.
    for target in &calls {
        let (status, _, body) = call(&tool, target, Some(&admin)).await;
        assert!(
            status.is_success(),
            "{} {} with an admin's token: {status} {body}",
            target.0,
            target.1
        );
    }
    let (_, _, body) = call(&tool, &calls[0], Some(&admin)).await;
    let services: Value = serde_json::from_str(&body).unwrap();
    assert!(services["services"]["catalog"].is_array(), "{services:#}");
    let (_, _, body) = call(&tool, &(Method::GET, stored, None), Some(&admin)).await;
    let records: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        records["records"][0]["service"], "nightly-batch",
        "{records:#}"
    );
    // A change through the gateway's admin API reaches its handler: no canary to roll back.
    let (_, _, body) = call(&tool, &(Method::GET, routes_url, None), Some(&admin)).await;
    let routes: Value = serde_json::from_str(&body).unwrap();
    let route = routes["routes"][0]["name"].as_str().expect("a route");
    let rollback = (
        Method::POST,
        system.admin_url(&format!("/v1/routes/{route}/rollback")),
        None,
    );
    let (status, _, body) = call(&tool, &rollback, Some(&admin)).await;
    assert_eq!(status, 409, "{body}");
    let (status, _, _) = call(&tool, &rollback, Some(&customer)).await;
    assert_eq!(status, 403);

    // What a token cannot buy: a certificate. The authority's issuing route is open to callers
    // without one (a new instance has none) and takes only join credentials there.
    let issue = (
        Method::POST,
        format!("{registry}/v1/identity/certificates"),
        Some(json!({"service": "auth"})),
    );
    let (status, _, body) = call(&tool, &issue, Some(&admin)).await;
    assert_eq!(status, 401, "an admin's token got a certificate: {body}");

    // The registry found auth's keys in its own store; nothing above needed a certificate.
    let registry_log = std::fs::read_to_string(system.log_path("registry", 0)).unwrap();
    assert!(
        !registry_log.contains("could not fetch token keys"),
        "{registry_log}"
    );
}
